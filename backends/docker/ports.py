"""Host ports for sessions: a range to hand out, and the choice of free ones in it.

Which ports are taken is not remembered here: the caller passes the ports that ovas's own
containers hold (read back from their labels), so the choice survives a restart of ovas and
agrees across processes. The caller serialises calls (see `backends.docker.admission`).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable

from ovas.errors import CapacityExceeded, ConfigurationError

DEFAULT_RANGE = "31000-31999"


def parse_port_range(text: str | None) -> range:
    """`"31000-31999"` -> range(31000, 32000); a single port is a range of one.

    Raises `ConfigurationError` naming OVAS_DOCKER_PORT_RANGE for anything else."""
    raw = str(text or DEFAULT_RANGE).strip()
    low, sep, high = raw.partition("-")
    try:
        first = int(low)
        last = int(high) if sep else first
    except ValueError:
        first = last = 0
    if not (1 <= first <= last <= 65535):
        raise ConfigurationError(
            f"OVAS_DOCKER_PORT_RANGE must look like 31000-31999 (ports 1-65535), not {raw!r}"
        )
    return range(first, last + 1)


def port_is_free(address: str, port: int, protocol: str) -> bool:
    """True unless something on this host already holds `port` on `address`.

    Only a port that is in use counts as taken; an address this host does not have (the
    engine runs elsewhere) cannot be checked and counts as free."""
    kind = socket.SOCK_DGRAM if protocol.lower() == "udp" else socket.SOCK_STREAM
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, kind) as sock:
        try:
            sock.bind((address, port))
        except OSError as exc:
            return exc.errno != errno.EADDRINUSE
    return True


class PortAllocator:
    """Hands out host ports from `ports`, skipping those ovas holds and, when `check_host`
    is set, those some other program on this host holds."""

    def __init__(self, ports: range, *, bind_address: str = "127.0.0.1", check_host: bool = True):
        self.ports = ports
        self.bind_address = bind_address
        self.check_host = check_host

    def allocate(self, protocols: list[str], in_use: Iterable[int]) -> list[int]:
        """One free host port per entry of `protocols` ("tcp"/"udp"), lowest first.

        Raises `CapacityExceeded` when the range has too few left; nothing is reserved by
        this call itself (the container's labels are the reservation)."""
        taken = set(in_use)
        chosen: list[int] = []
        wanted = iter(protocols)
        protocol = next(wanted, None)
        for port in self.ports:
            if protocol is None:
                break
            if port in taken:
                continue
            if self.check_host and not port_is_free(self.bind_address, port, protocol):
                continue
            chosen.append(port)
            taken.add(port)
            protocol = next(wanted, None)
        if protocol is not None:
            free = len([p for p in self.ports if p not in set(in_use)])
            raise CapacityExceeded(
                f"No free host port for another session: it needs {len(protocols)} ports and "
                f"{free} of {len(self.ports)} in OVAS_DOCKER_PORT_RANGE "
                f"{self.ports.start}-{self.ports.stop - 1} are free",
                retry_after=30,
            )
        return chosen
