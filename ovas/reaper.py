"""Runs the session service's reaper (`SessionService.reap`) every few seconds in a background
thread of a serving process: the session clocks, the retention, the warm pools and the
clean-up.

A serving process starts it as it starts (`ovas.app.serving`: each gunicorn worker after
the fork, `ovas serve`, `flask run`), so clocks run and pools fill after a restart with no
traffic; its first pass runs at once. Every serving process runs its own: a deployment makes
(workers x replicas) passes per interval, which is safe, since a pass writes only what
holds whoever writes it first (marks, outcomes, removals are each done once)."""

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
        """Start the thread once; later calls do nothing. Its first pass runs at once, then
        one every `interval` seconds. An interval of 0 disables it."""
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

    @property
    def running(self) -> bool:
        """True once `start` started the thread, until `stop`."""
        return self._thread is not None and not self._stop.is_set()

    def _run(self) -> None:
        while True:
            try:
                self.run_once()
            except OvasError as exc:
                log.warning("reaping skipped: %s", exc.message)
            except Exception:
                log.exception("reaping failed")
            if self._stop.wait(self.interval):
                return
