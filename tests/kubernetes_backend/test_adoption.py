"""Sessions an earlier release recorded on their objects are adopted into the ledger: at a
process's first read, when one is asked for (a replica of that release made it since), and
by `collect`, which never takes such a workload for one of no session. An adopted session is
never adopted again, once stopped; a vanished pod's node, as that release kept it, still
says `node_lost`. `test_upgrade.py` runs those releases' own code."""

from __future__ import annotations

import pytest
from support.kube_requests import wait_for

from kubernetes_backend.earlier import RELEASES_BEFORE, as_earlier
from kubernetes_backend.steps import (
    CONFIG_MAPS,
    PODS,
    leftovers,
    of_session,
    record_of,
    request_for,
    settle,
)
from kubernetes_backend.steps import start as begin
from ovas.errors import SessionNotFound
from ovas.models import Reason, SessionState
from ovas.testing import service_for

pytestmark = pytest.mark.kubernetes
MODES = ["pod", "helmrelease"]
READY = {SessionState.READY}
EXITS = {"env": [{"name": "STANDIN_EXIT_CODE", "value": "3"}]}


def test_a_session_whose_node_was_lost_before_the_upgrade_fails_node_lost(make_backend, cluster):
    """93837ff kept the record and the node on the Service, which outlived the pod."""
    made = service_for(make_backend())
    session = begin(made, request_for(made.backend, capacity=2))
    wait_for(made, session.id, READY)
    (pod,) = of_session(cluster, PODS, session.id)
    as_earlier(cluster, "pod", session.id, "93837ff")
    cluster.locked(lambda: cluster.cluster.delete_node(pod["spec"]["nodeName"]))
    assert of_session(cluster, PODS, session.id) == []

    sessions = service_for(make_backend())
    failed = sessions.get(session.id)
    assert (failed.state, failed.reason) == (SessionState.FAILED, Reason.NODE_LOST)
    assert record_of(cluster, session.id)[0].node == pod["spec"]["nodeName"]
    assert settle(cluster, session.id) == []  # its Service went with its end
    assert sessions.backend.ledger.list("slot.") == []


@pytest.mark.parametrize("release", RELEASES_BEFORE)
@pytest.mark.parametrize("mode", MODES)
def test_a_session_an_earlier_replica_made_since_is_adopted_when_asked_for(
    make_backend, cluster, clock, mode, release
):
    sessions = service_for(make_backend(mode))
    assert sessions.all() == []  # the first read: nothing of an earlier release yet
    other = service_for(make_backend(mode))
    session = begin(other, request_for(other.backend, capacity=3, user_capacity=2))
    wait_for(other, session.id, READY)
    recorded = as_earlier(cluster, mode, session.id, release)
    assert record_of(cluster, session.id) is None

    found = sessions.get(session.id)
    assert found.ready and found.created_time == session.created_time
    assert record_of(cluster, session.id)[0] == recorded
    assert len(sessions.backend.ledger.list("slot.")) == 2  # all, and the user's
    clock.advance(120)
    assert sessions.backend.collect(clock()) == []
    assert sessions.get(session.id) == found


@pytest.mark.parametrize("mode", MODES)
def test_collect_adopts_an_earlier_replicas_session_rather_than_stop_it(
    make_backend, cluster, clock, mode
):
    backend = make_backend(mode)
    assert backend.collect(clock()) == []  # the first read
    other = service_for(make_backend(mode))
    session = begin(other, request_for(other.backend))
    wait_for(other, session.id, READY)
    as_earlier(cluster, mode, session.id, "93837ff")
    assert backend.collect(clock()) == []
    assert record_of(cluster, session.id) is not None
    assert service_for(backend).get(session.id).ready


@pytest.mark.parametrize("mode", MODES)
def test_a_stopped_adopted_session_is_gone_with_what_its_release_kept(make_backend, cluster, mode):
    made = service_for(make_backend(mode))
    session = begin(made, request_for(made.backend, EXITS))
    failed = wait_for(made, session.id, {SessionState.FAILED})
    as_earlier(cluster, mode, session.id, "93837ff")
    assert [c["metadata"]["name"] for c in of_session(cluster, CONFIG_MAPS, session.id)] == [
        f"ovas-{session.id}"
    ]
    sessions = service_for(make_backend(mode))
    assert sessions.get(session.id) == failed
    assert sessions.logs(session.id) == made.logs(session.id) != []
    sessions.stop(session.id)
    assert settle(cluster, session.id) == [] and leftovers(cluster, session.id) == []
    with pytest.raises(SessionNotFound):
        service_for(make_backend(mode)).get(session.id)
