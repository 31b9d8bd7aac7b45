"""The session lifecycle, one for every backend: observations in; state, reason and message
out, with the session clocks applied once.

A backend keeps a `Record` of each session (what was asked, and the marks and outcome the
lifecycle asked it to keep) and reports an `Observation` of what its engine shows now (the
container or pod is waiting, running, exited; the probe's verdict; clients connected).
`decide` turns the two into the `Session` a client reads, and says which marks to write and
whether the session has reached its outcome. It is pure: every process that observes the same
session at the same time decides the same, so workers and replicas never disagree.

The rules, in order:

1. A recorded outcome is final.
2. A fault the engine reports (`Stage.FAULT`) fails the session with the engine's reason.
3. An exit: code 0 after the session was ready ends it (`app_exited`: Kit apps built for OVAS
   quit when their client leaves); an exit killed for memory fails it (`oom`); any other exit,
   and any exit before readiness, fails it (`exited`).
4. A workload gone with no outcome recorded fails it (`lost`).
5. The max lifetime ends a session of any state (`max_lifetime`).
6. A session never ready fails at its start deadline (`start_timeout`).
7. A session once ready stays ready while it runs (a probe that misses later, as when Kit loads
   a stage, never fails a live stream). When the backend counts clients (`connections` is not
   None): no client within the connect timeout of readiness ends it (`connect_timeout`); the
   last client gone for the idle timeout ends it (`idle_timeout`).
8. A warm pool's session (`Record.pool`) waits for a claim with no client clocks and no max
   lifetime (the pool renews it, `ovas.pools`). Once claimed (`Mark.CLAIMED`) it is its
   claimant's, and its clocks start at the claim: the max lifetime counts from then, and the
   connect timeout from the later of readiness and the claim.

Clocks are in seconds, 0 turns one off; a profile may set its own (`CLOCK_ANNOTATIONS`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cached_property

from ovas.bounds import SECONDS, after
from ovas.models import Clocks, Reason, Route, Session, SessionRequest, SessionState

ACTIVE = "Session is active"
LOG_LINES = 5  # log lines a failure's message quotes
# ApplicationProfile annotations overriding the settings, in seconds (0 = off).
CLOCK_ANNOTATIONS = {
    "ovas/connect-timeout": "connect_timeout",
    "ovas/idle-timeout": "idle_timeout",
    "ovas/max-lifetime": "max_lifetime",
}
# Every ApplicationProfile annotation holding a duration, each checked against
# `ovas.bounds.SECONDS` when the catalog is read: the clocks, and the Kubernetes backend's
# pending limit (backends/kubernetes/profiles.py).
MAX_PENDING = "ovas/max-pending"
DURATION_ANNOTATIONS = (*CLOCK_ANNOTATIONS, MAX_PENDING)


class Stage(enum.StrEnum):
    """What the engine shows of a session's workload."""

    WAITING = "waiting"  # not running yet: pulling, scheduling, creating (`detail` says what)
    RUNNING = "running"  # the app's process runs; `probe_ok` says if its probe passes now
    EXITED = "exited"  # the app's process ended by itself (`exit_code`, `oom`)
    FAULT = "fault"  # the engine says it cannot run as asked (`fault`, `detail`)
    GONE = "gone"  # the workload is no more; only the record is left


class Mark(enum.StrEnum):
    """A moment the lifecycle asks a backend to remember, for every process and restart."""

    READY = "ready"  # the session was first seen ready
    CONNECTED = "connected"  # a client was first seen connected
    IDLE = "idle"  # the last client was seen gone; cleared when one connects again
    CLAIMED = "claimed"  # a warm pool's session was handed to a user (`Backend.claim`)


@dataclass(frozen=True)
class Outcome:
    """How a session ended: recorded once by the backend, final from then on."""

    state: SessionState  # FAILED or ENDED
    reason: Reason
    message: str
    ended_time: datetime


@dataclass(frozen=True)
class Record:
    """What a backend keeps of a session for as long as it exists (labels, annotations...)."""

    id: str
    app_id: str
    version: str
    profile: str
    username: str
    created_time: datetime
    deadline: datetime  # the start deadline
    clocks: Clocks = field(default_factory=Clocks)
    marks: Mapping[Mark, datetime] = field(default_factory=dict)
    outcome: Outcome | None = None
    pool: str = ""  # started for this warm pool; `username` is its claimant's once claimed
    # With `pool`: the digest of what it was started from (`ovas.pools.rendering`); empty
    # for a session recorded by an ovas that kept none.
    rendering: str = ""
    # Where its workload ran (a node's name), kept with the ready mark where the backend
    # tells it (`Backend.workload_node`): after the workload vanished, it says why.
    node: str = ""

    @classmethod
    def of(cls, request: SessionRequest) -> Record:
        """The record of a new session."""
        return cls(
            id=request.id,
            app_id=request.app.id,
            version=request.version.version,
            profile=request.profile.id,
            username=request.username,
            created_time=request.created_time,
            deadline=request.deadline,
            clocks=request.clocks,
            pool=request.pool,
            rendering=request.rendering,
        )

    # Derived once per record (records are frozen: a change makes a new one), since a
    # listing decides every session and reads these several times each.

    @cached_property
    def claimed_time(self) -> datetime | None:
        """When a warm pool's session was handed to its user; None for any other."""
        return self.marks.get(Mark.CLAIMED) if self.pool else None

    @cached_property
    def pooled(self) -> bool:
        """True for a warm pool's session nobody has claimed yet."""
        return bool(self.pool) and Mark.CLAIMED not in self.marks

    @cached_property
    def started_time(self) -> datetime:
        """When the session became its user's: its claim, or its creation."""
        return self.claimed_time or self.created_time

    @cached_property
    def expires_time(self) -> datetime | None:
        """When the max lifetime ends the session (counted from `started_time`); None for
        an unclaimed pooled session, or with no max lifetime."""
        return None if self.pooled else self.clocks.expires(self.started_time)

    def marked(self, mark: Mark, at: datetime | None) -> Record | None:
        """This record with `mark` set at `at` (None: forgotten), or None when that changes
        nothing (set already, or not set): what `Backend.mark` returns False for."""
        if (at is not None) == (mark in self.marks):
            return None
        marks = {k: v for k, v in self.marks.items() if k is not mark}
        if at is not None:
            marks[mark] = at
        return replace(self, marks=marks)


@dataclass(frozen=True)
class Observation:
    """What the engine shows of a session now. Backends fill what they can tell."""

    stage: Stage
    detail: str = ""  # the engine's words: pull progress, the scheduler's message, an error
    probe_ok: bool = False  # RUNNING: the readiness probe passes now
    exit_code: int | None = None  # EXITED
    oom: bool = False  # EXITED: killed for want of memory
    fault: Reason | None = None  # FAULT
    finished_time: datetime | None = None  # EXITED, FAULT: when the process ended, if known
    host: str | None = None  # where clients connect, once known
    routes: tuple[Route, ...] = ()
    connections: int | None = None  # clients on the signaling port; None: cannot tell
    # Where the signaling gateway reaches the session's signaling socket (host, TCP port),
    # from where ovas runs; None until known.
    signaling: tuple[str, int] | None = None
    logs: tuple[str, ...] = ()  # the app's last log lines, where the backend read them
    note: str = ""  # something the user should know of how it runs ("CPU limit capped...")


@dataclass(frozen=True)
class Observed:
    """A session as one backend call found it: its record and its engine's state."""

    record: Record
    seen: Observation


@dataclass(frozen=True)
class Decision:
    """What `decide` concluded: the session as clients see it, the marks the backend should
    write (a None value clears one), and the outcome to record if the session just ended."""

    session: Session
    marks: dict[Mark, datetime | None]
    outcome: Outcome | None


def clocks_for(settings: Clocks, annotations: Mapping[str, str]) -> Clocks:
    """`settings` with a profile's clock annotations applied. Raises ValueError naming an
    annotation that is not a whole number of seconds >= 0."""
    values = {}
    for annotation, name in CLOCK_ANNOTATIONS.items():
        if annotation in annotations:
            values[name] = parse_seconds(annotations[annotation], annotation)
    return replace(settings, **values)


def parse_seconds(text: object, where: str) -> int:
    """A whole number of seconds in `ovas.bounds.SECONDS` (0 to a year), from YAML or an
    annotation. Raises ValueError naming `where` and the largest allowed."""
    return int(SECONDS.read(text, where))


def message(reason: Reason, *, detail: str = "", clocks: Clocks | None = None, **facts) -> str:
    """The words a user reads for an end or a failure. `detail` is the engine's own."""
    clocks = clocks or Clocks()
    text = {
        Reason.APP_EXITED: "Ended: the Kit app quit by itself",
        Reason.CONNECT_TIMEOUT: (
            f"Ended: no client connected within {clocks.connect_timeout:.0f} seconds of the "
            "session being ready"
        ),
        Reason.IDLE_TIMEOUT: f"Ended: nobody was connected for {clocks.idle_timeout:.0f} seconds",
        Reason.MAX_LIFETIME: (
            f"Ended: the session reached its maximum lifetime of {clocks.max_lifetime:.0f} seconds"
        ),
        Reason.START_TIMEOUT: f"The session was not ready within {facts.get('seconds', 0):.0f} "
        "seconds",
        Reason.IMAGE_PULL: "The Kit image could not be pulled",
        Reason.EXITED: f"The Kit app exited with code {facts.get('code', '?')}",
        Reason.OOM: "The Kit app was killed for want of memory (out of memory)",
        Reason.EVICTED: "The session's pod was evicted",
        Reason.UNSCHEDULABLE: "No node can run the session",
        Reason.NO_GPU: "No GPU can be had for the session",
        Reason.CREATE_FAILED: "The Kit container could not be started",
        Reason.CRASH_LOOP: "The Kit app keeps crashing",
        Reason.INSTALL_FAILED: "The session's chart could not be installed",
        Reason.LOST: "The session's container or pod was removed outside ovas",
        Reason.PREEMPTED: "The session was preempted by a workload of higher priority",
        Reason.NODE_LOST: "The session's node was lost",
    }[reason]
    if reason is Reason.START_TIMEOUT and detail:
        return f"{text} ({detail})"
    return f"{text}: {detail}" if detail else text


def decide(observed: Observed, now: datetime) -> Decision:
    """The session `observed` describes, at `now`. Pure; see the module's rules."""
    record, seen = observed.record, observed.seen
    if record.outcome is not None:
        return Decision(_final(record, record.outcome), {}, None)
    marks: dict[Mark, datetime | None] = {}
    ready_at = record.marks.get(Mark.READY)
    if ready_at is None and seen.stage is Stage.RUNNING and seen.probe_ok:
        ready_at = marks[Mark.READY] = now
    ending = _ending(record, seen, ready_at, now)
    if ending is not None:
        return Decision(_final(record, ending), marks, ending)
    if ready_at is None:
        return Decision(_creating(record, seen, now), marks, None)
    return _ready(record, seen, ready_at, now, marks)


def _ending(
    record: Record, seen: Observation, ready_at: datetime | None, now: datetime
) -> Outcome | None:
    """The outcome the engine's state or a clock other than the client clocks brings."""
    failed, ended = SessionState.FAILED, SessionState.ENDED
    if seen.stage is Stage.FAULT:
        reason = seen.fault or Reason.CREATE_FAILED
        when = seen.finished_time or now
        return Outcome(failed, reason, message(reason, detail=seen.detail), when)
    if seen.stage is Stage.EXITED:
        when = seen.finished_time or now
        if seen.exit_code == 0 and ready_at is not None and not seen.oom:
            return Outcome(ended, Reason.APP_EXITED, message(Reason.APP_EXITED), when)
        reason = Reason.OOM if seen.oom else Reason.EXITED
        detail = _with_logs(seen.detail, seen.logs)
        if ready_at is None and seen.exit_code == 0:
            detail = "; ".join(p for p in ("before it was ready", detail) if p)
        return Outcome(failed, reason, message(reason, detail=detail, code=seen.exit_code), when)
    if seen.stage is Stage.GONE:
        return Outcome(failed, Reason.LOST, message(Reason.LOST, detail=seen.detail), now)
    expires = record.expires_time
    if expires is not None and now >= expires:
        text = message(Reason.MAX_LIFETIME, clocks=record.clocks)
        return Outcome(ended, Reason.MAX_LIFETIME, text, expires)
    if ready_at is None and now >= record.deadline:
        seconds = (record.deadline - record.created_time).total_seconds()
        text = message(Reason.START_TIMEOUT, detail=seen.detail, seconds=seconds)
        return Outcome(failed, Reason.START_TIMEOUT, text, record.deadline)
    return None


def _ready(
    record: Record,
    seen: Observation,
    ready_at: datetime,
    now: datetime,
    marks: dict[Mark, datetime | None],
) -> Decision:
    if record.pooled:
        session = _session(
            record, state=SessionState.READY, message=ACTIVE, host=seen.host, routes=seen.routes
        )
        return Decision(session, marks, None)
    clocks = record.clocks
    ready_at = max(ready_at, record.started_time)
    connected_at = record.marks.get(Mark.CONNECTED)
    idle_since = record.marks.get(Mark.IDLE)
    count = seen.connections
    outcome = None
    last = idle_since or connected_at
    if count is not None and count > 0:
        last = now
        if connected_at is None:
            marks[Mark.CONNECTED] = now
        if idle_since is not None:
            marks[Mark.IDLE] = None
    elif count == 0 and connected_at is None:
        deadline = after(ready_at, clocks.connect_timeout)
        if clocks.connect_timeout and deadline is not None and now >= deadline:
            text = message(Reason.CONNECT_TIMEOUT, clocks=clocks)
            outcome = Outcome(SessionState.ENDED, Reason.CONNECT_TIMEOUT, text, deadline)
    elif count == 0:
        if idle_since is None:
            idle_since = marks[Mark.IDLE] = now
        last = idle_since
        deadline = after(idle_since, clocks.idle_timeout)
        if clocks.idle_timeout and deadline is not None and now >= deadline:
            text = message(Reason.IDLE_TIMEOUT, clocks=clocks)
            outcome = Outcome(SessionState.ENDED, Reason.IDLE_TIMEOUT, text, deadline)
    if outcome is not None:
        ended = replace(_final(record, outcome), last_connected_time=last)
        return Decision(ended, marks, outcome)
    session = _session(
        record,
        state=SessionState.READY,
        message=f"{ACTIVE}. {seen.note}" if seen.note else ACTIVE,
        host=seen.host,
        routes=seen.routes,
        connected=None if count is None else count > 0,
        last_connected_time=last,
    )
    return Decision(session, marks, None)


def _creating(record: Record, seen: Observation, now: datetime) -> Session:
    """A session not ready yet: what it waits for, for how long, and until when."""
    elapsed = max(0, int((now - record.created_time).total_seconds()))
    doing = seen.detail or "Starting the Kit application"
    until = record.deadline.strftime("%H:%M:%S UTC")
    text = f"{doing} ({elapsed} s so far; it fails if not ready by {until})"
    if seen.note:
        text += f". {seen.note}"
    return _session(record, message=text)


def _final(record: Record, outcome: Outcome) -> Session:
    return _session(
        record,
        state=outcome.state,
        message=outcome.message,
        reason=outcome.reason,
        connected=False,
        last_connected_time=record.marks.get(Mark.IDLE) or record.marks.get(Mark.CONNECTED),
        ended_time=outcome.ended_time,
    )


def _session(record: Record, **fields) -> Session:
    return Session(
        id=record.id,
        app_id=record.app_id,
        version=record.version,
        profile=record.profile,
        username=record.username,
        created_time=record.started_time,
        expires_time=record.expires_time,
        pool=record.pool if record.pooled else "",
        **fields,
    )


def _with_logs(detail: str, logs: tuple[str, ...]) -> str:
    lines = [line.strip() for line in logs if line.strip()][-LOG_LINES:]
    if not lines:
        return detail
    quoted = "last log lines: " + " | ".join(lines)
    return f"{detail}; {quoted}" if detail else quoted
