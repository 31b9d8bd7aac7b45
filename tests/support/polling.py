"""Bounded polling of something real: an engine, a server process, a browser. Deadlines of
ovas itself are never waited out this way: tests move the injected clock for those."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

INTERVAL = 0.05  # seconds between two looks


def until(
    check: Callable[[], Any],
    timeout: float = 10.0,
    what: str | None = None,
    process: Any = None,
) -> Any:
    """Call `check` until it returns something true, for at most `timeout` seconds, and
    return what it returned last. Stops early when `process` (a `subprocess.Popen`) exits.
    With `what`, fails the test naming it instead of returning a false value."""
    deadline = time.monotonic() + timeout
    while not (seen := check()):
        if process is not None and process.poll() is not None:
            if what is not None:
                pytest.fail(f"the process exited while waiting for {what}")
            return seen
        if time.monotonic() >= deadline:
            if what is not None:
                pytest.fail(f"not within {timeout} s: {what}")
            return seen
        time.sleep(INTERVAL)
    return seen
