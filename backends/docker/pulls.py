"""The slow parts of a start, in background threads of this process: pulling an image (one
pull per image, shared by every session waiting for it) and carrying a session on to its
running Kit container. `POST /stream` only admits the session and records it.

Nothing is written anywhere but the engine. Every process that observes a session whose
start no thread of its own works on carries it on itself, from what the engine holds (a
pending record, or a container created but not started): pulling an image the engine is
already pulling joins that pull, and creating a container whose name exists is refused, so
however many processes do this, one Kit container is made. A process that dies mid-start
loses nothing: the next observer carries on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from backends.docker.engine import PullFailed

log = logging.getLogger(__name__)


def _size(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return ""


class PullProgress:
    """Docker's per-layer pull events summed into one line for `status.message`."""

    def __init__(self, image: str):
        self.image = image
        self.layers: dict[str, tuple[int, int]] = {}  # id -> (downloaded, total)
        self.done: set[str] = set()

    def update(self, event: Mapping[str, Any]) -> None:
        layer, status = event.get("id"), str(event.get("status", ""))
        if not layer or status.startswith("Pulling from"):
            return
        detail = event.get("progressDetail") or {}
        current, total = self.layers.get(layer, (0, 0))
        if status == "Downloading" and detail.get("total"):
            self.layers[layer] = (int(detail.get("current", 0)), int(detail["total"]))
        elif status in ("Download complete", "Pull complete", "Already exists"):
            self.layers[layer] = (total or current, total or current)
            self.done.add(layer)
        else:
            self.layers.setdefault(layer, (current, total))

    def message(self) -> str:
        text = f"Pulling the image {self.image}"
        if not self.layers:
            return text
        got = sum(c for c, _ in self.layers.values())
        total = sum(t for _, t in self.layers.values())
        text += f": {len(self.done)} of {len(self.layers)} layers"
        if total:
            text += f", {_size(got)} of {_size(total)} ({100 * got // total}%)"
        return text


@dataclass
class _Pull:
    progress: PullProgress
    done: threading.Event = field(default_factory=threading.Event)
    error: str = ""


class Jobs:
    """This process's background work: `pull(image)` (blocking; shared per image) and
    `launch(key, work)` (one thread per key at a time)."""

    def __init__(self, pull: Callable[[str, Callable[[Mapping[str, Any]], None]], None]):
        self._pull = pull
        self._lock = threading.Lock()
        self._pulls: dict[str, _Pull] = {}
        self._threads: dict[str, threading.Thread] = {}

    def launch(self, key: str, work: Callable[[], object]) -> bool:
        """Run `work` in a thread unless one for `key` runs here already (False then)."""
        with self._lock:
            running = self._threads.get(key)
            if running is not None and running.is_alive():
                return False
            thread = threading.Thread(
                target=self._run, args=(key, work), name=f"ovas-{key[:12]}", daemon=True
            )
            self._threads[key] = thread
        thread.start()
        return True

    def running_here(self, key: str) -> bool:
        with self._lock:
            thread = self._threads.get(key)
            return thread is not None and thread.is_alive()

    def _run(self, key: str, work: Callable[[], object]) -> None:
        try:
            work()
        except Exception:
            # The engine went away or broke meanwhile: what the engine holds stays, and a
            # process that finds it unattended (this one included) carries on later.
            log.exception("background work %s stopped", key)
        finally:
            with self._lock:
                if self._threads.get(key) is threading.current_thread():
                    del self._threads[key]

    def pull(self, image: str) -> None:
        """Pull `image`, or wait for this process's pull of it. Raises `PullFailed`,
        `BackendUnavailable`."""
        with self._lock:
            shared = self._pulls.get(image)
            mine = shared is None
            if mine:
                shared = self._pulls[image] = _Pull(PullProgress(image))
        if not mine:
            shared.done.wait()
            if shared.error:
                raise PullFailed(shared.error)
            return
        try:
            self._pull(image, shared.progress.update)
        except PullFailed as exc:
            shared.error = str(exc)
            raise
        except Exception as exc:
            shared.error = f"the pull stopped: {exc}"
            raise
        finally:
            shared.done.set()
            with self._lock:
                self._pulls.pop(image, None)

    def progress(self, image: str) -> str:
        """This process's latest progress line of a pull of `image`, or ''."""
        shared = self._pulls.get(image)
        return shared.progress.message() if shared is not None else ""

    def join(self, timeout: float) -> None:
        """Wait up to `timeout` seconds in all for this process's work to end (a pull may
        outlast it: its thread is a daemon, and whoever observes the session carries on)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
