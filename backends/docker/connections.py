"""Clients connected to a session: the established TCP connections to the Kit container's
signaling port, counted inside the container's network namespace.

Every client reaches the container through a connection on that port (made by Docker's
port proxy for each client, or by the client itself when the proxy is off), and Kit's
WebRTC signaling socket stays open for as long as the client streams. The kernel's table of
those connections is `/proc/<pid>/net/tcp` (and `tcp6`) of a process in the container:
read from the host when the engine runs here and ovas may read it, else through the engine
(`cat /proc/net/tcp` run in the container). None when neither works.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable
from pathlib import Path

from backends.docker.engine import Engine

ESTABLISHED = "01"  # the `st` column of /proc/net/tcp (include/net/tcp_states.h)


def count_established(table: str, port: int) -> int:
    """Established connections whose local port is `port`, in a /proc/net/tcp[6] table."""
    count = 0
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[3] != ESTABLISHED:
            continue
        _, _, local_port = fields[1].rpartition(":")
        with contextlib.suppress(ValueError):
            if int(local_port, 16) == port:
                count += 1
    return count


def read_tables(pid: int, proc: Path = Path("/proc")) -> str | None:
    """The tcp and tcp6 tables of process `pid`'s network namespace; None if unreadable."""
    tables = []
    for name in ("tcp", "tcp6"):
        try:
            tables.append((proc / str(pid) / "net" / name).read_text())
        except FileNotFoundError:
            if name == "tcp":
                return None
        except OSError:
            return None
    return "\n".join(tables)


class Clients:
    """Counts a running Kit container's clients. Remembers each container's main process
    id (one `inspect` per container, ever), forgotten when the container is gone."""

    def __init__(self, engine: Engine, proc: Path = Path("/proc")):
        self.engine = engine
        self.proc = proc
        self._pids: dict[str, int] = {}
        self._lock = threading.Lock()

    def count(self, container_id: str, port: int) -> int | None:
        """Clients on container `port` now, or None when ovas cannot tell."""
        if self.engine.is_local:
            pid = self._pid(container_id)
            tables = read_tables(pid, self.proc) if pid else None
            if tables is not None:
                return count_established(tables, port)
        tables = self.engine.run_inside(container_id, ["cat", "/proc/net/tcp"])
        if tables is None:
            return None
        six = self.engine.run_inside(container_id, ["cat", "/proc/net/tcp6"]) or ""
        return count_established(tables, port) + count_established(six, port)

    def _pid(self, container_id: str) -> int:
        with self._lock:
            pid = self._pids.get(container_id)
        if pid is None:
            pid = int(self.engine.state(container_id).get("Pid") or 0)
            if pid:
                with self._lock:
                    self._pids[container_id] = pid
        return pid

    def drop(self, container_id: str) -> None:
        """Forget the container's process id (it has stopped, or is removed)."""
        with self._lock:
            self._pids.pop(container_id, None)

    def forget(self, running: Iterable[str]) -> None:
        """Keep only the process ids of the containers still running."""
        keep = set(running)
        with self._lock:
            for container_id in [k for k in self._pids if k not in keep]:
                del self._pids[container_id]

    @property
    def remembered(self) -> int:
        return len(self._pids)
