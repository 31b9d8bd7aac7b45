"""An in-memory backend and catalog: the fake behind the web layer's tests, and a model of
the behaviour every real backend must show."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

from ovas.backend import Backend, Catalog
from ovas.errors import (
    ApplicationNotFound,
    BackendUnavailable,
    CapacityExceeded,
    Conflict,
    SessionNotFound,
    UserCapacityExceeded,
    VersionNotFound,
)
from ovas.models import (
    Application,
    Profile,
    Route,
    Session,
    SessionRequest,
    SessionState,
    SupportedApplication,
    Version,
)
from ovas.testing.requests import STANDIN_EXIT_CODE, STANDIN_NEVER_READY, STANDIN_READY_DELAY


class InMemoryCatalog(Catalog):
    """A catalog in memory, editable, safe across threads."""

    def __init__(
        self,
        applications: list[Application] = (),
        versions: list[Version] = (),
        profiles: list[Profile] = (),
    ):
        self._lock = threading.Lock()
        self._apps = {a.id: a for a in applications}
        self._versions = {(v.app_id, v.version): v for v in versions}
        self._profiles = {p.id: p for p in profiles}

    def applications(self) -> list[Application]:
        return list(self._apps.values())

    def versions(self, app_id: str) -> list[Version]:
        if app_id not in self._apps:
            raise ApplicationNotFound(app_id)
        return [v for (a, _), v in list(self._versions.items()) if a == app_id]

    def profiles(self) -> list[Profile]:
        return list(self._profiles.values())

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
class _Record:
    request: SessionRequest
    started: float  # time.monotonic() at start
    port: int
    exit_code: str | None  # the STANDIN_* knobs, read once at start
    ready_delay: float | None
    never_ready: bool
    ready: Session | None = None  # once ready a session stays so: built once

    @classmethod
    def of(cls, request: SessionRequest, port: int) -> _Record:
        env = request.kit.env_dict
        delay = env.get(STANDIN_READY_DELAY)
        return cls(
            request,
            time.monotonic(),
            port,
            env.get(STANDIN_EXIT_CODE),
            float(delay) if delay is not None else None,
            env.get(STANDIN_NEVER_READY) == "1",
        )


class FakeBackend(Backend):
    """An in-memory backend. Knobs, settable at any time:

    - `ready_after`: seconds from start until a session is ready (default 0);
    - `never_ready`: sessions never become ready (and fail at their deadline);
    - `fail_reason`: sessions fail at once with this message;
    - `unavailable`: every call raises `BackendUnavailable`, as if the engine were down.

    The `STANDIN_*` variables of a request's environment act per session.
    """

    name = "fake"
    host = "127.0.0.1"

    def __init__(
        self,
        catalog: Catalog | None = None,
        *,
        ready_after: float = 0.0,
        never_ready: bool = False,
        fail_reason: str | None = None,
        unavailable: bool = False,
        reap_grace: float = 60.0,
    ):
        self.catalog = catalog if catalog is not None else sample_catalog()
        self.ready_after = ready_after
        self.never_ready = never_ready
        self.fail_reason = fail_reason
        self.unavailable = unavailable
        self.reap_grace = reap_grace
        self._lock = threading.Lock()
        self._sessions: dict[str, _Record] = {}
        self._next_port = 31000

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

    def check(self) -> None:
        self._engine()

    def start(self, request: SessionRequest) -> Session:
        self._engine()
        with self._lock:
            if request.capacity and len(self._sessions) >= request.capacity:
                raise CapacityExceeded(
                    f"All {request.capacity} session slots are in use", retry_after=30
                )
            mine = sum(1 for r in self._sessions.values() if r.request.username == request.username)
            if request.user_capacity and mine >= request.user_capacity:
                raise UserCapacityExceeded(
                    f"User '{request.username}' already has {mine} sessions", retry_after=30
                )
            record = _Record.of(request, self._next_port)
            self._next_port += 2
            self._sessions[request.id] = record
        return self._session(record)

    def get(self, session_id: str) -> Session:
        self._engine()
        record = self._sessions.get(session_id)
        if record is None:
            raise SessionNotFound(session_id)
        return self._session(record)

    def list(self) -> list[Session]:
        self._engine()
        return [self._session(r) for r in list(self._sessions.values())]

    def stop(self, session_id: str) -> None:
        self._engine()
        with self._lock:
            if self._sessions.pop(session_id, None) is None:
                raise SessionNotFound(session_id)

    def reap(self, now: datetime) -> list[str]:
        self._engine()
        removed = []
        for session in self.list():
            failed_since = session.created_time + timedelta(seconds=self.reap_grace)
            if session.state is SessionState.FAILED and now >= failed_since:
                with self._lock:
                    if self._sessions.pop(session.id, None) is not None:
                        removed.append(session.id)
        return removed

    def _session(self, record: _Record) -> Session:
        if record.ready is not None and not self.fail_reason:
            return record.ready
        request = record.request
        session = Session.of(request)
        if self.fail_reason or record.exit_code is not None:
            session.state = SessionState.FAILED
            session.message = self.fail_reason or (
                f"The container exited with code {record.exit_code}"
            )
            return session
        delay = self.ready_after if record.ready_delay is None else record.ready_delay
        if self.never_ready or record.never_ready or time.monotonic() < record.started + delay:
            if datetime.now(UTC) >= request.deadline:
                seconds = (request.deadline - request.created_time).total_seconds()
                session.state = SessionState.FAILED
                session.message = f"The session was not ready within {seconds:.0f} seconds"
            else:
                session.message = "Starting the Kit application"
            return session
        session.state = SessionState.READY
        session.message = "Session is active"
        session.host = self.host
        session.routes = (
            Route("signaling", "TCP", record.port, request.kit.signaling_port),
            Route("media", "UDP", record.port + 1, request.kit.media_port),
        )
        record.ready = session
        return session


class SlowBackend(FakeBackend):
    """Sessions take `ready_after` seconds (default 2) to become ready."""

    def __init__(self, catalog: Catalog | None = None, *, ready_after: float = 2.0, **kw):
        super().__init__(catalog, ready_after=ready_after, **kw)


class NeverReadyBackend(FakeBackend):
    """Sessions never become ready; they fail at their deadline."""

    def __init__(self, catalog: Catalog | None = None, **kw):
        super().__init__(catalog, never_ready=True, **kw)


class FailingBackend(FakeBackend):
    """Sessions fail at once with `reason`."""

    def __init__(self, catalog: Catalog | None = None, *, reason: str = "No GPU is free", **kw):
        super().__init__(catalog, fail_reason=reason, **kw)
