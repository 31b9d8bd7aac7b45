"""The Streaming Session service's rules, for every backend: request building, starts and
capacity, session listing, the clocks written through, the reaper's pass. Views call these;
these call the `SessionBackend`. The catalog's rules are `ovas.catalogs`', the stage paths'
`ovas.stages`', the warm pools' `ovas.pool_tending`'."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from ovas import pools
from ovas.auth import ADMIN, Identity
from ovas.backend import SessionBackend, utcnow
from ovas.catalogs import LATEST, CatalogService, profile_supports
from ovas.errors import (
    CapacityExceeded,
    Conflict,
    Forbidden,
    IdempotencyConflict,
    InvalidInput,
    NotFound,
    OvasError,
    ProfileNotFound,
    SessionNotFound,
    UserCapacityExceeded,
)
from ovas.events import (
    Events,
    QueueLeft,
    SessionEnded,
    SessionReady,
    SessionRemoved,
    SessionStarted,
    SessionStopped,
    StartRefused,
    StopRefused,
)
from ovas.gateway.rules import GatewayRules
from ovas.idempotency import EXPIRE_EVERY, IdempotencyKeys, Known, request_digest
from ovas.kitspec import parse_kit, render_values
from ovas.ledger import LedgerError, RecordCodec
from ovas.lifecycle import Decision, Mark, Observed, clocks_for, decide
from ovas.models import Clocks, Session, SessionQuery, SessionRequest, SessionState, WarmPool
from ovas.names import is_session_id, new_session_id
from ovas.pool_tending import WarmPoolTending
from ovas.queueing import QUEUED, QueueTending
from ovas.stages import check_stage_uri

# The Application & Profile service's rules are `ovas.catalogs`'; views reach both services
# from here.
__all__ = ["LATEST", "CatalogService", "Page", "SessionService"]

log = logging.getLogger("ovas.sessions")
LOG_TAIL = 100  # log lines given when not told how many
# A session's removal is recorded in the ledger while a process removes it (`_remove_once`).
REMOVAL_PREFIX = "removal."
REMOVAL = RecordCodec("removal", current=1, readers={1: dict})
REMOVAL_GRACE = timedelta(seconds=120)
FREE_EVERY = timedelta(seconds=5)  # a refused start frees what ended sessions hold, this often
MAX_LOG_TAIL = 10000
# A start's key names a session not made yet for this long before it counts as gone.
REPLAY_GRACE = timedelta(seconds=30)
REPLAY_POLL = 0.1  # seconds between two looks for a session a concurrent start is making
# Errors a start is refused with before anything of it is made: nothing to undo.
REFUSALS = (CapacityExceeded, InvalidInput, NotFound, Forbidden, Conflict)
_READ = object()  # `_settle` reads the clients connected through the gateway itself


@dataclass
class Page:
    offset: int
    limit: int
    items: list

    @property
    def count(self) -> int:
        return len(self.items)


class SessionService(WarmPoolTending, QueueTending):
    """The Streaming Session service's rules, over one backend: requests are checked against
    the catalog before the backend is asked; what the backend observes is decided by
    `ovas.lifecycle`, and what that decides is written back through the backend (marks,
    outcomes) and told to `events` (metrics, audit, logs listen there).

    `now` is the clock (an aware UTC datetime); tests inject one and move it. `gateway`
    says how the signaling gateway changes what is answered (`ovas.gateway.rules`).
    `queue_size`: most starts waiting in line for capacity (`ovas.queueing`; 0: a start
    capacity refuses is refused); `abandon_timeout`: seconds a queued start may go unpolled."""

    # Seconds a start replaying an Idempotency-Key waits for a concurrent start's session.
    replay_wait: float = 3.0

    def __init__(
        self,
        backend: SessionBackend,
        catalogs: CatalogService,
        *,
        capacity: int = 0,
        user_capacity: int = 0,
        start_timeout: float = 900,
        stage_roots: tuple[str, ...] = (),
        clocks: Clocks | None = None,
        retention: float = 3600,
        pool_max_age: float = 3600,
        now: Callable[[], datetime] = utcnow,
        events: Events | None = None,
        gateway: GatewayRules | None = None,
        queue_size: int = 0,
        abandon_timeout: float = 180,
        idempotency_ttl: float = 86400,
    ):
        self.idempotency_ttl = timedelta(seconds=idempotency_ttl)
        self._keys_expired_at: datetime | None = None
        self.queue_size = queue_size
        self.abandon_timeout = timedelta(seconds=abandon_timeout)
        self.gateway = gateway or GatewayRules()
        self.stage_roots = tuple(stage_roots)
        self.backend = backend
        self.catalogs = catalogs
        self.capacity = capacity
        self.user_capacity = user_capacity
        self.start_timeout = start_timeout
        self.clocks = clocks or Clocks()
        self.retention = timedelta(seconds=retention)
        self.pool_max_age = pool_max_age
        self.now = now
        self.events = events or Events()
        self._freed_at: datetime | None = None  # see `_freed_room`
        # What was logged once: pool names, and NO_POOLS (no pool name holds a colon).
        self._pool_warned: set[str] = set()

    def build_request(
        self,
        app_id: str,
        profile_id: str,
        version: str | None = None,
        *,
        username: str = "",
        usd_stage_uri: str | None = None,
        now: datetime | None = None,
        pool: WarmPool | None = None,
        session_id: str | None = None,
    ) -> SessionRequest:
        """Check the request against the catalog (404 for anything unknown or unsupported)
        and render what the backend needs. Asks no backend. With `pool`, the start of one
        of that warm pool's sessions, for nobody. `session_id`: the id it has already (a
        queued start's), else a new one."""
        if usd_stage_uri:
            check_stage_uri(usd_stage_uri, self.stage_roots)
        app = self.catalogs.get_application(app_id)
        resolved = self.catalogs.resolve_version(app_id, version)
        profile = self.catalogs.catalog.profile(profile_id)
        if not profile_supports(profile, app.id, resolved.version):
            raise ProfileNotFound(
                profile_id,
                f"Profile '{profile_id}' does not support {app.id} {resolved.version}",
            )
        session_id = session_id or new_session_id()
        values = render_values(profile, app, resolved, session_id, usd_stage_uri)
        try:
            kit = parse_kit(values)
            clocks = clocks_for(self.clocks, profile.annotations)
            rendering = pools.rendering(app, resolved, profile) if pool else ""
        except ValueError as exc:
            raise InvalidInput(
                f"Profile '{profile_id}' cannot run {app.id} {resolved.version}: {exc}",
                field="profile",
            ) from None
        created = now or self.now()
        return SessionRequest(
            id=session_id,
            app=app,
            version=resolved,
            profile=profile,
            username=username,
            created_time=created,
            deadline=created + timedelta(seconds=self.start_timeout),
            values=values,
            kit=kit,
            usd_stage_uri=usd_stage_uri or None,
            capacity=self.capacity,
            user_capacity=0 if pool else self.user_capacity,
            clocks=clocks,
            pool=pool.name if pool else "",
            pool_size=pool.size if pool else 0,
            rendering=rendering,
        )

    def start(
        self,
        app_id: str,
        profile_id: str,
        version: str | None = None,
        *,
        caller: Identity | None = None,
        idempotency_key: str | None = None,
        **kw,
    ) -> Session:
        """Start a session; returns it as first decided: READY when a warm pool's session
        was taken (`ovas.pools`), else normally CREATING, or QUEUED when the capacity or
        the GPUs cannot admit it now and the line has room (`ovas.queueing`); with its
        stream token when `caller` may have it (`stream_tokens`). When capacity is short,
        a pool's unclaimed session makes room for it. Raises what `build_request` and
        `SessionBackend.start` raise; every start, admitted, queued or refused, is told to
        `events`.

        With `idempotency_key` (`ovas.idempotency`), the same user and key, while the key
        is remembered, answer the session the first such start made, as it is now, and
        start nothing; the same key for another request (app, resolved version, profile,
        stage) is an `InvalidInput` (422); a key whose start is still being made elsewhere
        is an `IdempotencyConflict` (409, retry after a second), as is one whose session is
        gone (stopped, or removed after its retention).

        A start that fails other than by a refusal (the engine unreachable halfway) is
        undone: whatever it made is removed, and its key forgotten."""
        username = kw.get("username", "")
        keys = self.idempotency if idempotency_key else None
        try:
            request = self.build_request(app_id, profile_id, version, **kw)
            if keys is not None:
                digest = request_digest(
                    {
                        "app": request.app.id,
                        "version": request.version.version,
                        "profile": request.profile.id,
                        "usd_stage_uri": request.usd_stage_uri or "",
                    }
                )
                known = keys.find(username, idempotency_key, digest)
                known = known or keys.remember(username, idempotency_key, digest, request.id)
                if known is not None:
                    return self._replay(known, caller)
            try:
                session = self._admit(request)
            except BaseException as exc:
                if not isinstance(exc, REFUSALS):
                    self._undo(request.id)
                if keys is not None:
                    keys.forget(username, idempotency_key, request.id)
                raise
        except OvasError as exc:
            self.events.emit(StartRefused(exc))
            raise
        self.stream_tokens([session], caller)
        return session

    @property
    def idempotency(self) -> IdempotencyKeys:
        """The `Idempotency-Key`s of starts, in the backend's ledger."""
        return IdempotencyKeys(self.backend.ledger, self.idempotency_ttl, self.now)

    def _replay(self, known: Known, caller: Identity | None) -> Session:
        """The session an earlier start with the same key made, as it is now; while that
        start is still being made (a double click), waits for it up to `replay_wait`
        seconds. Raises `IdempotencyConflict` when it is still being made then (for up to
        `REPLAY_GRACE` after the key was taken), or when its session is gone."""
        waited_until = time.monotonic() + self.replay_wait
        while True:
            try:
                return self.get(known.session_id, caller)
            except SessionNotFound:
                if self.now() - known.made >= REPLAY_GRACE:
                    break
                if time.monotonic() >= waited_until:
                    raise IdempotencyConflict(
                        "A start with this Idempotency-Key is still being made; try again "
                        "in a second",
                        retry_after=1,
                    ) from None
                time.sleep(REPLAY_POLL)
        raise IdempotencyConflict(
            f"The session this Idempotency-Key started ({known.session_id}) is gone: "
            "stopped, or removed after its retention; use a new key to start another"
        )

    def _undo(self, session_id: str) -> None:
        """Remove what a start that failed halfway made, as far as the engine lets us now
        (what it cannot remove, the clocks and the clean-up end later)."""
        try:
            self._stop_or_leave(session_id)
        except SessionNotFound:
            pass
        except (OvasError, LedgerError) as exc:
            log.info(
                "session %s: whatever its failed start made stays for now: %s",
                session_id,
                exc.message if isinstance(exc, OvasError) else exc,
            )

    def _admit(self, request: SessionRequest) -> Session:
        """Start `request`: from a warm pool, on demand, or in line. While others wait in
        line (and it has room), it joins them: first in, first started, pools included.
        When the line is full, a start that fits now still starts."""
        line = self._line() if self.queueing else None
        if line is not None and line.queued and len(line.queued) < self.queue_size:
            return self._join(request, line, None)
        session = self._from_pool(request)
        if session is not None:
            self.events.emit(SessionStarted(session))
            return session
        try:
            session = self._settle(self._start_on_demand(request))
        except UserCapacityExceeded:
            raise
        except CapacityExceeded as exc:
            if line is None:
                raise
            return self._join(request, self._line(), exc)
        self.events.emit(SessionStarted(session))
        return session

    def _start_on_demand(self, request: SessionRequest) -> Observed:
        """Start `request`; when capacity refuses it, first free what sessions that ended
        since anyone looked still hold (their outcome unrecorded: a container that exited),
        and what the backend's clean-up removes (claims of a workload removed by hand),
        then, for the shared capacity, a warm pool's place."""
        try:
            return self.backend.start(request)
        except CapacityExceeded as exc:
            refused = exc
        if self._freed_room():
            try:
                return self.backend.start(request)
            except CapacityExceeded as exc:
                refused = exc
        if isinstance(refused, UserCapacityExceeded) or not self._shrink_pools():
            raise refused
        return self.backend.start(request)

    def _freed_room(self) -> bool:
        """Free what ended sessions and removed workloads still hold (`_settle_ended`, then
        the backend's clean-up), at most once every `FREE_EVERY` in this process: it reads
        every session, which refused starts in a burst must not repeat. True if it freed
        anything."""
        now = self.now()
        if self._freed_at is not None and now - self._freed_at < FREE_EVERY:
            return False
        self._freed_at = now
        return self._settle_ended() or bool(self.backend.collect(now))

    def _settle_ended(self) -> bool:
        """Decide every session now and record the outcome of those that ended, which frees
        what they hold (slots, GPUs, ports). True if any did."""
        now, ended = self.now(), False
        observations = self.backend.observe_all()
        clients = self._clients(observations, now)
        for observed in observations:
            if observed.record.outcome is not None:
                continue
            if self._settle(observed, now=now, clients=clients, drain=False).state.final:
                ended = True
        return ended

    def get(self, session_id: str, caller: Identity | None = None) -> Session:
        """The session in whatever state it is. Raises `SessionNotFound`, also for another
        user's session when `caller` is not an admin (indistinguishable from a missing one)."""
        if not is_session_id(session_id):
            raise SessionNotFound(session_id[:64])
        try:
            observed = self.backend.observe(session_id)
        except SessionNotFound:
            session = self.queued_session(
                session_id, lambda owner: _check_owner(owner, caller, session_id)
            )
        else:
            _check_owner(observed.record.username, caller, session_id)
            session = self._settle(observed)
        self.stream_tokens([session], caller)
        return session

    def signaling(self, session_id: str) -> tuple[Session, tuple[str, int] | None]:
        """For the signaling gateway: the session as decided now (its state and owner),
        and where its signaling socket is reached, (host, TCP port), once it is ready (None
        before, or when the backend cannot say): `Observation.signaling`, else the address
        clients would reach without the gateway (the route key and the signaling route's
        port), so a backend that fills only `host` and `routes` works too. Raises
        `SessionNotFound`."""
        if not is_session_id(session_id):
            raise SessionNotFound(session_id[:64])
        observed = self.backend.observe(session_id)
        session = self._settle(observed)
        if not session.ready:
            return session, None
        seen = observed.seen
        if seen.signaling is not None:
            return session, seen.signaling
        route = next((r for r in seen.routes if r.description == "signaling"), None)
        return session, (seen.host, route.source_port) if seen.host and route else None

    def list(
        self,
        *,
        limit: int = 50,
        offset: int = 0,
        sort_by: str = "created_time",
        order: str = "DESC",
        username: str | None = None,
        pooled: bool = False,
        state: SessionState | str | None = None,
        app_id: str | None = None,
        profile: str | None = None,
        caller: Identity | None = None,
    ) -> Page:
        """A page of sessions; a non-admin `caller` sees only their own. Warm pools'
        unclaimed sessions are listed only with `pooled`, to an admin (`Forbidden` to
        others). Listing decides each session's state but writes nothing (its cost must not
        grow with the sessions): `get` and the reaper write what the lifecycle asks.
        `state`, `app_id` and `profile` keep the sessions matching them (see `find`), at
        the cost of deciding every session."""
        if pooled and caller is not None and not caller.is_admin:
            raise Forbidden("Only an admin may list the warm pools' sessions")
        if caller is not None and not caller.is_admin:
            if username and username != caller.username:
                return Page(offset=offset, limit=limit, items=[])
            username = caller.username
        query = SessionQuery(
            offset=offset,
            limit=limit,
            sort_by=sort_by,
            descending=order.upper() == "DESC",
            username=username or None,
            pooled=pooled,
        )
        if state or app_id or profile:
            found = self.find(state=state, username=username, app_id=app_id, profile=profile)
            items = query.select(found)
        else:
            items = self._page(query)
        self.stream_tokens(items, caller)
        return Page(offset=offset, limit=limit, items=items)

    def _page(self, query: SessionQuery) -> list[Session]:
        """One page, the queued starts among the backend's sessions: with none in line, the
        backend's page alone; else the backend's sessions up to the page's end, merged."""
        now = self.now()
        queued = [] if query.pooled else self.queued_sessions()
        if query.username is not None:
            queued = [s for s in queued if s.username == query.username]
        if not queued:
            return [d.session for d in self._decide_all(self.backend.observe_page(query), now)]
        wide = replace(query, offset=0, limit=query.offset + query.limit)
        found = [d.session for d in self._decide_all(self.backend.observe_page(wide), now)]
        return query.select(found + queued)

    def all(self) -> list[Session]:
        """Every session, as decided now, with the starts waiting in line or dropped from it
        (for metrics and the command line); writes nothing."""
        now = self.now()
        found = [d.session for d in self._decide_all(self.backend.observe_all(), now)]
        return found + self.queued_sessions()

    def _decide_all(self, observations: list[Observed], now: datetime) -> list[Decision]:
        clients = self._clients(observations, now)
        return [decide(self.gateway.applied(o, clients), now) for o in observations]

    def _clients(self, observations: list[Observed], now: datetime) -> dict[str, int] | None:
        return self.gateway.clients(self.backend.ledger, observations, now)

    def stream_tokens(self, sessions: list[Session], caller: Identity | None) -> None:
        """Give each of `sessions` its stream token where `caller` may have it
        (`GatewayRules.stream_tokens`)."""
        self.gateway.stream_tokens(self.backend.ledger, sessions, caller)

    def find(
        self,
        *,
        state: SessionState | str | None = None,
        username: str | None = None,
        app_id: str | None = None,
        profile: str | None = None,
    ) -> list[Session]:
        """Every session, as decided now, that matches each filter given (None or empty:
        any): its state (a `SessionState` or its value, e.g. "failed"), owner, app id and
        profile id. Writes nothing. Raises `InvalidInput` for an unknown state."""
        if state and not isinstance(state, SessionState):
            try:
                state = SessionState(str(state).lower())
            except ValueError:
                known = ", ".join(s.value for s in SessionState)
                raise InvalidInput(f"state must be one of {known}", field="state") from None
        wanted = {"state": state, "username": username, "app_id": app_id, "profile": profile}
        wanted = {k: v for k, v in wanted.items() if v}
        return [s for s in self.all() if all(getattr(s, k) == v for k, v in wanted.items())]

    def logs(self, session_id: str, tail: int = LOG_TAIL, caller: Identity | None = None):
        """The last `tail` (1 to `MAX_LOG_TAIL`) log lines of the session's container or pod,
        oldest first, for as long as the session is kept (running, ended or failed), as a
        list of str. Admins only: raises `Forbidden` for another `caller`; `SessionNotFound`;
        `InvalidInput` for a bad `tail`."""
        if caller is not None:
            caller.require(ADMIN)
        if not is_session_id(session_id):
            raise SessionNotFound(session_id[:64])
        if not 1 <= tail <= MAX_LOG_TAIL:
            raise InvalidInput(f"tail must be 1 to {MAX_LOG_TAIL}", field="tail")
        return self.backend.logs(session_id, tail)

    def stop(self, session_id: str, caller: Identity | None = None) -> None:
        """Remove the session now, also while it starts. Raises `SessionNotFound`."""
        try:
            if not is_session_id(session_id):
                raise SessionNotFound(session_id[:64])
            if caller is not None and not caller.is_admin:
                self.get(session_id, caller)
            left = self._stop_or_leave(session_id)
        except OvasError as exc:
            self.events.emit(StopRefused(exc))
            raise
        if left:
            self.events.emit(QueueLeft(session_id, "stopped", None))
        self.events.emit(SessionStopped(session_id))
        self.drain()

    def _stop_or_leave(self, session_id: str) -> bool:
        """Remove the session's workload, or its record in line (and a warm pool's session
        it was given): True when it was waiting in line. Raises `SessionNotFound`."""
        try:
            self.backend.stop(session_id)
            return False
        except SessionNotFound:
            left = self.leave_line(session_id)
            if left is not None:
                return left.state == QUEUED
            # It may have just left the line and started: stop that.
            self.backend.stop(session_id)
            return False

    def reap(self) -> list[str]:
        """One pass of the reaper (`reap_pass`), tending the warm pools too: the ids and
        names removed."""
        return list(self.reap_pass())

    def reap_pass(self, *, tend_pools: bool = True) -> dict[str, str]:
        """One pass of the reaper: decide every session now, write what that asks (ending
        those whose clock ran out), remove ended and failed sessions whose retention has
        passed, and let the backend collect what belongs to no session; with `tend_pools`,
        then the warm pools' pass (`tend_pools`). Returns each id or name removed, with
        why, in the order removed. Without `tend_pools` no warm pool's unclaimed session is
        touched: what a pool keeps is decided by the catalog, which only the server's pass
        is sure to read as the server does. Safe in several processes at once: a session
        is ended once."""
        now = self.now()
        removed: dict[str, str] = {}
        sessions = []
        renderings = {}
        observations = self.backend.observe_all()
        clients = self.gateway.reap(self.backend.ledger, now, removed)
        for observed in observations:
            session_id = observed.record.id
            try:
                session = self._settle(observed, now=now, clients=clients, drain=False)
                sessions.append(session)
                renderings[session_id] = observed.record.rendering
                if session.pooled:
                    continue  # the pool's own pass removes them
                expired = session.ended_time is not None and (
                    now >= session.ended_time + self.retention
                )
                if expired and self._remove_once(session_id, now):
                    removed[session_id] = (
                        f"{session.state.value} ({session.reason}) at "
                        f"{session.ended_time.isoformat(timespec='seconds')}, and kept "
                        f"for its retention of {self.retention.total_seconds():g} s"
                    )
                    self.events.emit(SessionRemoved(session_id))
            except OvasError as exc:
                log.warning("reaping session %s: %s", session_id, exc.message)
        # Whoever waits in line has the room that sessions ending freed before any pool.
        _, waiting = self._drain()
        self._expire_keys(now)
        if tend_pools:
            removed.update(self.tend_pools(sessions, now, renderings, start=not waiting))
        for name in self.backend.collect(now):
            removed[name] = "it belongs to no session, or to one that has ended"
        return removed

    def _expire_keys(self, now: datetime) -> None:
        """Delete expired idempotency keys, at most every `EXPIRE_EVERY` in this process."""
        if self._keys_expired_at is not None and now - self._keys_expired_at < EXPIRE_EVERY:
            return
        self._keys_expired_at = now
        try:
            self.idempotency.expire()
        except (OvasError, LedgerError) as exc:
            log.warning("expired idempotency keys cannot be deleted now: %s", exc)

    def _remove_once(self, session_id: str, now: datetime) -> bool:
        """Remove a session whose retention has passed, in one process only: of passes in
        several processes that decided to at once, the one that records the removal in the
        ledger (`removal.<id>`) does it, so it is audited and logged once. A removal record
        older than `REMOVAL_GRACE` is of a process that died halfway: it is taken over.
        True when this call removed the session."""
        ledger = self.backend.ledger
        name = f"{REMOVAL_PREFIX}{session_id}"
        entry = ledger.create(name, REMOVAL.encode({}))
        if entry is None:
            held = ledger.get(name)
            if held is None or now - held.created < REMOVAL_GRACE or not ledger.delete(held):
                return False
            entry = ledger.create(name, REMOVAL.encode({}))
            if entry is None:
                return False
        try:
            self.backend.stop(session_id)
            return True
        except SessionNotFound:
            return False
        finally:
            ledger.delete(entry)

    def _settle(
        self,
        observed: Observed,
        *,
        now: datetime | None = None,
        clients: object = _READ,
        drain: bool = True,
    ) -> Session:
        """Decide the session, and write through the backend what the decision asks: marks,
        and the outcome of a session that has just ended. A write that fails is logged and
        left to the next reader (the decision holds meanwhile: it is made again the same).
        `clients`: as `GatewayRules.clients` gives them, read here unless given. With
        `drain`, a session that has just ended lets the first in line start (`drain`)."""
        now = now or self.now()
        if clients is _READ:
            clients = self._clients([observed], now)
        decision = decide(self.gateway.applied(observed, clients), now)
        session_id = observed.record.id
        try:
            for mark, at in decision.marks.items():
                written = self.backend.mark(session_id, mark, at)
                # A warm pool's session is ready for its user when claimed, not before.
                if written and mark is Mark.READY and at and not decision.session.pooled:
                    self.events.emit(SessionReady(decision.session, at))
            if decision.outcome is not None and self.backend.finish(session_id, decision.outcome):
                self.events.emit(SessionEnded(decision.session))
                if drain:
                    self.drain()
        except OvasError as exc:
            log.warning("session %s: %s", session_id, exc.message)
        return decision.session


def _check_owner(owner: str, caller: Identity | None, session_id: str) -> None:
    if caller is not None and not caller.is_admin and owner != caller.username:
        raise SessionNotFound(session_id)
