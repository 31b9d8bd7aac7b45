"""Warm pools' back-off after failures, kept in the ledger, so that every worker process and
replica reads and raises the same one.

A pool whose sessions fail (a broken image, a profile that cannot run) starts its next
round 30 s after the failed round started, then twice as long each time, up to 10 minutes,
until one of its sessions is ready: a broken pool must not churn the engine nor fill the
log, and running more workers must not make it churn more. A failed session raises the
back-off only when it was started once the back-off in force had run out (or with none in
force): it is of a new round. Its other sessions, however late each is seen to fail and by
whichever process, are of the round counted already. A raise is a compare-and-swap on the
pool's record, so of several processes seeing the same failure one raises it; a ready
session clears it.

The record is `pool-backoff.<pool>` (`BACKOFF` codec, format 1): `seconds`, and `until`, an
ISO 8601 UTC time: the round's start plus `seconds`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from ovas.ledger import NAME_PATTERN, Entry, Ledger, RecordCodec, UnknownFormat

FIRST = 30.0  # seconds: the first back-off
MOST = 600.0  # seconds: the longest
PREFIX = "pool-backoff."
BACKOFF = RecordCodec("pool-backoff", current=1, readers={1: dict})
log = logging.getLogger(__name__)


def record_name(pool: str) -> str:
    """The ledger name of `pool`'s back-off. Pool names are Kubernetes object names; one
    that would not fit a ledger name is shortened with a digest of itself."""
    name = PREFIX + pool
    if NAME_PATTERN.match(name):
        return name
    digest = hashlib.sha256(pool.encode()).hexdigest()[:16]
    return f"{PREFIX}{digest}"


@dataclass(frozen=True)
class Backoff:
    """One pool's back-off as the ledger holds it."""

    until: datetime
    seconds: float
    entry: Entry


class Backoffs:
    """The back-offs of every pool, over `ledger`. One `load` (one engine call) per pass."""

    def __init__(self, ledger: Ledger):
        self.ledger = ledger

    def load(self) -> dict[str, Backoff]:
        """Every pool's back-off, by ledger name; records of a format this release cannot
        read are left alone (and logged)."""
        found = {}
        for entry in self.ledger.list(PREFIX):
            try:
                found[entry.name] = _read(entry)
            except (UnknownFormat, KeyError, ValueError) as exc:
                log.warning("leaving the back-off record %s alone: %s", entry.name, exc)
        return found

    def waiting(self, pool: str, backoffs: dict[str, Backoff], now: datetime) -> bool:
        """True while `pool` may not start sessions."""
        held = backoffs.get(record_name(pool))
        return held is not None and now < held.until

    def failed(
        self, pool: str, started: Iterable[datetime], backoffs: dict[str, Backoff]
    ) -> float | None:
        """`pool`'s sessions started at `started` failed. Those started once the back-off
        in force ran out are a new round: the back-off doubles (`FIRST` at first, `MOST`
        at most) and runs from the latest of them. Returns the new back-off in seconds
        when this call raised it, else None. Safe in any number of processes at once: a
        compare-and-swap, read again on loss."""
        name = record_name(pool)
        times = list(started)
        held = backoffs.get(name)
        for _ in range(5):
            new = [t for t in times if held is None or t >= held.until]
            if not new:
                return None
            seconds = min(MOST, (held.seconds if held else 0.0) * 2 or FIRST)
            until = max(new) + timedelta(seconds=seconds)
            data = BACKOFF.encode({"seconds": f"{seconds:g}", "until": until.isoformat()})
            written = (
                self.ledger.replace(held.entry, data) if held else self.ledger.create(name, data)
            )
            if written is not None:
                backoffs[name] = _read(written)
                return seconds
            again = self.ledger.get(name)
            held = _read(again) if again is not None else None
        return None

    def clear(self, pool: str, backoffs: dict[str, Backoff]) -> None:
        """A session of `pool` is ready: its back-off is over."""
        held = backoffs.pop(record_name(pool), None)
        if held is not None:
            self.ledger.delete(held.entry)


def _read(entry: Entry) -> Backoff:
    fields = BACKOFF.decode(entry)
    return Backoff(
        until=datetime.fromisoformat(fields["until"]),
        seconds=float(fields["seconds"]),
        entry=entry,
    )
