"""What happens to sessions, as events the session service emits: metrics, the audit trail and
the logs subscribe, and read the structured reason from here, never from message text.

Each event is emitted once across every process sharing an engine where the backend can tell
(the first to record a session's readiness or outcome emits it), and once per call otherwise.
Listeners run synchronously in the emitting thread; one that raises is logged and skipped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from ovas.errors import OvasError
from ovas.models import Session

log = logging.getLogger("ovas.events")


@dataclass(frozen=True)
class SessionStarted:
    """A start was admitted: the session exists (`session` as first decided)."""

    session: Session


@dataclass(frozen=True)
class StartRefused:
    """A start was asked for and refused with `error` (capacity, an unknown app...)."""

    error: OvasError


@dataclass(frozen=True)
class SessionReady:
    """A session was seen ready for the first time, `at` then."""

    session: Session
    at: datetime


@dataclass(frozen=True)
class SessionEnded:
    """A session reached its outcome: `session.state` is ENDED or FAILED, with its reason."""

    session: Session


@dataclass(frozen=True)
class SessionStopped:
    """A session was stopped on request (DELETE) and is gone."""

    session_id: str


@dataclass(frozen=True)
class StopRefused:
    """A stop was asked for and refused with `error` (unknown session, engine down...)."""

    error: OvasError


@dataclass(frozen=True)
class SessionRemoved:
    """The reaper removed an ended or failed session whose retention had passed."""

    session_id: str


@dataclass(frozen=True)
class PoolClaimed:
    """A start was given a ready session of warm pool `pool`: `session`, now the caller's."""

    pool: str
    session: Session


@dataclass(frozen=True)
class PoolMissed:
    """A start matched warm pool `pool` but found no session to take, for `reason`
    (`ovas.pools.MISS_*`); it starts on demand."""

    pool: str
    reason: str


@dataclass(frozen=True)
class QueueJoined:
    """A start the capacity or the GPUs could not admit waits in line (`ovas.queueing`)."""

    session_id: str
    profile: str


@dataclass(frozen=True)
class QueueLeft:
    """A queued start left the line: `how` is "started", "stopped" (DELETE) or the reason
    it was dropped ("abandoned", "create_failed"); `wait` the seconds it waited (None when
    not known)."""

    session_id: str
    how: str
    wait: float | None
    profile: str = ""


Event = (
    SessionStarted
    | StartRefused
    | SessionReady
    | SessionEnded
    | SessionStopped
    | StopRefused
    | SessionRemoved
    | PoolClaimed
    | PoolMissed
    | QueueJoined
    | QueueLeft
)
Listener = Callable[[Event], None]


class Events:
    """A list of listeners: `subscribe(listener)`, then `emit(event)` calls each in turn."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()

    def subscribe(self, listener: Listener) -> None:
        with self._lock:
            self._listeners = [*self._listeners, listener]

    def emit(self, event: Event) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                # Observing must never change what happens to a session.
                log.exception("a listener of %s failed", type(event).__name__)
