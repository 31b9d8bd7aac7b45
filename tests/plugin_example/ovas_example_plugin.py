"""An example third-party ovas backend, in its own distribution.

Each session's workload is a listening TCP socket on 127.0.0.1 standing in for Kit's
signaling port (and a UDP one for media): the workload is ready once the socket listens. It
shows the shape of a plugin: subclass `ovas.Backend`, run, observe and stop
workloads, report what the engine shows (`Observation`), raise `ovas.errors` only, and
register under `ovas.backends`. Admission, warm pools, marks, outcomes and cleanup are the
core's, kept in the backend's ledger; the clocks, states, messages and metrics too. Its
workloads live in this process's memory, so it suits one process only, and it cannot tell
whether a client is connected, so of the clocks only the max lifetime applies.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Self

from ovas import Backend, Route, SessionRequest
from ovas.lifecycle import Observation, Stage
from ovas.testing import sample_catalog


@dataclass
class _Workload:
    ready_at: datetime | None  # by the backend's clock; None = never
    exit_code: int | None  # exits at once with it
    exit_after: float | None  # ... or this many seconds after it is ready
    kit_ports: tuple[int, int]  # signaling and media inside the "container"
    sockets: list[socket.socket] = field(default_factory=list)


class ExampleBackend(Backend):
    name = "example"
    shared = False  # its workloads live in this process's memory

    def __init__(self, catalog=None, *, now=None):
        super().__init__(catalog or sample_catalog(), now=now)
        self._lock = threading.Lock()
        self._workloads: dict[str, _Workload] = {}

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Self:
        path = settings.get("CATALOG_PATH")
        if path:
            from ovas.catalog_files import FileCatalog

            catalog = FileCatalog(path)
            if catalog.applications():
                return cls(catalog)
        return cls()

    def run_workload(self, request: SessionRequest) -> None:
        env = request.kit.env_dict
        delay = timedelta(seconds=float(env.get("STANDIN_READY_DELAY", "0")))
        code, after = env.get("STANDIN_EXIT_CODE"), env.get("STANDIN_EXIT_AFTER")
        with self._lock:
            self._workloads[request.id] = _Workload(
                None if env.get("STANDIN_NEVER_READY") == "1" else self.now() + delay,
                int(code) if code is not None else None,
                float(after) if after is not None else None,
                (request.kit.signaling_port, request.kit.media_port),
            )

    def observe_workload(self, session_id: str) -> Observation | None:
        workload = self._workloads.get(session_id)
        return self._seen(workload) if workload is not None else None

    def observe_workloads(self) -> Mapping[str, Observation]:
        return {sid: self._seen(w) for sid, w in list(self._workloads.items())}

    def stop_workload(self, session_id: str) -> None:
        with self._lock:
            workload = self._workloads.pop(session_id, None)
        for sock in workload.sockets if workload else ():
            sock.close()

    def _seen(self, workload: _Workload) -> Observation:
        now = self.now()
        if workload.exit_code is not None and workload.exit_after is None:
            return Observation(Stage.EXITED, exit_code=workload.exit_code, finished_time=now)
        if workload.ready_at is None or now < workload.ready_at:
            return Observation(Stage.WAITING, detail="Opening the signaling socket")
        if workload.exit_after is not None:
            exit_time = workload.ready_at + timedelta(seconds=workload.exit_after)
            if now >= exit_time:
                code = workload.exit_code or 0
                return Observation(Stage.EXITED, exit_code=code, finished_time=exit_time)
        signaling, media = (s.getsockname()[1] for s in self._listen(workload))
        return Observation(
            Stage.RUNNING,
            probe_ok=True,
            host="127.0.0.1",
            routes=(
                Route("signaling", "TCP", signaling, workload.kit_ports[0]),
                Route("media", "UDP", media, workload.kit_ports[1]),
            ),
        )

    def _listen(self, workload: _Workload) -> list[socket.socket]:
        with self._lock:
            if not workload.sockets:
                tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                tcp.bind(("127.0.0.1", 0))
                tcp.listen()
                udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                udp.bind(("127.0.0.1", 0))
                workload.sockets = [tcp, udp]
            return workload.sockets
