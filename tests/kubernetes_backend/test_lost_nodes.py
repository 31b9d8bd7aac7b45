"""A session whose node is deleted: the pod garbage collector removes its pod with no grace,
so nothing of the pod is left to say why; the session's record (in the ledger) keeps the
node its pod ran on from the ready mark on, and the session fails with `node_lost` for its
retention. A pod removed by hand while its node exists is `lost`."""

from __future__ import annotations

import logging

import pytest
from support.kube_requests import wait_for

from kubernetes_backend.earlier import RELEASES_BEFORE, as_earlier
from kubernetes_backend.steps import (
    PODS,
    of_session,
    outcome_of,
    record_of,
    request_for,
    settle,
)
from kubernetes_backend.steps import start as begin
from ovas.errors import SessionNotFound
from ovas.models import Reason, SessionState
from ovas.testing import service_for
from ovas.workloads import SLOT_PREFIX

pytestmark = pytest.mark.kubernetes
READY = {SessionState.READY}
MODES = ["pod", "helmrelease"]
RETENTION = 600


def ready_session(sessions, cluster, mode: str):
    session = begin(sessions, request_for(sessions.backend, capacity=2))
    wait_for(sessions, session.id, READY)
    (pod,) = of_session(cluster, PODS, session.id)
    return session, pod


def delete_node(cluster, node: str) -> None:
    assert cluster.locked(lambda: cluster.cluster.delete_node(node))


@pytest.mark.parametrize("mode", MODES)
def test_a_session_whose_node_is_deleted_fails_node_lost_for_its_retention(
    make_backend, cluster, clock, mode
):
    sessions = service_for(make_backend(mode), retention=RETENTION)
    session, pod = ready_session(sessions, cluster, mode)
    other = begin(sessions, request_for(sessions.backend))
    node = pod["spec"]["nodeName"]
    assert record_of(cluster, session.id)[0].node == node
    delete_node(cluster, node)
    assert of_session(cluster, PODS, session.id) == []  # gone at once, with no word why

    failed = sessions.get(session.id)
    assert (failed.state, failed.reason) == (SessionState.FAILED, Reason.NODE_LOST)
    assert failed.message == f"The session's node was lost: its node {node} no longer exists"
    assert outcome_of(cluster, session.id) is not None
    # Its workload is gone, as any ended session's; its outcome alone is kept.
    assert settle(cluster, session.id, keep=lambda name: name.startswith("configmaps/")) == []
    listed = {s.id: s.reason for s in sessions.list().items}
    assert listed[session.id] is Reason.NODE_LOST
    assert sessions.get(session.id) == failed  # a process reading it again agrees
    assert service_for(make_backend(mode)).get(session.id) == failed

    clock.advance(RETENTION - 1)
    assert session.id not in sessions.reap()
    assert sessions.get(session.id).reason is Reason.NODE_LOST
    clock.advance(1)
    assert session.id in sessions.reap()
    with pytest.raises(SessionNotFound):
        sessions.get(session.id)
    assert settle(cluster, session.id) == []
    assert other.id in {s.id for s in sessions.list().items}


@pytest.mark.parametrize("mode", MODES)
def test_the_reaper_alone_records_a_lost_node_and_collect_keeps_its_record(
    make_backend, cluster, clock, mode
):
    sessions = service_for(make_backend(mode), retention=RETENTION)
    session, pod = ready_session(sessions, cluster, mode)
    delete_node(cluster, pod["spec"]["nodeName"])
    clock.advance(120)  # past the orphan grace: still the session's record, not an orphan
    assert make_backend(mode).collect(clock()) == []
    assert record_of(cluster, session.id) is not None
    assert sessions.reap() == []  # no GET: the pass records the outcome
    assert outcome_of(cluster, session.id).reason is Reason.NODE_LOST
    listed = {s.id: s.reason for s in sessions.list().items}
    assert listed == {session.id: Reason.NODE_LOST}


@pytest.mark.parametrize("mode", MODES)
def test_stopping_a_session_whose_node_was_deleted_removes_all_of_it(make_backend, cluster, mode):
    sessions = service_for(make_backend(mode))
    session, pod = ready_session(sessions, cluster, mode)
    delete_node(cluster, pod["spec"]["nodeName"])
    sessions.backend.stop(session.id)  # before anyone read it
    assert settle(cluster, session.id) == []
    assert sessions.backend.ledger.list(SLOT_PREFIX) == []  # its places are free
    with pytest.raises(SessionNotFound):
        sessions.get(session.id)


@pytest.mark.parametrize("mode", MODES)
def test_a_pod_removed_by_hand_while_its_node_exists_is_lost(make_backend, cluster, mode):
    sessions = service_for(make_backend(mode))
    session, pod = ready_session(sessions, cluster, mode)
    key = cluster.emulator.key(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"])
    cluster.locked(lambda: cluster.emulator.delete(key, grace=0))  # kubectl delete --force
    lost = sessions.get(session.id)
    assert (lost.state, lost.reason) == (SessionState.FAILED, Reason.LOST)
    assert outcome_of(cluster, session.id) is not None
    assert settle(cluster, session.id, keep=lambda name: name.startswith("configmaps/")) == []


def test_without_leave_to_read_nodes_a_vanished_pod_is_lost(make_backend, cluster, caplog):
    cluster.emulator.forbidden.add(("get", "nodes"))
    sessions = service_for(make_backend())
    session, pod = ready_session(sessions, cluster, "pod")
    delete_node(cluster, pod["spec"]["nodeName"])
    with caplog.at_level(logging.WARNING, logger="backends.kubernetes.backend"):
        lost = sessions.get(session.id)
    assert lost.reason is Reason.LOST
    assert "grant ovas get on nodes" in caplog.text


@pytest.mark.parametrize("release", RELEASES_BEFORE)
@pytest.mark.parametrize("mode", MODES)
def test_a_ready_session_an_earlier_release_made_fails_node_lost(
    make_backend, cluster, mode, release
):
    """Its record is adopted with the node its pod runs on, whether that release kept it
    (93837ff) or not (070c004: the pod says it)."""
    session, pod = ready_session(service_for(make_backend(mode)), cluster, mode)
    as_earlier(cluster, mode, session.id, release)
    sessions = service_for(make_backend(mode))
    assert sessions.get(session.id).ready
    assert record_of(cluster, session.id)[0].node == pod["spec"]["nodeName"]
    delete_node(cluster, pod["spec"]["nodeName"])
    assert sessions.get(session.id).reason is Reason.NODE_LOST
    assert settle(cluster, session.id) == []
