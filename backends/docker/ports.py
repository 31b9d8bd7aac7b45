"""The host ports sessions are published on: a range Docker picks from.

Docker chooses each session's host ports inside `OVAS_DOCKER_PORT_RANGE` when it starts the
container, skipping those its own containers hold; a port some other program holds is
refused at start, and asked again Docker moves on to the range's next port. ovas reads the
chosen ports back from the container for the routes.
"""

from __future__ import annotations

from pathlib import Path

from ovas.errors import ConfigurationError

DEFAULT_RANGE = "31000-31999"
EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")


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


def as_text(ports: range) -> str:
    """The range as Docker's port bindings take it: `first-last`."""
    return f"{ports.start}-{ports.stop - 1}"


def ephemeral_overlap(ports: range, source: Path = EPHEMERAL) -> range | None:
    """The part of `ports` inside this host's ephemeral port range (from which the kernel
    takes ports for outgoing connections, so any of them may be taken at any moment), or
    None when they do not overlap or the range cannot be read."""
    try:
        low, high = (int(v) for v in source.read_text().split())
    except (OSError, ValueError):
        return None
    first, last = max(ports.start, low), min(ports.stop - 1, high)
    return range(first, last + 1) if first <= last else None
