"""Admission is atomic in the API server: replicas starting sessions at the same moment never
admit more than the capacity, and capacity comes back when sessions go. The places are the
core's, in the ledger (ConfigMaps `ovas-ledger-slot.*`), each taken by a create."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from support.kube_requests import wait_for

from kubernetes_backend.steps import PODS, of_session, request_for
from kubernetes_backend.steps import start as begin
from ovas.errors import CapacityExceeded, UserCapacityExceeded
from ovas.lifecycle import Stage
from ovas.models import Reason, SessionState
from ovas.session_records import SLOT_RECORD
from ovas.testing import service_for
from ovas.workloads import SESSION_PREFIX, SLOT_PREFIX

pytestmark = pytest.mark.kubernetes


def places(backend, kind: str = "") -> dict[str, str]:
    """The places taken in the ledger, with the session holding each."""
    return {e.name: e.data["session"] for e in backend.ledger.list(f"{SLOT_PREFIX}{kind}")}


def _start_all(replicas, requests):
    """Start every request at once, spread over the replicas; count the outcomes."""
    barrier = threading.Barrier(len(requests))
    outcomes = {"started": [], "refused": 0}

    def start(i: int):
        barrier.wait()
        try:
            outcomes["started"].append(replicas[i % len(replicas)].start(requests[i]).record.id)
        except CapacityExceeded:
            outcomes["refused"] += 1

    with ThreadPoolExecutor(len(requests)) as pool:
        list(pool.map(start, range(len(requests))))
    return outcomes


@pytest.mark.parametrize("mode", ["pod", "helmrelease"])
def test_concurrent_starts_on_two_replicas_never_exceed_capacity(make_backend, cluster, mode):
    replicas = [make_backend(mode), make_backend(mode)]
    requests = [request_for(replicas[0], capacity=3, username=f"u{i}") for i in range(10)]
    outcomes = _start_all(replicas, requests)
    assert len(outcomes["started"]) == 3
    assert outcomes["refused"] == 7
    kind = "helm.toolkit.fluxcd.io/v2/helmreleases" if mode == "helmrelease" else "v1/pods"
    assert len(cluster.objects(kind)) == 3
    taken = places(replicas[0])
    assert sorted(taken) == [f"{SLOT_PREFIX}all.{k}" for k in range(3)]
    assert set(taken.values()) == set(outcomes["started"])
    assert sorted(s.id for s in service_for(replicas[1]).all()) == sorted(outcomes["started"])


def test_a_user_limit_holds_across_replicas(make_backend):
    first, second = make_backend(), make_backend()
    first.start(request_for(first, user_capacity=1, username="ann"))
    with pytest.raises(UserCapacityExceeded) as refused:
        second.start(request_for(second, user_capacity=1, username="ann"))
    assert refused.value.http_status == 429
    second.start(request_for(second, user_capacity=1, username="bob"))


def test_a_refused_start_leaves_nothing_behind(make_backend, cluster):
    backend = make_backend()
    backend.start(request_for(backend, capacity=1, user_capacity=2, username="ann"))
    with pytest.raises(CapacityExceeded):
        backend.start(request_for(backend, capacity=1, user_capacity=2, username="ann"))
    assert len(cluster.objects(PODS)) == 1
    assert len(places(backend)) == 2  # one of all, one of ann's
    assert len(backend.ledger.list(SESSION_PREFIX)) == 1


def test_a_pod_deleted_by_hand_frees_its_place_once_its_session_is_lost(make_backend, cluster):
    backend = make_backend()
    sessions = service_for(backend)
    session = begin(sessions, request_for(backend, capacity=1))
    (pod,) = of_session(cluster, PODS, session.id)
    meta = pod["metadata"]
    cluster.locked(
        lambda: cluster.emulator.delete(cluster.emulator.key(PODS, meta["namespace"], meta["name"]))
    )
    assert {x.record.id: x.seen.stage for x in backend.observe_all()} == {session.id: Stage.GONE}
    assert sessions.reap() == [] and sessions.get(session.id).reason is Reason.LOST
    assert places(backend) == {}
    backend.start(request_for(backend, capacity=1))


def test_collect_frees_places_of_starts_that_never_finished(make_backend, clock):
    backend = make_backend()
    # A replica died between taking its place and creating its pod.
    taken = SLOT_RECORD.encode({"session": "dead-start", "taken": clock().isoformat()})
    backend.ledger.create(f"{SLOT_PREFIX}all.0", taken)
    with pytest.raises(CapacityExceeded):
        backend.start(request_for(backend, capacity=1))
    assert backend.collect(clock()) == []  # too young: maybe a start in progress
    assert backend.collect(clock() + timedelta(seconds=61)) == [f"{SLOT_PREFIX}all.0"]
    sessions = service_for(backend)
    started = begin(sessions, request_for(backend, capacity=1))
    assert wait_for(sessions, started.id, {SessionState.READY}).ready


@pytest.mark.parametrize("mode", ["pod", "helmrelease"])
def test_an_ended_session_frees_its_places_at_once(make_backend, cluster, mode):
    sessions = service_for(make_backend(mode))
    exits = {"env": [{"name": "STANDIN_EXIT_CODE", "value": "1"}]}
    failed = begin(sessions, request_for(sessions.backend, exits, capacity=1, user_capacity=1))
    assert wait_for(sessions, failed.id, {SessionState.FAILED}).reason is not None
    assert places(sessions.backend) == {}
    again = begin(sessions, request_for(sessions.backend, capacity=1, user_capacity=1))
    assert again.state is SessionState.CREATING
