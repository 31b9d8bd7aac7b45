"""An in-memory backend and catalog: the fake behind the web layer's tests, and a model of
the behaviour every real backend must show."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, Self

from ovas.backend import Catalog, utcnow
from ovas.errors import (
    ApplicationNotFound,
    BackendUnavailable,
    CapacityExceeded,
    Conflict,
    OvasError,
    SessionNotFound,
    Unsatisfiable,
    VersionNotFound,
)
from ovas.ledger import Entry, Ledger, MemoryLedger
from ovas.lifecycle import Observation, Observed, Stage
from ovas.models import (
    Application,
    Profile,
    Reason,
    Route,
    SessionRequest,
    SupportedApplication,
    Version,
    WarmPool,
)
from ovas.testing.requests import (
    STANDIN_EXIT_AFTER,
    STANDIN_EXIT_CODE,
    STANDIN_NEVER_READY,
    STANDIN_QUIT_ON_LEAVE,
    STANDIN_READY_DELAY,
)
from ovas.workloads import Backend, Places


class InMemoryCatalog(Catalog):
    """A catalog in memory, editable, safe across threads."""

    def __init__(
        self,
        applications: list[Application] = (),
        versions: list[Version] = (),
        profiles: list[Profile] = (),
        warm_pools: list[WarmPool] = (),
    ):
        self._lock = threading.Lock()
        self._apps = {a.id: a for a in applications}
        self._versions = {(v.app_id, v.version): v for v in versions}
        self._profiles = {p.id: p for p in profiles}
        self.pools = {p.name: p for p in warm_pools}  # edit freely: read on every call

    def applications(self) -> list[Application]:
        return list(self._apps.values())

    def versions(self, app_id: str) -> list[Version]:
        if app_id not in self._apps:
            raise ApplicationNotFound(app_id)
        return [v for (a, _), v in list(self._versions.items()) if a == app_id]

    def profiles(self) -> list[Profile]:
        return list(self._profiles.values())

    def warm_pools(self) -> list[WarmPool]:
        return list(self.pools.values())

    def save_profile(self, profile: Profile) -> None:
        """Add `profile`, or replace the one of its id: an edit of the catalog."""
        with self._lock:
            self._profiles[profile.id] = profile

    def remove_profile(self, profile_id: str) -> None:
        """Remove a profile, if there is one of that id."""
        with self._lock:
            self._profiles.pop(profile_id, None)

    def save_version(self, version: Version) -> None:
        """Add `version`, or replace the one of its app and version string."""
        with self._lock:
            self._versions[(version.app_id, version.version)] = version

    def create_application(self, app: Application) -> None:
        with self._lock:
            if app.id in self._apps:
                raise Conflict(f"Application '{app.id}' already exists")
            self._apps[app.id] = app

    def update_application(self, app: Application) -> None:
        with self._lock:
            if app.id not in self._apps:
                raise ApplicationNotFound(app.id)
            self._apps[app.id] = app

    def delete_application(self, app_id: str) -> None:
        with self._lock:
            if self._apps.pop(app_id, None) is None:
                raise ApplicationNotFound(app_id)
            for key in [k for k in self._versions if k[0] == app_id]:
                del self._versions[key]

    def create_version(self, version: Version) -> None:
        with self._lock:
            if version.app_id not in self._apps:
                raise ApplicationNotFound(version.app_id)
            key = (version.app_id, version.version)
            if key in self._versions:
                raise Conflict(f"Version '{version.version}' of '{version.app_id}' exists")
            self._versions[key] = version

    def delete_version(self, app_id: str, version: str) -> None:
        with self._lock:
            if app_id not in self._apps:
                raise ApplicationNotFound(app_id)
            if self._versions.pop((app_id, version), None) is None:
                raise VersionNotFound(app_id, version)


def sample_catalog() -> InMemoryCatalog:
    """Two apps, three versions, two profiles: enough for the API's tests."""
    values = {
        "streamingKit": {
            "image": {"repository": "", "tag": "", "pullPolicy": "IfNotPresent"},
            "env": [{"name": "USD_PATH", "value": "/app/samples/stage01.usd"}],
            "resources": {"limits": {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"}},
        }
    }
    mappings = {
        "container": "streamingKit.image.repository",
        "container_version": "streamingKit.image.tag",
        "name": "streamingKit.name",
    }
    return InMemoryCatalog(
        applications=[
            Application("usd-viewer", "USD Viewer", "Views USD stages", ("USD", "viewer")),
            Application("usd-composer", "USD Composer", "Composes USD stages", ("USD",)),
        ],
        versions=[
            Version("usd-viewer", "107.3.2", "example/usd-viewer", "107.3.2"),
            Version("usd-viewer", "106.5.0", "example/usd-viewer", "106.5.0"),
            Version("usd-composer", "2.1.3-alpha.1", "example/usd-composer", "2.1.3-alpha.1"),
        ],
        profiles=[
            Profile(
                "default",
                "Default",
                "One GPU per stream",
                (SupportedApplication("*", ("*",)),),
                mappings,
                values,
            ),
            Profile(
                "viewer-only",
                "Viewer only",
                "Viewer 107 and later",
                (SupportedApplication("usd-viewer", ("107.*",)),),
                mappings,
                values,
            ),
        ],
    )


@dataclass
class _Workload:
    """One workload of the fake engine: how its stand-in app behaves, and what it holds."""

    started: datetime  # by the backend's clock
    port: int  # the host port of its signaling route; media has the next one
    kit_ports: tuple[int, int]  # signaling and media inside the container
    image: str
    env: dict[str, str]
    gpus: tuple[str, ...] = ()  # the device ids of the GPUs the core gave it
    clients: int = 0  # connected now (see `connect`)
    exited: tuple[int, datetime] | None = None  # (code, when) once the app quit

    def knob(self, name: str) -> str | None:
        return self.env.get(name)

    @cached_property
    def routes(self) -> tuple[Route, Route]:
        """Its signaling and media routes, which never change while it runs."""
        return (
            Route("signaling", "TCP", self.port, self.kit_ports[0]),
            Route("media", "UDP", self.port + 1, self.kit_ports[1]),
        )

    def delay(self, default: float) -> float:
        value = self.knob(STANDIN_READY_DELAY)
        return default if value is None else float(value)


class _EngineLedger(MemoryLedger):
    """The fake engine's ledger: in this process's memory, and down while the engine is
    (`FakeBackend.unavailable`), as a ledger kept in a real engine would be."""

    def __init__(self, engine: Callable[[], None]):
        super().__init__()
        self._engine = engine

    def create(self, name: str, data: Mapping[str, str]) -> Entry | None:
        self._engine()
        return super().create(name, data)

    def replace(self, entry: Entry, data: Mapping[str, str]) -> Entry | None:
        self._engine()
        return super().replace(entry, data)

    def list(self, prefix: str = "") -> list[Entry]:
        self._engine()
        return super().list(prefix)

    def delete(self, target: Entry | str) -> bool:
        self._engine()
        return super().delete(target)


class FakeBackend(Backend):
    """An in-memory backend, a model of what every real backend observes: its workloads live
    in this process's memory, and the core keeps their sessions' records (admission, marks,
    claims, outcomes) in its `ledger`, a `MemoryLedger`. Knobs, settable at any time:

    - `ready_after`: seconds (by `now`) from start until a session is ready (default 0);
    - `never_ready`: sessions never become ready (and fail at their deadline);
    - `fault`: sessions fail at once with this reason (and `fault_detail`);
    - `unavailable`: every call, its ledger's included, raises `BackendUnavailable`, as if
      the engine were down;
    - `counts_clients`: False makes `connections` None, as for an engine that cannot tell;
    - `gpus`: the GPUs this host has (None: GPUs are not counted), named "0", "1"...: the
      core gives a start the GPUs its profile asks for (`places`), and refuses it while too
      few are free (`CapacityExceeded`, resource "gpu") or when it asks for more than there
      are (`Unsatisfiable`);
    - `signaling`: (host, TCP port) where the gateway reaches every ready session's
      signaling socket, e.g. a test's WebSocket echo server (default None: `host` and the
      session's signaling route port, where nothing listens).

    `connect(id)` and `disconnect(id)` play a client on a session's signaling port, `quit(id)`
    its app exiting by itself; `workloads` is what runs. The `STANDIN_*` variables of a
    request's environment act per session (see `ovas.testing`). `now` is the clock (default:
    the real one); `ledger`, when given, replaces the fake engine's own.
    """

    name = "fake"
    shared = False  # its workloads live in this process's memory
    host = "127.0.0.1"

    def __init__(
        self,
        catalog: Catalog | None = None,
        *,
        ready_after: float = 0.0,
        never_ready: bool = False,
        fault: Reason | None = None,
        fault_detail: str = "",
        unavailable: bool = False,
        counts_clients: bool = True,
        gpus: int | None = None,
        now: Callable[[], datetime] = utcnow,
        ledger: Ledger | None = None,
    ):
        super().__init__(
            catalog if catalog is not None else sample_catalog(),
            ledger=ledger if ledger is not None else _EngineLedger(self._engine),
            now=now,
        )
        self.ready_after = ready_after
        self.never_ready = never_ready
        self.fault = fault
        self.fault_detail = fault_detail
        self.unavailable = unavailable
        self.counts_clients = counts_clients
        self.gpus = gpus
        self.signaling: tuple[str, int] | None = None
        self._lock = threading.Lock()
        self._workloads: dict[str, _Workload] = {}
        self._next_port = 31000

    def describe(self, insider: bool) -> dict[str, Any]:
        return {"sessions": "in this process's memory"}

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Self:
        path = settings.get("CATALOG_PATH")
        if path and Path(path).is_dir():
            from ovas.catalog_files import FileCatalog

            return cls(FileCatalog(path))
        return cls()

    @property
    def workloads(self) -> dict[str, _Workload]:
        """The workloads running now, by session id (a copy): what the fake engine holds."""
        return dict(self._workloads)

    def _engine(self) -> None:
        if self.unavailable:
            raise BackendUnavailable("The fake engine is unavailable")

    def _workload(self, session_id: str) -> _Workload:
        workload = self._workloads.get(session_id)
        if workload is None:
            raise SessionNotFound(session_id)
        return workload

    def check(self) -> None:
        self._engine()

    def start(self, request: SessionRequest) -> Observed:
        """As `Backend.start`, answering with what the fake engine shows at once (a
        session ready at once is ready in the answer)."""
        started = super().start(request)
        seen = self.observe_workload(request.id)
        return Observed(started.record, seen) if seen is not None else started

    # Workloads

    def places(self, request: SessionRequest) -> Sequence[Places]:
        asked, count = request.kit.gpus, self.gpus
        if count is None or not asked:
            return ()

        def refusal(free: Sequence[str]) -> OvasError:
            if asked > count:
                return Unsatisfiable(
                    f"The profile asks for {asked} GPU(s); this host has only {count}"
                )
            return CapacityExceeded(
                f"The profile asks for {asked} GPU(s); {len(free)} of {count} are free",
                retry_after=60,
                resource="gpu",
            )

        return (Places("gpu", tuple(str(n) for n in range(count)), asked, refusal),)

    def run_workload(self, request: SessionRequest) -> None:
        self._engine()
        with self._lock:
            self._workloads[request.id] = _Workload(
                self.now(),
                self._next_port,
                (request.kit.signaling_port, request.kit.media_port),
                request.kit.image,
                request.kit.env_dict,
                gpus=tuple(request.places.get("gpu", ())),
            )
            self._next_port += 2

    def observe_workload(self, session_id: str) -> Observation | None:
        self._engine()
        workload = self._workloads.get(session_id)
        return self._seen(workload) if workload is not None else None

    def observe_workloads(self) -> Mapping[str, Observation]:
        self._engine()
        return {sid: self._seen(w) for sid, w in list(self._workloads.items())}

    def stop_workload(self, session_id: str) -> None:
        self._engine()
        with self._lock:
            self._workloads.pop(session_id, None)

    def workload_logs(self, session_id: str, tail: int) -> list[str]:
        self._engine()
        workload = self._workloads.get(session_id)
        if workload is None or tail <= 0:
            return []
        usd_path = workload.env.get("USD_PATH", "")
        return [f"stand-in Kit app: {workload.image}", f"USD_PATH={usd_path}"][-tail:]

    # Clients

    def connect(self, session_id: str) -> None:
        """A client connects to the session's signaling port."""
        self._workload(session_id).clients += 1

    def quit(self, session_id: str, code: int = 0) -> None:
        """The session's app exits with `code` now, as if by itself."""
        self._workload(session_id).exited = (code, self.now())

    def disconnect(self, session_id: str) -> None:
        """A client leaves; with `STANDIN_QUIT_ON_LEAVE=1` the app then quits (code 0), as a
        Kit app built for OVAS does."""
        workload = self._workload(session_id)
        workload.clients = max(0, workload.clients - 1)
        if workload.clients == 0 and workload.knob(STANDIN_QUIT_ON_LEAVE) == "1":
            workload.exited = (0, self.now())

    # What the fake engine shows

    def _seen(self, workload: _Workload) -> Observation:
        if self.fault is not None:
            return Observation(Stage.FAULT, fault=self.fault, detail=self.fault_detail)
        code = workload.knob(STANDIN_EXIT_CODE)
        after = workload.knob(STANDIN_EXIT_AFTER)
        if code is not None and after is None:
            return self._exit(int(code), workload.started)
        now = self.now()
        ready_at = workload.started + timedelta(seconds=workload.delay(self.ready_after))
        never = self.never_ready or workload.knob(STANDIN_NEVER_READY) == "1"
        if never or now < ready_at:
            return Observation(Stage.RUNNING, detail="Starting the Kit application")
        if after is not None and now >= ready_at + timedelta(seconds=float(after)):
            return self._exit(int(code or 0), ready_at + timedelta(seconds=float(after)))
        if workload.exited is not None:
            return self._exit(*workload.exited)
        return Observation(
            Stage.RUNNING,
            probe_ok=True,
            host=self.host,
            routes=workload.routes,
            signaling=self.signaling or (self.host, workload.port),
            connections=workload.clients if self.counts_clients else None,
        )

    @staticmethod
    def _exit(code: int, when: datetime) -> Observation:
        logs = (f"stand-in Kit app: exiting with code {code} as asked",)
        return Observation(Stage.EXITED, exit_code=code, finished_time=when, logs=logs)


class SlowBackend(FakeBackend):
    """Sessions take `ready_after` seconds (default 2) to become ready."""

    def __init__(self, catalog: Catalog | None = None, *, ready_after: float = 2.0, **kw):
        super().__init__(catalog, ready_after=ready_after, **kw)


class NeverReadyBackend(FakeBackend):
    """Sessions never become ready; they fail at their deadline."""

    def __init__(self, catalog: Catalog | None = None, **kw):
        super().__init__(catalog, never_ready=True, **kw)


class FailingBackend(FakeBackend):
    """Sessions fail at once with `fault` (default: no GPU) and the engine's `detail`."""

    def __init__(
        self,
        catalog: Catalog | None = None,
        *,
        fault: Reason = Reason.NO_GPU,
        detail: str = "no GPU is free",
        **kw,
    ):
        super().__init__(catalog, fault=fault, fault_detail=detail, **kw)
