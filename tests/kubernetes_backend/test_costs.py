"""What each answer costs in API calls, read from the emulator's request log: listing every
session and a page of `GET /stream` cost the same for 1 or 12 sessions, live or ended;
reading one session costs at most three calls (four with releases), one once it ended. The
records are one list of the ledger's ConfigMaps; the workloads one list per kind."""

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
LIST_CALLS = {"pod": 3, "helmrelease": 4}  # records, pods, services (and releases)
PAGE_CALLS = LIST_CALLS  # records, then the page's workloads, selected by id
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
    """The records of all from the ledger, the state of the page's live sessions alone."""
    sessions = service_for(make_backend(mode))
    backend = sessions.backend
    query = SessionQuery(limit=3, descending=False)
    started, ended = [], []
    for total in (1, 4, 12):
        grow(sessions, clock, started, ended, total)
        made = requests(cluster, lambda: backend.observe_page(query))
        assert len(made) == PAGE_CALLS[mode], [r.url.path for r in made]
        records, rest = made[0], made[1:]
        assert records.resource.plural == "configmaps"
        assert records.params["labelSelector"] == "ovas/ledger"
        page_ids = set(started[:3])
        for call in rest:
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
    assert len(made) == 1
    assert [o.record.id for o in sessions.backend.observe_page(query)] == [failed.id]


def test_a_long_page_reads_every_workload_as_the_list_does(make_backend, cluster):
    starter = make_backend()
    session = begin(service_for(starter), request_for(starter))
    # A process's first read (or start) looks once for records an earlier release kept on
    # its objects: its pods, services and ConfigMaps.
    backend = make_backend()
    first = requests(cluster, lambda: backend.observe_page(SessionQuery()))
    assert len(first) == LIST_CALLS["pod"] + 3
    again = requests(cluster, lambda: backend.observe_page(SessionQuery()))
    assert len(again) == LIST_CALLS["pod"]
    many = [session.id] + [str(uuid.uuid4()) for _ in range(PAGE_BY_ID)]
    made = requests(cluster, lambda: backend.observe_workloads_of(many))
    assert [r.params["labelSelector"] for r in made] == ["ovas/session"] * 2
    assert list(backend.observe_workloads_of(many)) == [session.id]


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

    # No record: its Pod or HelmRelease and ConfigMaps are read for an earlier release's.
    assert len(calls(cluster, unknown)) <= 3


def test_a_session_ends_once_and_then_costs_one_call(make_backend, cluster):
    sessions = service_for(make_backend())
    request = request_for(sessions.backend, EXITS)
    begin(sessions, request)
    assert wait_for(sessions, request.id, {SessionState.FAILED}).state is SessionState.FAILED
    assert len(calls(cluster, lambda: sessions.get(request.id))) == 1
    # Every session, and the line of queued starts (one list of the ledger's ConfigMaps).
    assert len(calls(cluster, sessions.all)) == LIST_CALLS["pod"] + 1


def test_marking_a_session_ready_is_three_calls(make_backend, cluster):
    """The node its pod runs on, then the record's read and its compare-and-swap."""
    sessions = service_for(make_backend())
    session = begin(sessions, request_for(sessions.backend))
    # Listing decides and writes nothing: the session is ready, not yet marked.
    assert wait_until(lambda: [s.ready for s in sessions.all()] == [True])
    made = requests(cluster, lambda: sessions.get(session.id))
    assert [(r.method.value, r.resource.plural) for r in made[-3:]] == [
        ("GET", "pods"),
        ("GET", "configmaps"),
        ("PUT", "configmaps"),
    ]
    assert len(calls(cluster, lambda: sessions.get(session.id))) == 3
