"""`BackendContract`: the behaviour every backend must show, as a pytest suite.

Use it in a test module::

    from ovas.testing import BackendContract

    class TestMyBackend(BackendContract):
        @pytest.fixture
        def backend(self):
            yield MyBackend(...)

The backend's catalog must hold an application whose latest version, with the first profile
that supports it, starts a container honouring the `STANDIN_*` variables (see
`ovas.testing`); override `request_options` to choose others, and `ready_timeout` if the
backend is slow to start.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from ovas.backend import Backend
from ovas.errors import CapacityExceeded, SessionNotFound
from ovas.models import Session, SessionQuery, SessionRequest, SessionState
from ovas.testing.requests import (
    STANDIN_EXIT_CODE,
    STANDIN_NEVER_READY,
    STANDIN_READY_DELAY,
    make_request,
    wait_for,
)


class BackendContract:
    """Every backend passes these. Supply a `backend` fixture."""

    @pytest.fixture
    def backend(self) -> Backend:
        raise NotImplementedError("a BackendContract subclass must supply a `backend` fixture")

    @pytest.fixture
    def request_options(self) -> dict:
        """Keyword arguments for `ovas.testing.make_request` (app_id, profile_id...)."""
        return {}

    @pytest.fixture
    def ready_timeout(self) -> float:
        return 60.0

    @pytest.fixture
    def new_request(self, backend, request_options) -> Callable[..., SessionRequest]:
        def build(**kw) -> SessionRequest:
            return make_request(backend.catalog, **{**request_options, **kw})

        return build

    @pytest.fixture
    def start(self, backend, new_request) -> Iterator[Callable[..., Session]]:
        """Start a session from `new_request(**kw)`; every one is stopped at the end."""
        started: list[str] = []

        def start(**kw) -> Session:
            request = new_request(**kw)
            started.append(request.id)
            return backend.start(request)

        yield start
        for session_id in started:
            with contextlib.suppress(SessionNotFound):
                backend.stop(session_id)

    wait_for = staticmethod(wait_for)

    def test_start_answers_at_once_with_the_request_recorded(self, backend, start):
        began = time.monotonic()
        session = start(env={STANDIN_READY_DELAY: "5"}, username="alice")
        assert time.monotonic() - began < 10
        assert session.state is SessionState.CREATING
        assert session.routes == ()
        uuid.UUID(session.id, version=4)
        seen = backend.get(session.id)
        assert (seen.id, seen.username) == (session.id, "alice")
        assert (seen.app_id, seen.version, seen.profile) == (
            session.app_id,
            session.version,
            session.profile,
        )

    def test_becomes_ready_with_signaling_and_media_routes(self, backend, start, ready_timeout):
        session = start()
        ready = self.wait_for(backend, session.id, {SessionState.READY}, ready_timeout)
        assert ready.state is SessionState.READY, ready.message
        assert ready.message == "Session is active"
        assert ready.host
        by_name = {r.description: r for r in ready.routes}
        assert by_name["signaling"].protocol == "TCP"
        assert by_name["media"].protocol == "UDP"
        assert by_name["signaling"].source_port > 0
        assert by_name["signaling"].destination_port == 49100
        assert by_name["media"].destination_port == 47998

    def test_list_has_each_session_once(self, backend, start):
        first = start(env={STANDIN_READY_DELAY: "30"})
        second = start(env={STANDIN_READY_DELAY: "30"}, username="bob")
        listed = [s for s in backend.list() if s.id in {first.id, second.id}]
        assert sorted(s.id for s in listed) == sorted([first.id, second.id])
        assert {s.id: s.username for s in listed}[second.id] == "bob"

    def test_pages_agree_with_the_whole_list(self, backend, start):
        """`page()`, however a backend reads it, is the page `list()` holds."""
        users = ("carol@example.com", "alice", "carol@example.com")
        ids = [start(env={STANDIN_READY_DELAY: "30"}, username=user).id for user in users]
        queries = [
            SessionQuery(),
            SessionQuery(limit=1, offset=1),
            SessionQuery(sort_by="username", descending=False, limit=2),
            SessionQuery(username="carol@example.com"),
            SessionQuery(username="carol@example.com", descending=False, offset=1),
            SessionQuery(username="nobody"),
            SessionQuery(limit=1000),
        ]
        for query in queries:
            expected = [(s.id, s.username) for s in query.select(backend.list())]
            assert [(s.id, s.username) for s in backend.page(query)] == expected, query
        mine = {s.id: s for s in backend.page(SessionQuery(username="carol@example.com"))}
        assert {ids[0], ids[2]} <= set(mine)
        assert ids[1] not in mine
        assert mine[ids[0]].state is SessionState.CREATING

    def test_stop_removes_the_session(self, backend, start, ready_timeout):
        session = start()
        self.wait_for(backend, session.id, {SessionState.READY}, ready_timeout)
        backend.stop(session.id)
        with pytest.raises(SessionNotFound):
            backend.get(session.id)
        assert session.id not in {s.id for s in backend.list()}

    def test_stop_twice_reports_not_found(self, backend, start):
        session = start()
        backend.stop(session.id)
        with pytest.raises(SessionNotFound):
            backend.stop(session.id)

    def test_stop_while_starting_cancels_the_start(self, backend, start):
        session = start(env={STANDIN_READY_DELAY: "60"})
        backend.stop(session.id)
        with pytest.raises(SessionNotFound):
            backend.get(session.id)
        assert session.id not in {s.id for s in backend.list()}

    def test_unknown_session_is_not_found(self, backend):
        with pytest.raises(SessionNotFound):
            backend.get(str(uuid.uuid4()))
        with pytest.raises(SessionNotFound):
            backend.stop(str(uuid.uuid4()))

    def test_exit_is_reported_as_failure_with_the_reason(self, backend, start, ready_timeout):
        session = start(env={STANDIN_EXIT_CODE: "3"})
        failed = self.wait_for(backend, session.id, {SessionState.FAILED}, ready_timeout)
        assert failed.state is SessionState.FAILED
        assert "3" in failed.message
        backend.stop(session.id)
        with pytest.raises(SessionNotFound):
            backend.get(session.id)

    def test_never_ready_fails_at_its_deadline(self, backend, start, ready_timeout):
        session = start(env={STANDIN_NEVER_READY: "1"}, start_timeout=3)
        failed = self.wait_for(backend, session.id, {SessionState.FAILED}, ready_timeout)
        assert failed.state is SessionState.FAILED
        assert "ready" in failed.message.lower()

    def test_capacity_is_never_exceeded_and_is_released(self, backend, start):
        first = start(capacity=1, env={STANDIN_READY_DELAY: "30"})
        with pytest.raises(CapacityExceeded):
            start(capacity=1)
        backend.stop(first.id)
        assert start(capacity=1).state in {SessionState.CREATING, SessionState.READY}

    def test_concurrent_sessions_get_distinct_routes(self, backend, start, ready_timeout):
        sessions = [start(), start()]
        ready = [
            self.wait_for(backend, s.id, {SessionState.READY}, ready_timeout) for s in sessions
        ]
        assert all(s.state is SessionState.READY for s in ready), [s.message for s in ready]
        ports = [(s.host, r.source_port) for s in ready for r in s.routes]
        assert len(ports) == len(set(ports))
