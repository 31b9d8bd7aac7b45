"""A clock that tests move, so that deadlines are crossed without waiting for them."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta


class FakeClock:
    """Call it for the time (an aware UTC datetime), as ovas calls its `now`; `advance(s)`
    moves it on by `s` seconds.

    Frozen by default: time moves only when the test says. `ticking=True` lets real time
    pass too (the test's jumps are added to it), for tests that also wait on a real engine,
    whose own times (a container's start, its exit) are real."""

    def __init__(self, start: datetime | None = None, *, ticking: bool = False):
        self._start = start or datetime.now(UTC)
        self._offset = timedelta()
        self._began = time.monotonic()
        self._ticking = ticking
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            now = self._start + self._offset
        if self._ticking:
            now += timedelta(seconds=time.monotonic() - self._began)
        return now

    def advance(self, seconds: float) -> datetime:
        """Move the clock `seconds` on; returns the new time."""
        with self._lock:
            self._offset += timedelta(seconds=seconds)
        return self()
