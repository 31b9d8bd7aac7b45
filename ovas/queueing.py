"""Queued starts: a start that the shared capacity or the GPUs cannot admit now waits in line
instead of being refused, and starts as soon as what it needs frees.

The line is records in the backend's ledger (`ovas.ledger`), so every worker and replica
reads one order and none starts a queued session twice:

- `queue.<session id>`: one per queued start: what was asked (app, resolved version,
  profile, user, stage), when it joined the line (`queued`, the order: first in, first
  started, ties by id) and when its status was last asked for (`polled`). A start that
  leaves the line by starting has its record deleted; one given a warm pool's session keeps
  it, standing for that session (`served`); one dropped (abandoned, or refused by the
  catalog or the engine once its turn came) keeps it as its outcome for the retention,
  like any ended session.
- `queue-line`: who walks the line now (one process at a time, renewed while it walks,
  taken over once `HOLD` has passed without renewal), how often others asked for a walk
  meanwhile (`again`), and when the last `HISTORY` starts left the line and had joined it,
  which gives the wait a place in line is told to expect.

A drain walks the line in order. A start the GPUs refuse holds up only the starts of the same
profile and GPU need behind it; one the shared capacity refuses ends the walk. The line is
walked at once when a session ends or is stopped, and on every reaper pass. A queued session
holds no GPU, port or slot; the start timeout counts from the moment it leaves the line.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from ovas.errors import (
    BackendUnavailable,
    CapacityExceeded,
    OvasError,
    SessionNotFound,
    UserCapacityExceeded,
)
from ovas.events import QueueJoined, QueueLeft, SessionRemoved, SessionStarted
from ovas.ledger import Entry, Ledger, LedgerError, RecordCodec, UnknownFormat
from ovas.models import Reason, Session, SessionRequest, SessionState

log = logging.getLogger("ovas.queue")

PREFIX = "queue."  # one record per queued start: `queue.<session id>`
LINE = "queue-line"  # the drain's hold and the history of starts from the line
LISTED = "queue"  # the prefix listing both at once
START = RecordCodec("queued-start", current=1, readers={1: dict})
LINE_RECORD = RecordCodec("queue-line", current=1, readers={1: dict})
HOLD = timedelta(seconds=60)  # a drain's hold on the line, taken over once this old
HISTORY = 20  # starts from the line remembered for the wait's estimate
POLL_WRITE_EVERY = timedelta(seconds=30)  # at most, between two writes of `polled`
TICK = timedelta(microseconds=1)
QUEUED = "queued"
DROPPED = "dropped"
SERVED = "served"
WAITS_FOR = {"gpu": "a free GPU", "slot": "a free session slot"}


@dataclass(frozen=True)
class Waiting:
    """One queued start, as its ledger record holds it."""

    id: str
    app_id: str
    version: str
    profile: str
    username: str
    usd_stage_uri: str
    queued: datetime  # when it joined the line: its place
    polled: datetime  # when its status was last asked for
    gpus: int  # the GPUs its profile asks for
    waits: str  # what it waits for: "gpu" or "slot"
    # Or DROPPED: it left the line without starting; or SERVED: a warm pool's session
    # (`served`) was handed to it, which its id now stands for.
    state: str = QUEUED
    reason: Reason | None = None  # DROPPED: why
    served: str = ""  # SERVED: the id of the pool's session it was given
    message: str = ""
    ended: datetime | None = None
    entry: Entry | None = None

    @property
    def line(self) -> tuple[str, int]:
        """What it is ordered with: starts of one profile and GPU need start in order."""
        return self.profile, self.gpus

    def fields(self) -> dict[str, str]:
        data = {
            "id": self.id,
            "app": self.app_id,
            "version": self.version,
            "profile": self.profile,
            "username": self.username,
            "stage": self.usd_stage_uri,
            "queued": self.queued.isoformat(),
            "polled": self.polled.isoformat(),
            "gpus": str(self.gpus),
            "waits": self.waits,
            "state": self.state,
        }
        if self.state == SERVED:
            data["served"] = self.served
        if self.state == DROPPED:
            data.update(
                reason=self.reason.value if self.reason else "",
                message=self.message[:3000],
                ended=self.ended.isoformat() if self.ended else "",
            )
        return data

    @classmethod
    def read(cls, entry: Entry) -> Waiting:
        """Raises `UnknownFormat`, KeyError or ValueError for a record it cannot read."""
        data = START.decode(entry)
        dropped = data["state"] == DROPPED
        return cls(
            id=data["id"],
            app_id=data["app"],
            version=data["version"],
            profile=data["profile"],
            username=data["username"],
            usd_stage_uri=data.get("stage", ""),
            queued=datetime.fromisoformat(data["queued"]),
            polled=datetime.fromisoformat(data["polled"]),
            gpus=int(data.get("gpus", "0")),
            waits=data.get("waits", "slot"),
            state=data["state"],
            served=data.get("served", ""),
            reason=Reason(data["reason"]) if dropped else None,
            message=data.get("message", ""),
            ended=datetime.fromisoformat(data["ended"]) if dropped else None,
            entry=entry,
        )

    def session(self, position: int | None, estimate: str = "") -> Session:
        """As clients see it: QUEUED at `position` (1 = next), or ended as dropped."""
        common = {
            "id": self.id,
            "app_id": self.app_id,
            "version": self.version,
            "profile": self.profile,
            "username": self.username,
            "created_time": self.queued,
        }
        if self.state == DROPPED:
            state = SessionState.FAILED if self.reason and self.reason.fault else SessionState.ENDED
            return Session(
                **common,
                state=state,
                message=self.message,
                reason=self.reason,
                connected=False,
                ended_time=self.ended,
            )
        text = f"Waiting for {WAITS_FOR.get(self.waits, WAITS_FOR['slot'])}: "
        text += f"{ordinal(position or 1)} in line"
        if estimate:
            text += f" ({estimate})"
        return Session(**common, state=SessionState.QUEUED, message=text, queue_position=position)


def ordinal(n: int) -> str:
    """1 -> "1st", 2 -> "2nd", 11 -> "11th", 23 -> "23rd"."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def estimate(position: int, starts: list[tuple[datetime, datetime]]) -> str:
    """About how long the `position`-th in line waits, from the last starts that left the
    line (`starts`: (when it left, when it had joined), oldest first): the mean time each
    took to leave once it could be next (from the later of its joining and the start
    before it: time when nobody waited does not count), times `position`; "" with fewer
    than two starts to go on."""
    gaps = [
        (left - max(before, joined)).total_seconds()
        for (before, _), (left, joined) in itertools.pairwise(starts)
        if left > max(before, joined)
    ]
    if not gaps:
        return ""
    seconds = position * sum(gaps) / len(gaps)
    if seconds < 90:
        return "about a minute"
    minutes = round(seconds / 60)
    if minutes < 120:
        return f"about {minutes} minutes"
    return f"about {round(minutes / 60)} hours"


@dataclass
class Line:
    """The line as one ledger listing read it: the starts (queued and dropped), and the
    `queue-line` record (None when there is none yet)."""

    starts: list[Waiting]
    hold: Entry | None

    @property
    def queued(self) -> list[Waiting]:
        """The starts waiting, first in line first."""
        waiting = [w for w in self.starts if w.state == QUEUED]
        return sorted(waiting, key=lambda w: (w.queued, w.id))

    def position(self, session_id: str) -> int | None:
        """1 for the next in line; None when `session_id` is not waiting."""
        for place, waiting in enumerate(self.queued, 1):
            if waiting.id == session_id:
                return place
        return None

    def history(self) -> list[tuple[datetime, datetime]]:
        """The last starts that left the line, oldest first: (when it left, when it had
        joined)."""
        if self.hold is None:
            return []
        try:
            return parse_history(LINE_RECORD.decode(self.hold).get("starts", ""))
        except (UnknownFormat, ValueError):
            return []

    def session(self, waiting: Waiting) -> Session:
        position = self.position(waiting.id)
        return waiting.session(position, estimate(position or 1, self.history()))


def parse_history(text: str) -> list[tuple[datetime, datetime]]:
    """`left/joined,left/joined...` (ISO 8601 times) as pairs. Raises ValueError."""
    pairs = []
    for part in filter(None, text.split(",")):
        left, _, joined = part.partition("/")
        pairs.append((datetime.fromisoformat(left), datetime.fromisoformat(joined or left)))
    return pairs


def format_history(pairs: list[tuple[datetime, datetime]]) -> str:
    return ",".join(f"{left.isoformat()}/{joined.isoformat()}" for left, joined in pairs)


def read_line(ledger: Ledger) -> Line:
    """The line, from one ledger listing. Records of a format this release cannot read are
    left alone (and logged)."""
    starts, hold = [], None
    for entry in ledger.list(LISTED):
        if entry.name == LINE:
            hold = entry
        elif entry.name.startswith(PREFIX):
            try:
                starts.append(Waiting.read(entry))
            except (UnknownFormat, KeyError, ValueError) as exc:
                log.warning("leaving the queued start %s alone: %s", entry.name, exc)
    return Line(starts, hold)


@dataclass
class Hold:
    """A drain's hold on the line: its `token` in the line record's `holder`, the entry
    as last written, when it was taken or renewed, and the record's `again` count then (a
    process that found the line held raises it, asking the holder to walk once more)."""

    token: str
    entry: Entry
    taken: datetime
    again: str


class QueueTending:
    """Queued starts, for `SessionService`: uses its `backend`, `events`, `now`,
    `queue_size`, `abandon_timeout`, `retention`, `user_capacity`, `build_request`,
    `_start_on_demand`, `_from_pool` and `_settle`."""

    queue_size: int
    abandon_timeout: timedelta

    @property
    def queueing(self) -> bool:
        """True when starts wait in line (`OVAS_QUEUE_SIZE` > 0)."""
        return self.queue_size > 0

    def _line(self) -> Line:
        return read_line(self.backend.ledger)

    def _join(self, request: SessionRequest, line: Line, refused: CapacityExceeded | None):
        """Put `request` in line (after those waiting already), then start what can start
        (`drain`). Returns the session as it is then: QUEUED, or started. Raises `refused`
        (or a `CapacityExceeded` of its own) when the line is full, `UserCapacityExceeded`
        when the user's live and queued sessions reach `user_capacity`."""
        queued = line.queued
        if len(queued) >= self.queue_size:
            full = f"All {self.queue_size} places in line for a session are taken"
            if refused is None:
                raise CapacityExceeded(f"{full}; try again later")
            raise CapacityExceeded(
                f"{full} ({refused.message})",
                retry_after=refused.retry_after,
                resource=refused.resource,
            )
        self._admit_user(request, queued)
        # After everyone in line, even on a clock that has not moved since they joined.
        now = max([self.now(), *(w.queued + TICK for w in line.starts)])
        waiting = Waiting(
            id=request.id,
            app_id=request.app.id,
            version=request.version.version,
            profile=request.profile.id,
            username=request.username,
            usd_stage_uri=request.usd_stage_uri or "",
            queued=now,
            polled=now,
            gpus=request.kit.gpus,
            waits=refused.resource if refused is not None else self._waits_for(request, line),
        )
        try:
            self.backend.ledger.create(f"{PREFIX}{request.id}", START.encode(waiting.fields()))
        except LedgerError as exc:  # a stage URI too long for a record
            raise CapacityExceeded(
                f"{refused.message if refused else 'No capacity'}; and this start cannot wait "
                f"in line: {exc}"
            ) from None
        log.info(
            "session %s of %s waits in line for %s", request.id, request.username, waiting.waits
        )
        self.events.emit(QueueJoined(request.id, request.profile.id))
        self.drain()
        return self._queued_or_started(request.id)

    def _waits_for(self, request: SessionRequest, line: Line) -> str:
        same = [w for w in line.queued if w.line == (request.profile.id, request.kit.gpus)]
        return same[-1].waits if same else "slot"

    def _admit_user(self, request: SessionRequest, queued: list[Waiting]) -> None:
        """The per-user cap counts a user's queued starts with their live sessions."""
        if not self.user_capacity or not request.username:
            return
        waiting = sum(1 for w in queued if w.username == request.username)
        live = sum(
            1
            for r in self.backend.records()
            if r.username == request.username and r.outcome is None and not r.pooled
        )
        if live + waiting >= self.user_capacity:
            raise UserCapacityExceeded(
                f"User '{request.username}' already has {live} sessions and {waiting} "
                "waiting in line, the most allowed; stop one and try again"
            )

    def _queued_or_started(self, session_id: str) -> Session:
        try:
            return self._settle(self.backend.observe(session_id))
        except SessionNotFound:
            return self.queued_session(session_id, lambda owner: None)

    def queued_session(self, session_id: str, owner_check: Callable[[str], None]) -> Session:
        """A session that is not (or not yet) in the backend: waiting in line, dropped
        from it, or given a warm pool's session (which is answered), as its record says;
        asking counts as polling it (it is not abandoned). `owner_check(username)` raises
        for a caller who may not see it. Raises `SessionNotFound`."""
        line = self._line()
        found = next((w for w in line.starts if w.id == session_id), None)
        if found is None:
            # It may have left the line for the backend since the backend was asked.
            observed = self.backend.observe(session_id)
            owner_check(observed.record.username)
            return self._settle(observed)
        owner_check(found.username)
        if found.state == SERVED:
            return self._settle(self.backend.observe(found.served))
        if found.state == QUEUED:
            self._polled(found)
        return line.session(found)

    def queued_sessions(self) -> list[Session]:
        """Every start waiting in line or dropped from it, as clients see them (one ledger
        call); none when the ledger cannot be read."""
        try:
            line = self._line()
        except (OvasError, LedgerError) as exc:
            log.warning("the queued starts cannot be read: %s", exc)
            return []
        return [line.session(w) for w in line.starts if w.state != SERVED]

    def _polled(self, waiting: Waiting) -> None:
        """Remember that someone asked for `waiting`'s status, at most every
        `POLL_WRITE_EVERY` (a fraction of the abandon timeout): a lost race is no matter,
        the other writer wrote the same."""
        now = self.now()
        every = min(POLL_WRITE_EVERY, self.abandon_timeout / 6)
        if waiting.entry is None or now - waiting.polled < every:
            return
        fresh = replace(waiting, polled=now, entry=None)
        try:
            self.backend.ledger.replace(waiting.entry, START.encode(fresh.fields()))
        except (OvasError, LedgerError) as exc:
            log.warning("session %s: its poll cannot be recorded: %s", waiting.id, exc)

    def leave_line(self, session_id: str) -> Waiting | None:
        """Take `session_id` out of the line (DELETE), whatever its state, and stop the
        warm pool's session it was given, if any: the record as it was when deleted (by
        compare-and-swap, so a drain changing it meanwhile is seen), or None when there is
        none (or one of a format this release cannot read, left alone)."""
        ledger = self.backend.ledger
        name = f"{PREFIX}{session_id}"
        while (entry := ledger.get(name)) is not None:
            try:
                left = Waiting.read(entry)
            except (UnknownFormat, KeyError, ValueError) as exc:
                log.warning("leaving the queued start %s alone: %s", name, exc)
                return None
            if not ledger.delete(entry):
                continue  # it changed (a poll, a drain): read it again
            if left.served:
                with contextlib.suppress(SessionNotFound):
                    self.backend.stop(left.served)
            return left
        return None

    # Draining

    def drain(self) -> list[str]:
        """Start what can start now, first in line first, in one process at a time (others
        ask the holder to walk the line once more); drop starts nobody has polled for the
        abandon timeout, and remove dropped ones past their retention. Returns the ids
        started. Never raises: what it cannot do now, a later drain does (an error gives
        the line back at once). One ledger call when the line holds no record."""
        return self._drain()[0]

    def _drain(self) -> tuple[list[str], bool]:
        """`drain`, and whether starts still wait for room (a slot or GPUs) after it, as
        far as it saw: a start waiting only for its user's cap does not count."""
        started: list[str] = []
        waiting = False
        try:
            line = self._line()
            if not line.starts:
                return started, False
            waiting = bool(line.queued)
            hold = self._hold(line.hold, uuid.uuid4().hex)
            seen: Line | None = line  # read just before the hold: good for the first walk
            while hold is not None:
                try:
                    times, waiting = self._walk(started, seen or self._line(), hold)
                except BaseException:
                    self._release(hold, [], final=True)
                    raise
                seen = None
                hold = self._release(hold, times)
        except (OvasError, LedgerError) as exc:
            log.warning("the line of queued starts cannot be walked now: %s", exc)
        except Exception:
            log.exception("the line of queued starts cannot be walked now")
        return started, waiting

    def _hold(self, entry: Entry | None, token: str) -> Hold | None:
        """Take the line for this drain, or None when another process holds it (which
        this asks to walk it once more) or the ledger kept changing."""
        ledger = self.backend.ledger
        for _ in range(8):
            now = self.now()
            if entry is None:
                fields = _line_fields(token, now, "0", "")
                made = ledger.create(LINE, LINE_RECORD.encode(fields))
                if made is not None:
                    return Hold(token, made, now, "0")
                entry = ledger.get(LINE)
                continue
            try:
                data = LINE_RECORD.decode(entry)
            except UnknownFormat as exc:
                # A newer release's line: left alone, and this one does not drain meanwhile.
                log.warning("leaving the line to a newer release: %s", exc)
                return None
            again = data.get("again", "0")
            if data.get("holder") and now < _until(data):
                fields = {**data, "again": str(int(again or 0) + 1)}
                if ledger.replace(entry, LINE_RECORD.encode(fields)) is not None:
                    return None
            else:
                fields = _line_fields(token, now, again, data.get("starts", ""))
                taken = ledger.replace(entry, LINE_RECORD.encode(fields))
                if taken is not None:
                    return Hold(token, taken, now, again)
            entry = ledger.get(LINE)
        return None

    def _keep(self, hold: Hold) -> bool:
        """Renew the hold when a third of `HOLD` has passed since it was taken or renewed,
        so a long walk is not taken over. False when it was taken over: stop walking."""
        now = self.now()
        if now - hold.taken < HOLD / 3:
            return True
        ledger = self.backend.ledger
        entry: Entry | None = hold.entry
        while entry is not None:
            data = LINE_RECORD.decode(entry)
            if data.get("holder") != hold.token:
                return False
            fields = {**data, "until": (now + HOLD).isoformat()}
            renewed = ledger.replace(entry, LINE_RECORD.encode(fields))
            if renewed is not None:
                hold.entry, hold.taken = renewed, now
                return True
            entry = ledger.get(LINE)
        return False

    def _release(self, hold: Hold, times: list[tuple[datetime, datetime]], *, final=False):
        """Give the line back, adding `times` ((left, joined) of each start) to its
        history: None when given back (or taken over meanwhile); the hold, renewed, when
        another process asked for a walk meanwhile (unless `final`), to walk once more."""
        ledger = self.backend.ledger
        entry: Entry | None = hold.entry
        while entry is not None:
            try:
                data = LINE_RECORD.decode(entry)
                history = parse_history(data.get("starts", ""))
            except UnknownFormat:
                return None  # a newer release took the line over
            except ValueError:
                history = []
            if data.get("holder") != hold.token:
                return None  # taken over: the new holder walks it
            text = format_history([*history, *times][-HISTORY:])
            again = data.get("again", "0")
            if again == hold.again or final:
                fields = {**data, "holder": "", "until": "", "starts": text}
                if ledger.replace(entry, LINE_RECORD.encode(fields)) is not None:
                    return None
            else:
                now = self.now()
                fields = _line_fields(hold.token, now, again, text)
                renewed = ledger.replace(entry, LINE_RECORD.encode(fields))
                if renewed is not None:
                    return Hold(hold.token, renewed, now, again)
            entry = ledger.get(LINE)
        return None

    def _walk(
        self, started: list[str], line: Line, hold: Hold
    ) -> tuple[list[tuple[datetime, datetime]], bool]:
        """One walk of `line`: (left, joined) of each start that left it, and whether any
        still waits for room. A line read before the hold was taken is good enough: a start
        that left it meanwhile is in the backend (skipped below), and a record that changed
        meanwhile is written only if unchanged."""
        if not line.starts:
            return [], False
        now = self.now()
        existing = {r.id for r in self.backend.records()}
        times: list[tuple[datetime, datetime]] = []
        blocked: set[tuple[str, int]] = set()
        full = left = False
        for waiting in line.starts:
            if waiting.state == DROPPED:
                self._forget_dropped(waiting, now)
            elif waiting.state == SERVED and waiting.served not in existing:
                self.backend.ledger.delete(waiting.entry)  # what it stood for is gone
        for waiting in line.queued:
            if waiting.id in existing:
                # It started, and the process that started it stopped before it left the line.
                self.backend.ledger.delete(waiting.entry)
                continue
            if now - waiting.polled >= self.abandon_timeout:
                seconds = self.abandon_timeout.total_seconds()
                self._drop(
                    waiting,
                    Reason.ABANDONED,
                    f"Ended: nobody asked for the session's status for {seconds:.0f} seconds "
                    "while it waited in line",
                    now,
                )
                continue
            if full or waiting.line in blocked:
                left = True
                continue
            if not self._keep(hold):
                return times, True  # taken over: the new holder walks on
            try:
                outcome = self._start_waiting(waiting, now)
            except BackendUnavailable:
                raise
            except (OvasError, LedgerError, UnknownFormat, KeyError, ValueError) as exc:
                log.warning("the queued start %s cannot start now: %s", waiting.id, exc)
                left = True
                continue
            if outcome == "started":
                started.append(waiting.id)
                times.append((now, waiting.queued))
            elif outcome in ("gpu", "full"):
                left = True
                full = full or outcome == "full"
                if outcome == "gpu":
                    blocked.add(waiting.line)
        return times, left

    def _start_waiting(self, waiting: Waiting, now: datetime) -> str:
        """Start one queued session: "started"; "gpu" or "full" (it waits on); "user" (its
        user is at their cap: it waits on, holding up nobody); or "dropped"."""
        try:
            request = self.build_request(
                waiting.app_id,
                waiting.profile,
                waiting.version,
                username=waiting.username,
                usd_stage_uri=waiting.usd_stage_uri or None,
                now=now,
                session_id=waiting.id,
            )
        except OvasError as exc:
            self._drop(waiting, Reason.CREATE_FAILED, _refused(exc), now)
            return "dropped"
        if self._serve_from_pool(waiting, request, now):
            return "started"
        try:
            observed = self._start_on_demand(request)
        except UserCapacityExceeded:
            return "user"
        except CapacityExceeded as exc:
            return "gpu" if exc.resource == "gpu" else "full"
        except BackendUnavailable:
            raise
        except OvasError as exc:
            self._drop(waiting, Reason.CREATE_FAILED, _refused(exc), now)
            return "dropped"
        if not self._mark_left(waiting, {}):
            # Stopped (DELETE), or dropped, while it was being started: it must not run.
            log.info("session %s left the line as it started; removing it", waiting.id)
            with contextlib.suppress(SessionNotFound):
                self.backend.stop(waiting.id)
            return "dropped"
        session = self._settle(observed, now=now, drain=False)
        wait = max(0.0, (now - waiting.queued).total_seconds())
        log.info("session %s left the line after %.1f s and starts", waiting.id, wait)
        self.events.emit(QueueLeft(waiting.id, "started", wait, waiting.profile))
        self.events.emit(SessionStarted(session))
        return "started"

    def _mark_left(self, waiting: Waiting, change: dict) -> bool:
        """Record that `waiting` left the line: with `change` (fields of `Waiting`) the
        record is replaced by that, else deleted; by compare-and-swap, reading it again
        when a poll changed it meanwhile. False when it is no longer QUEUED (stopped,
        dropped or served by another process): what was started for it must not run."""
        ledger = self.backend.ledger
        entry: Entry | None = waiting.entry
        while entry is not None:
            current = Waiting.read(entry)
            if current.state != QUEUED:
                return False
            if change:
                updated = replace(current, entry=None, **change)
                if ledger.replace(entry, START.encode(updated.fields())) is not None:
                    return True
            elif ledger.delete(entry):
                return True
            entry = ledger.get(entry.name)
        return False

    def _serve_from_pool(self, waiting: Waiting, request: SessionRequest, now: datetime) -> bool:
        """Hand `waiting` a ready session of a warm pool it matches, if there is one: its
        record then stands for that session (GET and DELETE of its id reach it)."""
        try:
            session = self._from_pool(request, quiet=True)
        except UserCapacityExceeded:
            return False  # its on-demand start says "user" too
        if session is None:
            return False
        if not self._mark_left(waiting, {"state": SERVED, "served": session.id}):
            log.info("session %s left the line as a pool's session was claimed for it", waiting.id)
            with contextlib.suppress(SessionNotFound):
                self.backend.stop(session.id)
            return False
        wait = max(0.0, (now - waiting.queued).total_seconds())
        log.info(
            "session %s left the line after %.1f s for warm pool session %s",
            waiting.id,
            wait,
            session.id,
        )
        self.events.emit(QueueLeft(waiting.id, "started", wait, waiting.profile))
        self.events.emit(SessionStarted(session))
        return True

    def _drop(self, waiting: Waiting, reason: Reason, message: str, now: datetime) -> None:
        dropped = replace(
            waiting, state=DROPPED, reason=reason, message=message, ended=now, entry=None
        )
        if self.backend.ledger.replace(waiting.entry, START.encode(dropped.fields())) is None:
            return  # polled or stopped meanwhile: the next walk decides again
        log.info("session %s left the line: %s", waiting.id, message)
        wait = max(0.0, (now - waiting.queued).total_seconds())
        self.events.emit(QueueLeft(waiting.id, reason.value, wait, waiting.profile))

    def _forget_dropped(self, waiting: Waiting, now: datetime) -> None:
        expired = waiting.ended is not None and now >= waiting.ended + self.retention
        if expired and self.backend.ledger.delete(waiting.entry):
            log.info("removed session %s, dropped from the line", waiting.id)
            self.events.emit(SessionRemoved(waiting.id))


def _refused(exc: OvasError) -> str:
    return f"The session could not start when its turn in line came: {exc.message}"


def _line_fields(token: str, now: datetime, again: str, starts: str) -> dict[str, str]:
    return {"holder": token, "until": (now + HOLD).isoformat(), "again": again, "starts": starts}


def _until(data: dict[str, str]) -> datetime:
    try:
        return datetime.fromisoformat(data.get("until", ""))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
