"""Admission is atomic in the API server: replicas starting sessions at the same moment never
admit more than the capacity, and capacity comes back when sessions go."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from support.kube_requests import wait_for

from backends.kubernetes import objects as o
from kubernetes_backend.steps import request_for
from kubernetes_backend.steps import start as begin
from ovas.errors import CapacityExceeded, UserCapacityExceeded
from ovas.lifecycle import Stage
from ovas.models import SessionState
from ovas.testing import service_for

pytestmark = pytest.mark.kubernetes


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
    slots = [c for c in cluster.objects("v1/configmaps") if o.SLOT in c["metadata"]["labels"]]
    assert sorted(s["metadata"]["name"] for s in slots) == [f"ovas-slot-{k}" for k in range(3)]
    assert {s["data"]["session"] for s in slots} == set(outcomes["started"])
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
    assert len(cluster.objects("v1/pods")) == 1
    assert len(cluster.objects("v1/configmaps")) == 2  # one shared slot, one of ann's


def test_slots_are_owned_by_the_pod_and_collected_with_it(make_backend, cluster):
    backend = make_backend()
    session = begin(service_for(backend), request_for(backend, capacity=1))
    (slot,) = cluster.objects("v1/configmaps")
    (pod,) = cluster.objects("v1/pods")
    assert slot["metadata"]["ownerReferences"][0]["uid"] == pod["metadata"]["uid"]
    # Someone deletes the pod by hand: the cluster's garbage collector frees the slot.
    cluster.locked(lambda: cluster.emulator.delete(cluster.emulator.key("v1/pods", *_where(pod))))
    deadline = time.monotonic() + 5
    while cluster.objects("v1/configmaps") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cluster.objects("v1/configmaps") == []
    # The session's Service keeps its record, which holds no slot: it is seen gone.
    seen = {x.record.id: x.seen.stage for x in backend.observe_all()}
    assert seen == {session.id: Stage.GONE}
    backend.start(request_for(backend, capacity=1))


def _where(obj):
    return obj["metadata"]["namespace"], obj["metadata"]["name"]


def test_collect_frees_slots_of_starts_that_never_finished(make_backend, cluster, clock):
    backend = make_backend()
    request = request_for(backend, capacity=1)
    # A replica died between taking its slot and creating the pod.
    backend.admission.acquire(request)
    with pytest.raises(CapacityExceeded):
        backend.start(request_for(backend, capacity=1))
    assert backend.collect(clock()) == []  # too young: maybe a start in progress
    assert backend.collect(clock() + timedelta(seconds=61)) == ["configmap/ovas-slot-0"]
    sessions = service_for(backend)
    started = begin(sessions, request_for(backend, capacity=1))
    assert wait_for(sessions, started.id, {SessionState.READY}).ready


@pytest.mark.parametrize("mode", ["pod", "helmrelease"])
def test_an_ended_session_frees_its_slots_at_once(make_backend, cluster, mode):
    sessions = service_for(make_backend(mode))
    exits = {"env": [{"name": "STANDIN_EXIT_CODE", "value": "1"}]}
    failed = begin(sessions, request_for(sessions.backend, exits, capacity=1, user_capacity=1))
    assert wait_for(sessions, failed.id, {SessionState.FAILED}).reason is not None
    slots = [c for c in cluster.objects("v1/configmaps") if o.SLOT in c["metadata"]["labels"]]
    assert slots == []
    again = begin(sessions, request_for(sessions.backend, capacity=1, user_capacity=1))
    assert again.state is SessionState.CREATING
