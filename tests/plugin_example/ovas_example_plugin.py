"""An example third-party ovas backend, in its own distribution.

Each session is a listening TCP socket on 127.0.0.1 standing in for Kit's signaling port:
the session is ready once the socket listens. It keeps its sessions in memory, so it suits
one process only; it shows the shape of a plugin: subclass `ovas.Backend`, implement the
abstract methods, raise `ovas.errors` only, register under `ovas.backends`.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self

from ovas import Backend, Route, Session, SessionRequest, SessionState
from ovas.errors import CapacityExceeded, SessionNotFound, UserCapacityExceeded
from ovas.testing import sample_catalog


@dataclass
class _Entry:
    request: SessionRequest
    ready_at: float | None  # monotonic time; None = never
    exit_code: str | None
    sockets: list[socket.socket] = field(default_factory=list)


class ExampleBackend(Backend):
    name = "example"

    def __init__(self, catalog=None):
        self.catalog = catalog or sample_catalog()
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Self:
        path = settings.get("CATALOG_PATH")
        if path:
            from ovas.catalog_files import FileCatalog

            catalog = FileCatalog(path)
            if catalog.applications():
                return cls(catalog)
        return cls()

    def start(self, request: SessionRequest) -> Session:
        env = request.kit.env_dict
        never = env.get("STANDIN_NEVER_READY") == "1"
        delay = float(env.get("STANDIN_READY_DELAY", "0"))
        entry = _Entry(
            request, None if never else time.monotonic() + delay, env.get("STANDIN_EXIT_CODE")
        )
        with self._lock:
            if request.capacity and len(self._entries) >= request.capacity:
                raise CapacityExceeded(f"All {request.capacity} sessions are in use")
            mine = [e for e in self._entries.values() if e.request.username == request.username]
            if request.user_capacity and len(mine) >= request.user_capacity:
                raise UserCapacityExceeded(f"{request.username} has {len(mine)} sessions")
            self._entries[request.id] = entry
        return self._view(entry)

    def get(self, session_id: str) -> Session:
        entry = self._entries.get(session_id)
        if entry is None:
            raise SessionNotFound(session_id)
        return self._view(entry)

    def list(self) -> list[Session]:
        return [self._view(e) for e in list(self._entries.values())]

    def stop(self, session_id: str) -> None:
        with self._lock:
            entry = self._entries.pop(session_id, None)
        if entry is None:
            raise SessionNotFound(session_id)
        for sock in entry.sockets:
            sock.close()

    def _view(self, entry: _Entry) -> Session:
        r = entry.request
        session = Session(
            r.id, r.app.id, r.version.version, r.profile.id, r.username, r.created_time
        )
        if entry.exit_code is not None:
            session.state = SessionState.FAILED
            session.message = f"The process exited with code {entry.exit_code}"
        elif entry.ready_at is not None and time.monotonic() >= entry.ready_at:
            self._listen(entry)
            session.state = SessionState.READY
            session.message = "Session is active"
            session.host = "127.0.0.1"
            signaling, media = (s.getsockname()[1] for s in entry.sockets)
            session.routes = (
                Route("signaling", "TCP", signaling, r.kit.signaling_port),
                Route("media", "UDP", media, r.kit.media_port),
            )
        elif datetime.now(UTC) >= r.deadline:
            session.state = SessionState.FAILED
            session.message = "The session was not ready in time"
        return session

    def _listen(self, entry: _Entry) -> None:
        with self._lock:
            if entry.sockets:
                return
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.bind(("127.0.0.1", 0))
            tcp.listen()
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind(("127.0.0.1", 0))
            entry.sockets = [tcp, udp]
