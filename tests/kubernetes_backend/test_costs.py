"""What each answer costs in API calls, read from the emulator's request log: listing every
session and a page of `GET /stream` cost the same for 1 or 12 sessions, live or ended;
reading one session costs at most three calls (four with releases), one once it ended."""

from __future__ import annotations

import uuid

import pytest
from support.kube_requests import wait_for

from backends.kubernetes.backend import PAGE_BY_ID
from kubernetes_backend.steps import request_for, wait_until
from kubernetes_backend.steps import start as begin
from ovas.errors import SessionNotFound
from ovas.models import SessionQuery, SessionState
from ovas.testing import service_for

pytestmark = pytest.mark.kubernetes
LIST_CALLS = {"pod": 3, "helmrelease": 4}  # pods, services, outcomes (and releases)
PAGE_CALLS = {"pod": 4, "helmrelease": 5}  # owners' and outcomes' metadata, then the page's
GET_CALLS = {"pod": 3, "helmrelease": 4}
EXITS = {"env": [{"name": "STANDIN_EXIT_CODE", "value": "1"}]}


def requests(cluster, action) -> list:
    before = len(cluster.emulator.calls())
    action()
    return cluster.emulator.calls()[before:]


def calls(cluster, action) -> list[str]:
    return [f"{r.method.value} {r.url.path}" for r in requests(cluster, action)]


def grow(sessions, clock, started: list[str], ended: list[str], total: int) -> None:
    """Start sessions, a second apart, until `total` are live and a quarter as many have
    ended."""
    backend = sessions.backend
    while len(started) < total:
        clock.advance(1)
        started.append(begin(sessions, request_for(backend)).id)
    while len(ended) < total // 4:
        clock.advance(1)
        ended.append(begin(sessions, request_for(backend, EXITS)).id)
        wait_for(sessions, ended[-1], {SessionState.FAILED})
    wait_for(sessions, started[-1], {SessionState.READY})


@pytest.mark.parametrize("mode", ["pod", "helmrelease"])
def test_listing_costs_the_same_for_any_number_of_sessions(make_backend, cluster, clock, mode):
    sessions = service_for(make_backend(mode))
    started, ended = [], []
    for total in (1, 4, 12):
        grow(sessions, clock, started, ended, total)
        made = calls(cluster, sessions.backend.observe_all)
        assert len(made) == LIST_CALLS[mode], made
        assert all(call.startswith("GET ") for call in made)
        states = [s.state for s in sessions.all()]
        assert len(states) == total + total // 4
        assert states.count(SessionState.FAILED) == total // 4


@pytest.mark.parametrize("mode", ["pod", "helmrelease"])
def test_a_page_costs_the_same_for_any_number_of_sessions(make_backend, cluster, clock, mode):
    """The records of all from the owners' and the outcomes' metadata, the state of the
    page's live sessions alone."""
    sessions = service_for(make_backend(mode))
    backend = sessions.backend
    owner = "helmreleases" if mode == "helmrelease" else "pods"
    query = SessionQuery(limit=3, descending=False)
    started, ended = [], []
    for total in (1, 4, 12):
        grow(sessions, clock, started, ended, total)
        made = requests(cluster, lambda: backend.observe_page(query))
        assert len(made) == PAGE_CALLS[mode], [r.url.path for r in made]
        (records, outcomes), rest = made[:2], made[2:]
        assert records.resource.plural == owner
        assert outcomes.resource.plural == "configmaps"
        for call in (records, outcomes):
            assert "as=PartialObjectMetadataList" in call.headers["Accept"]
        page_ids = set(started[:3])
        for call in rest:
            assert "PartialObjectMetadata" not in call.headers["Accept"]
            selector = call.params["labelSelector"]
            assert set(selector.partition("(")[2].rstrip(")").split(",")) == page_ids
        page = [o.record.id for o in backend.observe_page(query)]
        assert page == started[:3]
        assert all(s.ready and s.routes for s in sessions.list(limit=3, order="ASC").items)


def test_a_page_of_ended_sessions_reads_only_the_records(make_backend, cluster):
    sessions = service_for(make_backend())
    failed = begin(sessions, request_for(sessions.backend, EXITS, username="ann"))
    wait_for(sessions, failed.id, {SessionState.FAILED})
    begin(sessions, request_for(sessions.backend, username="bob"))
    query = SessionQuery(username="ann")
    made = requests(cluster, lambda: sessions.backend.observe_page(query))
    assert len(made) == 2
    assert [o.record.id for o in sessions.backend.observe_page(query)] == [failed.id]


def test_a_long_page_reads_everything_as_the_list_does(make_backend, cluster):
    backend = make_backend()
    begin(service_for(backend), request_for(backend))
    made = requests(cluster, lambda: backend.observe_page(SessionQuery(limit=PAGE_BY_ID + 1)))
    assert len(made) == LIST_CALLS["pod"]
    assert all(r.params["labelSelector"].startswith("ovas/session") for r in made)


@pytest.mark.parametrize("mode", ["pod", "helmrelease"])
def test_reading_one_session_costs_at_most_three_calls(make_backend, cluster, mode):
    sessions = service_for(make_backend(mode))
    backend = sessions.backend
    slow = begin(
        sessions, request_for(backend, {"env": [{"name": "STANDIN_READY_DELAY", "value": "60"}]})
    )
    ready = begin(sessions, request_for(backend))
    wait_for(sessions, ready.id, {SessionState.READY})
    for session_id in (slow.id, ready.id):
        assert len(calls(cluster, lambda s=session_id: backend.observe(s))) <= GET_CALLS[mode]

    def unknown():
        with pytest.raises(SessionNotFound):
            backend.observe(str(uuid.uuid4()))

    # Mode pod reads the Service of a session with no pod: it may keep a vanished pod's record.
    assert len(calls(cluster, unknown)) <= {"pod": 3, "helmrelease": 2}[mode]


def test_a_session_ends_once_and_then_costs_one_call(make_backend, cluster):
    sessions = service_for(make_backend())
    request = request_for(sessions.backend, EXITS)
    begin(sessions, request)
    assert wait_for(sessions, request.id, {SessionState.FAILED}).state is SessionState.FAILED
    assert len(calls(cluster, lambda: sessions.get(request.id))) == 1
    # Every session, and the line of queued starts (one list of the ledger's ConfigMaps).
    assert len(calls(cluster, sessions.all)) == LIST_CALLS["pod"] + 1


def test_marking_a_session_ready_is_one_read_and_two_patches(make_backend, cluster):
    """The pod's mark, and its node with the mark on the Service, which keeps the record
    should the pod vanish."""
    sessions = service_for(make_backend())
    session = begin(sessions, request_for(sessions.backend))
    # Listing decides and writes nothing: the session is ready, not yet marked.
    assert wait_until(lambda: [s.ready for s in sessions.all()] == [True])
    made = requests(cluster, lambda: sessions.get(session.id))
    assert [(r.method.value, r.resource.plural) for r in made[-3:]] == [
        ("GET", "pods"),
        ("PATCH", "pods"),
        ("PATCH", "services"),
    ]
    assert len(calls(cluster, lambda: sessions.get(session.id))) == 3
