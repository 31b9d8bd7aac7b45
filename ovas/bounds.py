"""The range of every duration and count ovas reads, in one place: the settings
(`ovas.config.SETTINGS`), a profile's clock annotations (`ovas.lifecycle.DURATION_ANNOTATIONS`)
and its probe timings (`ovas.kitspec`) take theirs from here.

A range keeps the date arithmetic of the clocks and deadlines within what a `datetime` can
hold (year 9999): `ovas/max-lifetime: "999999999999"` is refused where it is read (catalog
check, catalog load, startup), never met as an OverflowError by a request. 0 turns a clock
off, so no larger number is needed for "never".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

YEAR = 365 * 24 * 3600  # seconds


@dataclass(frozen=True)
class Bounds:
    """A range, `low` to `high` inclusive, of `unit`s; `whole`: integers only."""

    low: int
    high: int
    unit: str
    whole: bool = True

    def text(self) -> str:
        """The range as the README states it: `0 to 31536000 seconds`."""
        return f"{self.low} to {self.high} {self.unit}"

    def read(self, value: Any, where: str) -> int | float:
        """`value` (a number, or text as an environment variable or an annotation holds
        it) as a number in range. Raises ValueError naming `where`, the range and the
        largest allowed; a bool, a fraction where whole numbers are asked, NaN and
        infinity are refused, never rounded."""
        kind = "a whole number" if self.whole else "a number"
        wanted = f"{kind} of {self.unit} from {self.low} to {self.high}"
        number = _number(value, self.whole)
        if number is None:
            raise ValueError(f"{where}: {value!r} is not {wanted}")
        if number > self.high:
            raise ValueError(
                f"{where}: {value!r} is more than the largest allowed, {self.high} {self.unit}"
            )
        if number < self.low:
            raise ValueError(f"{where}: {value!r} is less than {self.low} ({wanted})")
        return number


def _number(value: Any, whole: bool) -> int | float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = int(value.strip()) if whole else float(value.strip())
        except ValueError:
            return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if value.is_integer():
            return int(value)
        return None if whole else value
    return value if isinstance(value, int) else None


SECONDS = Bounds(0, YEAR, "seconds")  # every clock, timeout, interval and age
DEADLINE = Bounds(1, YEAR, "seconds")  # a deadline that cannot be turned off (the start's)
FRACTIONAL_SECONDS = Bounds(0, YEAR, "seconds", whole=False)  # probe timings
SESSIONS = Bounds(0, 100_000, "sessions")  # capacities (0 = no limit)
TRIES = Bounds(1, 100_000, "tries")  # a probe's failureThreshold
BODY_BYTES = Bounds(1, 64 * 2**20, "bytes")  # a request body
WORKERS = Bounds(1, 256, "processes")
THREADS = Bounds(1, 1024, "threads")
PORT = Bounds(1, 65535, "port")  # a TCP port
CLIENTS = Bounds(1, 10_000, "clients")  # clients of one session at once


def after(moment: datetime, seconds: float) -> datetime | None:
    """`seconds` after `moment`; None when that is past what a datetime holds (year 9999),
    which is never. Settings and catalogs are bounded, but a session's record written by
    another version of ovas may hold any number."""
    try:
        return moment + timedelta(seconds=seconds)
    except (OverflowError, ValueError):
        return None
