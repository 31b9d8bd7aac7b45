"""What each answer costs in API calls, read from the emulator's request log: `list()` and
a page of `GET /stream` the same for 1 or 12 sessions, `get()` at most two."""

from __future__ import annotations

import uuid

import pytest
from support.kube_requests import request_for, wait_for

from backends.kubernetes.backend import PAGE_BY_ID
from ovas.errors import SessionNotFound
from ovas.models import SessionQuery, SessionState

pytestmark = pytest.mark.kubernetes
LIST_CALLS = {"pod": 2, "helmrelease": 3}
PAGE_CALLS = {"pod": 3, "helmrelease": 4}


def requests(cluster, action) -> list:
    before = len(cluster.emulator.calls())
    action()
    return cluster.emulator.calls()[before:]


def calls(cluster, action) -> list[str]:
    return [f"{r.method.value} {r.url.path}" for r in requests(cluster, action)]


@pytest.mark.parametrize("mode", ["pod", "helmrelease"])
def test_list_costs_the_same_for_any_number_of_sessions(make_backend, cluster, mode):
    backend = make_backend(mode)
    started = []
    for total in (1, 4, 12):
        while len(started) < total:
            started.append(backend.start(request_for(backend)).id)
        wait_for(backend, started[-1], {SessionState.READY})
        made = calls(cluster, backend.list)
        assert len(made) == LIST_CALLS[mode], made
        assert all(call.startswith("GET ") for call in made)
        assert len(backend.list()) == total


@pytest.mark.parametrize("mode", ["pod", "helmrelease"])
def test_a_page_costs_the_same_for_any_number_of_sessions(make_backend, cluster, mode):
    """The records of all from the owners' metadata, the state of the page's alone."""
    backend = make_backend(mode)
    owner = "helmreleases" if mode == "helmrelease" else "pods"
    query = SessionQuery(limit=3, descending=False)
    started = []
    for total in (1, 4, 12):
        while len(started) < total:
            started.append(backend.start(request_for(backend)).id)
        wait_for(backend, started[-1], {SessionState.READY})
        made = requests(cluster, lambda: backend.page(query))
        assert len(made) == PAGE_CALLS[mode], [r.url.path for r in made]
        first, rest = made[0], made[1:]
        assert first.resource.plural == owner
        assert "as=PartialObjectMetadataList" in first.headers["Accept"]
        page_ids = set(started[:3])
        for call in rest:
            assert "PartialObjectMetadata" not in call.headers["Accept"]
            selector = call.params["labelSelector"]
            assert set(selector.partition("(")[2].rstrip(")").split(",")) == page_ids
        page = backend.page(query)
        assert [s.id for s in page] == started[:3]
        assert all(s.state is SessionState.READY and s.routes for s in page)


def test_a_long_page_reads_everything_as_the_list_does(make_backend, cluster):
    backend = make_backend()
    backend.start(request_for(backend))
    made = requests(cluster, lambda: backend.page(SessionQuery(limit=PAGE_BY_ID + 1)))
    assert len(made) == LIST_CALLS["pod"]
    assert all(r.params["labelSelector"] == "ovas/session" for r in made)


@pytest.mark.parametrize("mode", ["pod", "helmrelease"])
def test_get_costs_at_most_two_calls(make_backend, cluster, mode):
    backend = make_backend(mode)
    slow = backend.start(
        request_for(backend, {"env": [{"name": "STANDIN_READY_DELAY", "value": "60"}]})
    )
    ready = backend.start(request_for(backend))
    wait_for(backend, ready.id, {SessionState.READY})
    for session_id in (slow.id, ready.id):
        assert len(calls(cluster, lambda s=session_id: backend.get(s))) <= 2

    def unknown():
        with pytest.raises(SessionNotFound):
            backend.get(str(uuid.uuid4()))

    assert len(calls(cluster, unknown)) <= 2


def test_a_session_seen_failing_is_marked_once(make_backend, cluster):
    backend = make_backend()
    request = request_for(backend, {"env": [{"name": "STANDIN_EXIT_CODE", "value": "1"}]})
    backend.start(request)
    assert wait_for(backend, request.id, {SessionState.FAILED}).state is SessionState.FAILED
    assert len(calls(cluster, lambda: backend.get(request.id))) == 1
    assert len(calls(cluster, backend.list)) == 2
