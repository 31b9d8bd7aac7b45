"""`BackendContract`: the behaviour every backend must show, as a pytest suite.

Use it in a test module::

    from ovas.testing import BackendContract

    class TestMyBackend(BackendContract):
        @pytest.fixture
        def backend(self, clock):
            yield MyBackend(..., now=clock)

The backend must take its time from the `clock` fixture (a ticking `FakeClock`: real time
passes, and the tests jump it past deadlines instead of waiting for them). Its catalog must
hold an application whose latest version, with the first profile that supports it, starts
a container honouring the `STANDIN_*` variables (see `ovas.testing`); override
`request_options` to choose others, and `ready_timeout` if the backend is slow to start.

The tests run the backend under the core's rules (`SessionService`), as ovas does: the
session clocks, the outcomes, the retention. Override `client` if a client of a session is
not a TCP connection to its signaling route, and `peer` to give a second instance on the
same engine (as another worker process would be).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest

from ovas.backend import SessionBackend
from ovas.errors import CapacityExceeded, SessionNotFound, UserCapacityExceeded
from ovas.events import SessionEnded, SessionReady
from ovas.lifecycle import Mark, Observed
from ovas.models import (
    Clocks,
    Reason,
    Session,
    SessionQuery,
    SessionRequest,
    SessionState,
    WarmPool,
)
from ovas.services import SessionService
from ovas.testing.clock import FakeClock
from ovas.testing.requests import (
    STANDIN_EXIT_AFTER,
    STANDIN_EXIT_CODE,
    STANDIN_NEVER_READY,
    STANDIN_READY_DELAY,
    make_request,
    service_for,
    wait_for,
)

CLOCKS = Clocks(connect_timeout=300, idle_timeout=300, max_lifetime=3600)
RETENTION = 600
SLOW = {STANDIN_READY_DELAY: "60"}


class BackendContract:
    """Every backend passes these. Supply a `backend` fixture that uses `clock`."""

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock(ticking=True)

    @pytest.fixture
    def backend(self, clock) -> SessionBackend:
        raise NotImplementedError("a BackendContract subclass must supply a `backend` fixture")

    @pytest.fixture
    def peer(self, backend) -> SessionBackend:
        """Another instance on the same engine, as another ovas process would have."""
        return backend

    @pytest.fixture
    def request_options(self) -> dict:
        """Keyword arguments for `ovas.testing.make_request` (app_id, profile_id...)."""
        return {}

    @pytest.fixture
    def ready_timeout(self) -> float:
        return 60.0

    @pytest.fixture
    def sessions(self, backend) -> SessionService:
        return service_for(backend, retention=RETENTION, clocks=CLOCKS)

    @pytest.fixture
    def new_request(self, backend, request_options) -> Callable[..., SessionRequest]:
        def build(**kw) -> SessionRequest:
            options = {"clocks": CLOCKS, "now": backend.now(), **request_options, **kw}
            return make_request(backend.catalog, **options)

        return build

    @pytest.fixture
    def start(self, backend, sessions, new_request) -> Iterator[Callable[..., Session]]:
        """Start a session from `new_request(**kw)` through the rules; every one is stopped
        at the end."""
        started: list[str] = []

        def start(**kw) -> Session:
            request = new_request(**kw)
            started.append(request.id)
            return sessions._settle(backend.start(request))

        yield start
        for session_id in started:
            with contextlib.suppress(SessionNotFound):
                backend.stop(session_id)

    @pytest.fixture
    def client(self, backend) -> Callable[[Session], contextlib.AbstractContextManager]:
        """`with client(session):` a client connected to the session's signaling route."""

        @contextlib.contextmanager
        def connected(session: Session) -> Iterator[None]:
            route = next(r for r in session.routes if r.description == "signaling")
            with socket.create_connection((session.host, route.source_port), timeout=5):
                yield

        return connected

    def ready(self, sessions, session_id: str, timeout: float) -> Session:
        session = wait_for(sessions, session_id, {SessionState.READY}, timeout)
        assert session.state is SessionState.READY, session.message
        return session

    def until(self, sessions, session_id: str, check: Callable[[Session], bool], timeout=20.0):
        """Reap and read until `check(session)` holds (the engine may take a moment to
        show what happened); returns the session as last read."""
        deadline = time.monotonic() + timeout
        while True:
            sessions.reap()
            session = sessions.get(session_id)
            if check(session) or time.monotonic() > deadline:
                return session
            time.sleep(0.1)

    # Starting and reading

    def test_the_backend_runs_on_the_injected_clock(self, clock, start):
        clock.advance(86400)
        session = start(env=SLOW)
        assert abs((session.created_time - clock()).total_seconds()) < 30

    def test_start_answers_at_once_with_the_request_recorded(self, backend, start):
        began = time.monotonic()
        session = start(env={STANDIN_READY_DELAY: "5"}, username="alice")
        assert time.monotonic() - began < 10
        assert session.state is SessionState.CREATING
        assert session.routes == ()
        assert session.reason is None
        uuid.UUID(session.id, version=4)
        seen = backend.observe(session.id).record
        assert (seen.id, seen.username) == (session.id, "alice")
        assert (seen.app_id, seen.version, seen.profile) == (
            session.app_id,
            session.version,
            session.profile,
        )
        assert seen.clocks == CLOCKS
        lifetime = timedelta(seconds=CLOCKS.max_lifetime)
        assert session.expires_time == session.created_time + lifetime

    def test_becomes_ready_with_signaling_and_media_routes(self, sessions, start, ready_timeout):
        ready = self.ready(sessions, start().id, ready_timeout)
        assert ready.message == "Session is active"
        assert ready.host
        by_name = {r.description: r for r in ready.routes}
        assert by_name["signaling"].protocol == "TCP"
        assert by_name["media"].protocol == "UDP"
        assert by_name["signaling"].source_port > 0
        assert by_name["signaling"].destination_port == 49100
        assert by_name["media"].destination_port == 47998
        assert ready.connected in (False, None)

    def test_list_has_each_session_once(self, backend, start):
        first = start(env=SLOW)
        second = start(env=SLOW, username="bob")
        listed = [o.record for o in backend.observe_all() if o.record.id in {first.id, second.id}]
        assert sorted(r.id for r in listed) == sorted([first.id, second.id])
        assert {r.id: r.username for r in listed}[second.id] == "bob"

    def test_pages_agree_with_the_whole_list(self, backend, start):
        """`observe_page()`, however a backend reads it, is the page `observe_all()` holds."""
        users = ("carol@example.com", "alice", "carol@example.com")
        ids = [start(env=SLOW, username=user).id for user in users]
        queries = [
            SessionQuery(),
            SessionQuery(limit=1, offset=1),
            SessionQuery(sort_by="username", descending=False, limit=2),
            SessionQuery(username="carol@example.com"),
            SessionQuery(username="carol@example.com", descending=False, offset=1),
            SessionQuery(username="nobody"),
            SessionQuery(limit=1000),
        ]

        def key(o: Observed):
            return o.record

        for query in queries:
            expected = [
                (o.record.id, o.record.username)
                for o in query.select(backend.observe_all(), key=key)
            ]
            page = backend.observe_page(query)
            assert [(o.record.id, o.record.username) for o in page] == expected, query
        mine = {
            o.record.id: o for o in backend.observe_page(SessionQuery(username="carol@example.com"))
        }
        assert {ids[0], ids[2]} <= set(mine)
        assert ids[1] not in mine

    def test_the_gateway_finds_a_ready_sessions_signaling_socket(
        self, backend, sessions, start, ready_timeout
    ):
        """`SessionService.signaling`, which the signaling gateway asks at each connection:
        nothing while the session starts; a (host, TCP port) once it is ready, from
        `Observation.signaling` or else the session's own signaling route."""
        starting = start(env=SLOW)
        session, where = sessions.signaling(starting.id)
        assert not session.ready and where is None
        ready = self.ready(sessions, start().id, ready_timeout)
        session, where = sessions.signaling(ready.id)
        assert session.ready and where is not None
        host, port = where
        assert isinstance(host, str) and host and isinstance(port, int) and 0 < port < 65536

    # Stopping

    def test_stop_removes_the_session(self, backend, sessions, start, ready_timeout):
        session = self.ready(sessions, start().id, ready_timeout)
        backend.stop(session.id)
        with pytest.raises(SessionNotFound):
            sessions.get(session.id)
        assert session.id not in {o.record.id for o in backend.observe_all()}

    def test_stop_twice_reports_not_found(self, backend, start):
        session = start()
        backend.stop(session.id)
        with pytest.raises(SessionNotFound):
            backend.stop(session.id)

    def test_stop_while_starting_cancels_the_start(self, backend, sessions, start):
        session = start(env=SLOW)
        backend.stop(session.id)
        with pytest.raises(SessionNotFound):
            sessions.get(session.id)
        assert session.id not in {o.record.id for o in backend.observe_all()}

    def test_unknown_session_is_not_found(self, backend):
        with pytest.raises(SessionNotFound):
            backend.observe(str(uuid.uuid4()))
        with pytest.raises(SessionNotFound):
            backend.stop(str(uuid.uuid4()))

    # Failures and ends

    def test_an_exit_fails_the_session_with_its_code(self, backend, sessions, start, ready_timeout):
        session = start(env={STANDIN_EXIT_CODE: "3"})
        failed = wait_for(sessions, session.id, {SessionState.FAILED}, ready_timeout)
        assert failed.state is SessionState.FAILED
        assert failed.reason is Reason.EXITED
        assert "code 3" in failed.message
        assert failed.ended_time is not None
        # Kept, with its reason, until it is stopped or its retention passes.
        assert sessions.get(session.id).reason is Reason.EXITED
        backend.stop(session.id)
        with pytest.raises(SessionNotFound):
            sessions.get(session.id)

    def test_an_app_that_quits_after_it_was_ready_has_ended(self, sessions, start, ready_timeout):
        session = start(env={STANDIN_EXIT_CODE: "0", STANDIN_EXIT_AFTER: "1"})
        self.ready(sessions, session.id, ready_timeout)
        ended = wait_for(sessions, session.id, {SessionState.ENDED, SessionState.FAILED}, 30)
        assert (ended.state, ended.reason) == (SessionState.ENDED, Reason.APP_EXITED), ended
        assert ended.message.startswith("Ended:")

    def test_never_ready_fails_at_its_deadline(self, clock, sessions, start):
        session = start(env={STANDIN_NEVER_READY: "1"}, start_timeout=30)
        assert sessions.get(session.id).state is SessionState.CREATING
        clock.advance(31)
        failed = sessions.get(session.id)
        assert (failed.state, failed.reason) == (SessionState.FAILED, Reason.START_TIMEOUT)
        assert "not ready within 30 seconds" in failed.message

    def test_the_max_lifetime_ends_a_session(self, clock, sessions, start, ready_timeout):
        session = self.ready(sessions, start().id, ready_timeout)
        assert session.expires_time is not None
        clock.advance(CLOCKS.max_lifetime + 1)
        assert session.id not in sessions.reap()
        ended = sessions.get(session.id)
        assert (ended.state, ended.reason) == (SessionState.ENDED, Reason.MAX_LIFETIME)
        assert "3600 seconds" in ended.message

    def test_nobody_connecting_ends_a_session_if_the_backend_can_tell(
        self, clock, sessions, start, ready_timeout
    ):
        session = self.ready(sessions, start().id, ready_timeout)
        clock.advance(CLOCKS.connect_timeout + 1)
        sessions.reap()
        later = sessions.get(session.id)
        if session.connected is None:
            # The backend cannot tell: only the max lifetime applies.
            assert later.state is SessionState.READY
            return
        assert (later.state, later.reason) == (SessionState.ENDED, Reason.CONNECT_TIMEOUT)
        assert later.connected is False

    def test_the_idle_timeout_ends_a_session_its_client_left(
        self, clock, sessions, start, client, ready_timeout
    ):
        session = self.ready(sessions, start().id, ready_timeout)
        if session.connected is None:
            clock.advance(CLOCKS.idle_timeout + CLOCKS.connect_timeout + 1)
            sessions.reap()
            assert sessions.get(session.id).state is SessionState.READY
            return
        with client(session):
            seen = self.until(sessions, session.id, lambda s: s.connected)
            assert seen.connected is True, seen
            assert seen.last_connected_time is not None
            clock.advance(CLOCKS.connect_timeout + CLOCKS.idle_timeout + 1)
            sessions.reap()
            assert sessions.get(session.id).state is SessionState.READY  # connected: no clock
        left = self.until(sessions, session.id, lambda s: s.connected is False)
        assert left.state is SessionState.READY, left
        clock.advance(CLOCKS.idle_timeout - 5)
        sessions.reap()
        assert sessions.get(session.id).state is SessionState.READY
        clock.advance(10)
        sessions.reap()
        ended = sessions.get(session.id)
        assert (ended.state, ended.reason) == (SessionState.ENDED, Reason.IDLE_TIMEOUT)
        assert ended.message == "Ended: nobody was connected for 300 seconds"

    def test_an_ended_session_is_kept_for_its_retention_then_removed(
        self, backend, clock, sessions, start, ready_timeout
    ):
        session = self.ready(sessions, start().id, ready_timeout)
        clock.advance(CLOCKS.max_lifetime + 1)
        sessions.reap()
        assert sessions.get(session.id).state is SessionState.ENDED
        clock.advance(RETENTION - 10)
        assert session.id not in sessions.reap()
        assert sessions.get(session.id).reason is Reason.MAX_LIFETIME
        clock.advance(20)
        assert session.id in sessions.reap()
        with pytest.raises(SessionNotFound):
            sessions.get(session.id)
        assert session.id not in {o.record.id for o in backend.observe_all()}

    def test_two_processes_end_a_session_once(
        self, backend, peer, clock, sessions, start, ready_timeout
    ):
        session = self.ready(sessions, start().id, ready_timeout)
        other = service_for(peer, retention=RETENTION, clocks=CLOCKS)
        events = []
        for service in (sessions, other):
            service.events.subscribe(events.append)
        clock.advance(CLOCKS.max_lifetime + 1)
        sessions.reap()
        other.reap()
        assert sessions.get(session.id) == other.get(session.id)
        ended = [e for e in events if isinstance(e, SessionEnded)]
        assert [e.session.id for e in ended] == [session.id]
        assert not [e for e in events if isinstance(e, SessionReady)]

    # Capacity

    def test_capacity_is_never_exceeded_and_is_released(self, backend, sessions, start):
        first = start(capacity=1, env=SLOW)
        with pytest.raises(CapacityExceeded):
            start(capacity=1)
        backend.stop(first.id)
        assert start(capacity=1).state in {SessionState.CREATING, SessionState.READY}

    def test_an_ended_session_holds_no_capacity(self, sessions, start, ready_timeout):
        broken = start(capacity=1, env={STANDIN_EXIT_CODE: "3"})
        failed = wait_for(sessions, broken.id, {SessionState.FAILED}, ready_timeout)
        assert failed.state is SessionState.FAILED
        # Still listed with its reason, but its slot is free for the next session.
        assert start(capacity=1, env=SLOW).state is SessionState.CREATING
        assert sessions.get(broken.id).reason is Reason.EXITED

    def test_concurrent_sessions_get_distinct_routes(self, sessions, start, ready_timeout):
        ready = [self.ready(sessions, start().id, ready_timeout) for _ in range(2)]
        ports = [(s.host, r.source_port) for s in ready for r in s.routes]
        assert len(ports) == len(set(ports))


class WarmPoolContract(BackendContract):
    """What a backend that keeps warm pools (`Backend.keeps_warm_pools`) must show too:
    admission by the pool's size, atomic claims, and clocks from the claim."""

    def pool_of(self, backend, size: int, request_options: dict) -> WarmPool:
        request = make_request(backend.catalog, **request_options)
        return WarmPool("contract", request.app.id, "latest", request.profile.id, size)

    def test_a_pool_never_has_more_unclaimed_sessions_than_its_size(
        self, backend, peer, start, request_options
    ):
        pool = self.pool_of(backend, 1, request_options)
        first = start(pool=pool, env=SLOW)
        assert first.pooled and first.username == ""
        other = make_request(peer.catalog, pool=pool, now=peer.now(), **request_options)
        with pytest.raises(CapacityExceeded):
            peer.start(other)  # another process: the same pool's places
        (record,) = [r for r in backend.records() if r.id == first.id]
        assert record.pooled and record.pool == "contract"

    def test_a_claim_is_atomic_across_processes(
        self, backend, peer, clock, sessions, start, request_options, ready_timeout
    ):
        pool = self.pool_of(backend, 1, request_options)
        pooled = self.ready(sessions, start(pool=pool).id, ready_timeout)
        assert pooled.pooled
        at = clock()
        won: dict[str, bool] = {}
        barrier = threading.Barrier(2)

        def claim(engine, user):
            barrier.wait()
            won[user] = engine.claim(pooled.id, user, at)

        threads = [
            threading.Thread(target=claim, args=(b, u))
            for b, u in ((backend, "alice"), (peer, "bob"))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(won.values()) == [False, True]
        winner = next(u for u, ok in won.items() if ok)
        record = backend.observe(pooled.id).record
        assert (record.username, record.pooled) == (winner, False)
        assert record.marks[Mark.CLAIMED] == at
        assert not backend.claim(pooled.id, "carol", at)
        # Its pool's place is free again for the next pooled session.
        assert start(pool=pool, env=SLOW).pooled

    def test_a_pooled_session_waits_for_its_claim_then_runs_on_the_claimants_clocks(
        self, backend, clock, sessions, start, request_options, ready_timeout
    ):
        pool = self.pool_of(backend, 1, request_options)
        pooled = self.ready(sessions, start(pool=pool).id, ready_timeout)
        assert pooled.expires_time is None
        clock.advance(CLOCKS.max_lifetime + CLOCKS.connect_timeout + 60)
        assert sessions.get(pooled.id).state is SessionState.READY  # no clock ends it
        at = clock()
        assert backend.claim(pooled.id, "alice", at)
        claimed = sessions.get(pooled.id)
        assert (claimed.state, claimed.username, claimed.pooled) == (
            SessionState.READY,
            "alice",
            False,
        )
        assert claimed.created_time == at
        assert claimed.expires_time == at + timedelta(seconds=CLOCKS.max_lifetime)
        clock.advance(CLOCKS.max_lifetime + 1)
        assert sessions.get(pooled.id).reason is Reason.MAX_LIFETIME

    def test_a_claim_is_refused_past_the_users_capacity_and_changes_nothing(
        self, backend, clock, sessions, start, request_options, ready_timeout
    ):
        pool = self.pool_of(backend, 1, request_options)
        start(username="alice", user_capacity=1, env=SLOW)
        pooled = self.ready(sessions, start(pool=pool).id, ready_timeout)
        with pytest.raises(UserCapacityExceeded):
            backend.claim(pooled.id, "alice", clock(), user_capacity=1)
        assert backend.observe(pooled.id).record.pooled
        assert backend.claim(pooled.id, "bob", clock(), user_capacity=1)

    def test_unclaimed_pooled_sessions_are_listed_only_when_asked_for(
        self, backend, start, request_options
    ):
        pool = self.pool_of(backend, 1, request_options)
        mine = start(env=SLOW)
        pooled = start(pool=pool, env=SLOW)
        plain = [o.record.id for o in backend.observe_page(SessionQuery(limit=100))]
        asked = [o.record.id for o in backend.observe_page(SessionQuery(limit=100, pooled=True))]
        assert mine.id in plain and pooled.id not in plain
        assert asked == [pooled.id]
