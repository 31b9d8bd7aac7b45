"""The slow part of a start, in a background thread: pulling the image (when needed), then
creating and starting the Kit container. `POST /stream` only admits the session and
records it; this does the rest, visible to every ovas process on the host.

While a thread works for a session, it holds a lock file named after the session, and
writes the pull's progress to a small file beside it; any process on the host reads the
progress for `status.message`. When the working process dies, the kernel releases its lock,
so a process that can take the lock knows no one works for the session and carries on from
what the engine holds (a pending record, or a container created but not started).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import filelock

log = logging.getLogger(__name__)
WRITE_EVERY = 0.5  # seconds between progress writes


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


class Pulls:
    """The start jobs of this process, and the lock and progress files all processes share.

    `pull(image, on_event)` pulls (raising `PullFailed`); then `finished(session_id)` carries
    the start on, or `failed(session_id, message)` records why the pull failed."""

    def __init__(
        self,
        directory: Callable[[], Path],
        pull: Callable[[str, Callable[[Mapping[str, Any]], None]], None],
        finished: Callable[[str], None],
        failed: Callable[[str, str], None],
    ):
        self._directory = directory
        self._pull = pull
        self._finished = finished
        self._failed = failed
        self._lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}

    def _path(self, session_id: str, suffix: str) -> Path:
        return self._directory() / f"pull-{session_id}.{suffix}"

    def running_here(self, session_id: str) -> bool:
        with self._lock:
            thread = self._threads.get(session_id)
            return thread is not None and thread.is_alive()

    def claim(self, session_id: str) -> filelock.BaseFileLock | None:
        """The session's lock if no process holds it (so no one works on its start), else
        None. Whoever gets it must `begin`, or release it."""
        lock = filelock.FileLock(self._path(session_id, "lock"), thread_local=False)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            return None
        return lock

    def begin(
        self,
        session_id: str,
        image: str,
        lock: filelock.BaseFileLock | None = None,
        then: Callable[[str], object] | None = None,
    ) -> bool:
        """Pull `image` (none when '') for the session in a background thread, then carry
        its start on (with `then` instead of `finished`, when given). Returns False when
        another thread or process already works on it."""
        with self._lock:
            if session_id in self._threads and self._threads[session_id].is_alive():
                if lock is not None:
                    lock.release()
                return False
            lock = lock or self.claim(session_id)
            if lock is None:
                return False
            thread = threading.Thread(
                target=self._run,
                args=(session_id, image, lock, then or self._finished),
                name=f"ovas-start-{session_id[:8]}",
                daemon=True,
            )
            self._threads[session_id] = thread
        thread.start()
        return True

    def join(self, timeout: float) -> None:
        """Wait up to `timeout` seconds in all for this process's jobs to end (a pull may
        outlast it: its thread is a daemon, and its session is carried on by whoever finds
        it unattended)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def message(self, session_id: str) -> str:
        """The latest progress line of the session's pull, from whichever process pulls."""
        try:
            return json.loads(self._path(session_id, "json").read_text())["message"]
        except (OSError, ValueError, KeyError):
            return ""

    def forget(self, session_id: str) -> None:
        """Remove the files of a session that no longer exists, unless someone pulls."""
        lock = self.claim(session_id)
        if lock is None:
            return
        try:
            for suffix in ("json", "lock"):
                with contextlib.suppress(OSError):
                    self._path(session_id, suffix).unlink()
        finally:
            lock.release()

    def stale_ids(self) -> list[str]:
        """Sessions with files here (the reaper forgets those that no longer exist)."""
        with contextlib.suppress(OSError):
            return sorted({p.name[5:-5] for p in self._directory().glob("pull-*.lock")})
        return []

    def _write(self, session_id: str, message: str) -> None:
        target = self._path(session_id, "json")
        with tempfile.NamedTemporaryFile("w", dir=target.parent, delete=False) as tmp:
            json.dump({"message": message}, tmp)
        os.replace(tmp.name, target)

    def _run(
        self,
        session_id: str,
        image: str,
        lock: filelock.BaseFileLock,
        then: Callable[[str], object],
    ) -> None:
        progress = PullProgress(image)
        last_write = 0.0

        def on_event(event: Mapping[str, Any]) -> None:
            nonlocal last_write
            progress.update(event)
            if time.monotonic() - last_write >= WRITE_EVERY:
                last_write = time.monotonic()
                self._write(session_id, progress.message())

        try:
            if image:
                self._write(session_id, progress.message())
                try:
                    self._pull(image, on_event)
                except PullFailed as exc:
                    self._failed(session_id, f"The image {image} could not be pulled: {exc}")
                    return
            then(session_id)
        except Exception:
            # The engine went away or broke meanwhile: what the engine holds stays, and a
            # process that finds it unattended (this one included) carries on later.
            log.exception("the start of session %s stopped", session_id)
        finally:
            with contextlib.suppress(OSError):
                self._path(session_id, "json").unlink()
            lock.release()
            with self._lock:
                self._threads.pop(session_id, None)


class PullFailed(Exception):
    """The engine refused the pull (unknown image, no access, bad reference)."""
