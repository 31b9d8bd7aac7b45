"""Runs the session service's reaper (`SessionService.reap`) every few seconds in a background
thread of a serving process: the session clocks, the retention, and the clean-up."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from ovas.errors import OvasError

log = logging.getLogger(__name__)


class Reaper:
    def __init__(self, reap: Callable[[], Mapping[str, str]], interval: float):
        """`reap()` does one pass and returns what it removed, each with why
        (`SessionService.reap_pass`); every `interval` seconds."""
        self.reap = reap
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def start(self) -> None:
        """Start the thread once; later calls do nothing. An interval of 0 disables it."""
        if self.interval <= 0 or self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ovas-reaper", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def run_once(self) -> Mapping[str, str]:
        removed = self.reap()
        for name, why in removed.items():
            log.info("removed %s: %s", name, why)
        return removed

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except OvasError as exc:
                log.warning("reaping skipped: %s", exc.message)
            except Exception:
                log.exception("reaping failed")
