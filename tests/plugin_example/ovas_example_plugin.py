"""An example third-party ovas backend, in its own distribution.

Each session is a listening TCP socket on 127.0.0.1 standing in for Kit's signaling port:
the session is ready once the socket listens. It keeps its sessions in memory, so it suits
one process only; it shows the shape of a plugin: subclass `ovas.Backend`, report what the
engine shows (`Observation`), keep the marks and outcome ovas asks for, raise `ovas.errors`
only, and register under `ovas.backends`. The session clocks, the states, the messages and
the metrics come from ovas. It cannot tell whether a client is connected (`connections` is
None), so of the clocks only the max lifetime applies to its sessions.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Self

from ovas import Backend, Route, SessionRequest
from ovas.errors import CapacityExceeded, SessionNotFound, UserCapacityExceeded
from ovas.lifecycle import Mark, Observation, Observed, Outcome, Record, Stage
from ovas.testing import sample_catalog


@dataclass
class _Entry:
    record: Record
    ready_at: datetime | None  # by the backend's clock; None = never
    exit_code: int | None  # exits at once with it
    exit_after: float | None  # ... or this many seconds after it was ready
    kit_ports: tuple[int, int]  # signaling and media inside the "container"
    sockets: list[socket.socket] = field(default_factory=list)


class ExampleBackend(Backend):
    name = "example"

    def __init__(self, catalog=None, *, now=None):
        self.catalog = catalog or sample_catalog()
        if now is not None:
            self.now = now
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

    def start(self, request: SessionRequest) -> Observed:
        env = request.kit.env_dict
        never = env.get("STANDIN_NEVER_READY") == "1"
        delay = timedelta(seconds=float(env.get("STANDIN_READY_DELAY", "0")))
        code = env.get("STANDIN_EXIT_CODE")
        after = env.get("STANDIN_EXIT_AFTER")
        entry = _Entry(
            Record.of(request),
            None if never else self.now() + delay,
            int(code) if code is not None else None,
            float(after) if after is not None else None,
            (request.kit.signaling_port, request.kit.media_port),
        )
        with self._lock:
            live = [e for e in self._entries.values() if e.record.outcome is None]
            if request.capacity and len(live) >= request.capacity:
                raise CapacityExceeded(f"All {request.capacity} sessions are in use")
            mine = [e for e in live if e.record.username == request.username]
            if request.user_capacity and len(mine) >= request.user_capacity:
                raise UserCapacityExceeded(f"{request.username} has {len(mine)} sessions")
            self._entries[request.id] = entry
        return self._observed(entry)

    def _entry(self, session_id: str) -> _Entry:
        entry = self._entries.get(session_id)
        if entry is None:
            raise SessionNotFound(session_id)
        return entry

    def observe(self, session_id: str) -> Observed:
        return self._observed(self._entry(session_id))

    def observe_all(self) -> list[Observed]:
        return [self._observed(e) for e in list(self._entries.values())]

    def mark(self, session_id: str, mark: Mark, at: datetime | None) -> bool:
        with self._lock:
            entry = self._entries.get(session_id)
            changed = entry.record.marked(mark, at) if entry is not None else None
            if changed is None:
                return False
            entry.record = changed
            return True

    def finish(self, session_id: str, outcome: Outcome) -> bool:
        with self._lock:
            entry = self._entries.get(session_id)
            if entry is None or entry.record.outcome is not None:
                return False
            entry.record = replace(entry.record, outcome=outcome)
        self._close(entry)
        return True

    def stop(self, session_id: str) -> None:
        with self._lock:
            entry = self._entries.pop(session_id, None)
        if entry is None:
            raise SessionNotFound(session_id)
        self._close(entry)

    def _close(self, entry: _Entry) -> None:
        for sock in entry.sockets:
            sock.close()

    def _observed(self, entry: _Entry) -> Observed:
        return Observed(entry.record, self._seen(entry))

    def _seen(self, entry: _Entry) -> Observation:
        if entry.record.outcome is not None:
            return Observation(Stage.GONE)
        now = self.now()
        if entry.exit_code is not None and entry.exit_after is None:
            return Observation(Stage.EXITED, exit_code=entry.exit_code, finished_time=now)
        if entry.ready_at is None or now < entry.ready_at:
            return Observation(Stage.WAITING, detail="Opening the signaling socket")
        ready_at = entry.record.marks.get(Mark.READY)
        if ready_at and entry.exit_after is not None:
            exit_time = ready_at + timedelta(seconds=entry.exit_after)
            if now >= exit_time:
                code = entry.exit_code or 0
                return Observation(Stage.EXITED, exit_code=code, finished_time=exit_time)
        self._listen(entry)
        signaling, media = (s.getsockname()[1] for s in entry.sockets)
        return Observation(
            Stage.RUNNING,
            probe_ok=True,
            host="127.0.0.1",
            routes=(
                Route("signaling", "TCP", signaling, entry.kit_ports[0]),
                Route("media", "UDP", media, entry.kit_ports[1]),
            ),
        )

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
