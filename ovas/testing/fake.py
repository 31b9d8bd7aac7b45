"""An in-memory backend and catalog: the fake behind the web layer's tests, and a model of
the behaviour every real backend must show."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, Self

from ovas.backend import Backend, Catalog, utcnow
from ovas.errors import (
    ApplicationNotFound,
    BackendUnavailable,
    CapacityExceeded,
    Conflict,
    SessionNotFound,
    UserCapacityExceeded,
    VersionNotFound,
)
from ovas.lifecycle import Mark, Observation, Observed, Outcome, Record, Stage
from ovas.models import (
    Application,
    Profile,
    Reason,
    Route,
    SessionQuery,
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
class _Entry:
    """One session of the fake engine: its record, and how its stand-in app behaves."""

    record: Record
    started: datetime  # by the backend's clock
    port: int  # the host port of its signaling route; media has the next one
    kit_ports: tuple[int, int]  # signaling and media inside the container
    image: str
    env: dict[str, str]
    clients: int = 0  # connected now (see `connect`)
    exited: tuple[int, datetime] | None = None  # (code, when) once the app quit
    ended: bool = False  # its workload was ended by `finish`
    gpus: int = 0  # the GPUs its profile asks for, held while it lives

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


class FakeBackend(Backend):
    """An in-memory backend, a model of what every real backend observes. Knobs, settable at
    any time:

    - `ready_after`: seconds (by `now`) from start until a session is ready (default 0);
    - `never_ready`: sessions never become ready (and fail at their deadline);
    - `fault`: sessions fail at once with this reason (and `fault_detail`);
    - `unavailable`: every call raises `BackendUnavailable`, as if the engine were down;
    - `counts_clients`: False makes `connections` None, as for an engine that cannot tell;
    - `gpus`: the GPUs this host has (None: GPUs are not counted): a start whose profile
      asks for more than are free is refused (`CapacityExceeded`, resource "gpu");
    - `signaling`: (host, TCP port) where the gateway reaches every ready session's
      signaling socket, e.g. a test's WebSocket echo server (default None: `host` and the
      session's signaling route port, where nothing listens).

    `connect(id)` and `disconnect(id)` play a client on a session's signaling port. The
    `STANDIN_*` variables of a request's environment act per session (see `ovas.testing`).
    `now` is the clock (default: the real one).
    """

    name = "fake"
    keeps_warm_pools = True
    shared = False  # its sessions live in this process's memory
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
    ):
        self.catalog = catalog if catalog is not None else sample_catalog()
        self.ready_after = ready_after
        self.never_ready = never_ready
        self.fault = fault
        self.fault_detail = fault_detail
        self.unavailable = unavailable
        self.counts_clients = counts_clients
        self.gpus = gpus
        self.signaling: tuple[str, int] | None = None
        self.now = now
        self._lock = threading.Lock()
        self._sessions: dict[str, _Entry] = {}
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

    def _engine(self) -> None:
        if self.unavailable:
            raise BackendUnavailable("The fake engine is unavailable")

    def _entry(self, session_id: str) -> _Entry:
        entry = self._sessions.get(session_id)
        if entry is None:
            raise SessionNotFound(session_id)
        return entry

    def check(self) -> None:
        self._engine()

    def start(self, request: SessionRequest) -> Observed:
        self._engine()
        with self._lock:
            live = [e for e in self._sessions.values() if e.record.outcome is None]
            if request.capacity and len(live) >= request.capacity:
                raise CapacityExceeded(
                    f"All {request.capacity} session slots are in use", retry_after=30
                )
            if request.pool:
                pooled = [
                    e
                    for e in live
                    if e.record.pooled
                    and e.record.pool == request.pool
                    and e.record.version == request.version.version
                    and e.record.rendering == request.rendering
                ]
                if request.pool_size and len(pooled) >= request.pool_size:
                    raise CapacityExceeded(
                        f"Warm pool '{request.pool}' has its {len(pooled)} sessions",
                        retry_after=30,
                    )
            else:
                self._admit_user(live, request.username, request.user_capacity)
            self._admit_gpus(live, request.kit.gpus)
            entry = _Entry(
                Record.of(request),
                self.now(),
                self._next_port,
                (request.kit.signaling_port, request.kit.media_port),
                request.kit.image,
                request.kit.env_dict,
                gpus=request.kit.gpus,
            )
            self._next_port += 2
            self._sessions[request.id] = entry
        return self._observed(entry)

    def observe(self, session_id: str) -> Observed:
        self._engine()
        return self._observed(self._entry(session_id))

    def observe_all(self) -> list[Observed]:
        self._engine()
        return [self._observed(e) for e in list(self._sessions.values())]

    def observe_page(self, query: SessionQuery) -> list[Observed]:
        # The page is chosen from the records alone: only its sessions are observed.
        self._engine()
        page = query.select(list(self._sessions.values()), key=lambda e: e.record)
        return [self._observed(e) for e in page]

    def mark(self, session_id: str, mark: Mark, at: datetime | None) -> bool:
        self._engine()
        with self._lock:
            entry = self._sessions.get(session_id)
            changed = entry.record.marked(mark, at) if entry is not None else None
            if changed is None:
                return False
            entry.record = changed
            return True

    def _admit_gpus(self, live: list[_Entry], asked: int) -> None:
        if self.gpus is None or not asked:
            return
        held = sum(e.gpus for e in live)
        if held + asked > self.gpus:
            free = self.gpus - held
            raise CapacityExceeded(
                f"The profile asks for {asked} GPU(s); {free} of {self.gpus} are free",
                retry_after=60,
                resource="gpu",
            )

    @staticmethod
    def _admit_user(live: list[_Entry], username: str, capacity: int) -> None:
        mine = sum(1 for e in live if not e.record.pooled and e.record.username == username)
        if capacity and mine >= capacity:
            raise UserCapacityExceeded(
                f"User '{username}' already has {mine} sessions", retry_after=30
            )

    def claim(
        self, session_id: str, username: str, at: datetime, *, user_capacity: int = 0
    ) -> bool:
        self._engine()
        with self._lock:
            entry = self._sessions.get(session_id)
            if entry is None or not entry.record.pooled or entry.record.outcome is not None:
                return False
            live = [e for e in self._sessions.values() if e.record.outcome is None]
            self._admit_user(live, username, user_capacity)
            marks = {**entry.record.marks, Mark.CLAIMED: at}
            entry.record = replace(entry.record, username=username, marks=marks)
            return True

    def finish(self, session_id: str, outcome: Outcome) -> bool:
        self._engine()
        with self._lock:
            entry = self._sessions.get(session_id)
            if entry is None or entry.record.outcome is not None:
                return False
            entry.record = replace(entry.record, outcome=outcome)
            entry.ended, entry.clients = True, 0
            return True

    def stop(self, session_id: str) -> None:
        self._engine()
        with self._lock:
            if self._sessions.pop(session_id, None) is None:
                raise SessionNotFound(session_id)

    def logs(self, session_id: str, tail: int = 100) -> list[str]:
        self._engine()
        entry = self._entry(session_id)
        return [f"stand-in Kit app: {entry.image}", f"USD_PATH={entry.env.get('USD_PATH', '')}"][
            -tail:
        ]

    # Clients

    def connect(self, session_id: str) -> None:
        """A client connects to the session's signaling port."""
        self._entry(session_id).clients += 1

    def quit(self, session_id: str, code: int = 0) -> None:
        """The session's app exits with `code` now, as if by itself."""
        self._entry(session_id).exited = (code, self.now())

    def disconnect(self, session_id: str) -> None:
        """A client leaves; with `STANDIN_QUIT_ON_LEAVE=1` the app then quits (code 0), as a
        Kit app built for OVAS does."""
        entry = self._entry(session_id)
        entry.clients = max(0, entry.clients - 1)
        if entry.clients == 0 and entry.knob(STANDIN_QUIT_ON_LEAVE) == "1":
            entry.exited = (0, self.now())

    # What the fake engine shows

    def _observed(self, entry: _Entry) -> Observed:
        return Observed(entry.record, self._seen(entry))

    def _seen(self, entry: _Entry) -> Observation:
        if entry.ended:
            return Observation(Stage.GONE)
        if self.fault is not None:
            return Observation(Stage.FAULT, fault=self.fault, detail=self.fault_detail)
        code = entry.knob(STANDIN_EXIT_CODE)
        after = entry.knob(STANDIN_EXIT_AFTER)
        if code is not None and after is None:
            return self._exit(entry, int(code), entry.started)
        now = self.now()
        ready_at = entry.started + timedelta(seconds=entry.delay(self.ready_after))
        never = self.never_ready or entry.knob(STANDIN_NEVER_READY) == "1"
        if never or now < ready_at:
            return Observation(Stage.RUNNING, detail="Starting the Kit application")
        if after is not None:
            seen_ready = entry.record.marks.get(Mark.READY, ready_at)
            if now >= seen_ready + timedelta(seconds=float(after)):
                when = seen_ready + timedelta(seconds=float(after))
                return self._exit(entry, int(code or 0), when)
        if entry.exited is not None:
            return self._exit(entry, *entry.exited)
        return Observation(
            Stage.RUNNING,
            probe_ok=True,
            host=self.host,
            routes=entry.routes,
            signaling=self.signaling or (self.host, entry.port),
            connections=entry.clients if self.counts_clients else None,
        )

    def _exit(self, entry: _Entry, code: int, when: datetime) -> Observation:
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
