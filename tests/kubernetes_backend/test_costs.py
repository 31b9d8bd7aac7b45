"""What each answer costs in API calls, read from the emulator's request log: `list()` the
same for 1 or 12 sessions, `get()` at most two."""

from __future__ import annotations

import uuid

import pytest
from support.kube_requests import request_for, wait_for

from ovas.errors import SessionNotFound
from ovas.models import SessionState

pytestmark = pytest.mark.kubernetes
LIST_CALLS = {"pod": 2, "helmrelease": 3}


def calls(cluster, action) -> list[str]:
    before = len(cluster.emulator.calls())
    action()
    return [f"{r.method.value} {r.url.path}" for r in cluster.emulator.calls()[before:]]


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
