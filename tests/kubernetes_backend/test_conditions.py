"""A passing condition is not a final one: a pod waiting for a node the autoscaler is adding,
for a GPU another session is releasing, or for a registry that timed out once keeps its
session creating (with the cluster's words) until it is ready. Only what cannot pass fails
at once, naming its cause; so does a pod the cluster takes away."""

from __future__ import annotations

import time

import pytest
from support.kube_events import NodeGroup, evict, lose_node, preempt
from support.kube_requests import wait_for

from kubernetes_backend.steps import PODS, of_session, outcome_of, request_for, wait_until
from kubernetes_backend.steps import start as begin
from ovas.models import Reason, SessionState
from ovas.testing import service_for

pytestmark = pytest.mark.kubernetes
READY = {SessionState.READY}
FAILED = {SessionState.FAILED}
MODES = ["pod", "helmrelease"]
GPU_POOL = {"nodeSelector": {"pool": "gpu"}}


def messages_until(sessions, session_id: str, states: set[SessionState], timeout: float = 10):
    """Every message the session showed until it reached one of `states`, and that state."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        session = sessions.get(session_id)
        if not seen or seen[-1] != session.message:
            seen.append(session.message)
        if session.state in states:
            return seen, session
        time.sleep(0.02)
    raise AssertionError(f"still {session.state} after {timeout}s: {seen}")


def key_of(cluster, session_id: str) -> tuple:
    (pod,) = of_session(cluster, PODS, session_id)
    return cluster.emulator.key(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"])


@pytest.mark.parametrize("mode", MODES)
def test_a_node_pool_scaling_up_from_zero_keeps_the_session_creating(make_backend, cluster, mode):
    cluster.cluster.autoscaler.groups = [NodeGroup("gpu-pool", labels={"pool": "gpu"})]
    cluster.cluster.autoscaler.delay = 0.5
    sessions = service_for(make_backend(mode))
    request = request_for(sessions.backend, GPU_POOL)
    begin(sessions, request)
    seen, ready = messages_until(sessions, request.id, READY | FAILED)
    assert ready.state is SessionState.READY
    waiting = [m for m in seen if "autoscaler" in m]
    assert waiting, seen
    assert waiting[-1].startswith(
        "Waiting for a node: 0/3 nodes are available: 3 node(s) didn't match Pod's node "
        "affinity/selector. The cluster autoscaler is adding one: pod triggered scale-up: "
        "[{gpu-pool 0->1 (max: 1)}] (",
    )


def test_a_pod_no_new_node_would_fit_fails_at_once(make_backend, cluster):
    cluster.cluster.autoscaler.groups = [NodeGroup("gpu-pool", gpus=4, max_size=3)]
    sessions = service_for(make_backend())
    request = request_for(sessions.backend, {"resources": {"limits": {"nvidia.com/gpu": "8"}}})
    begin(sessions, request)
    failed = wait_for(sessions, request.id, FAILED)
    assert failed.reason is Reason.NO_GPU
    assert failed.message == (
        "No GPU can be had for the session: 0/3 nodes are available: 3 Insufficient "
        "nvidia.com/gpu. The cluster autoscaler cannot add one: pod didn't trigger scale-up "
        "(it wouldn't fit if a new node is added): 1 Insufficient nvidia.com/gpu"
    )
    assert wait_until(lambda: not of_session(cluster, PODS, request.id))


def test_a_node_group_at_its_maximum_keeps_the_session_waiting(make_backend, cluster):
    cluster.cluster.autoscaler.groups = [NodeGroup("gpu-pool", labels={"pool": "gpu"}, size=1)]
    sessions = service_for(make_backend())
    request = request_for(sessions.backend, GPU_POOL)
    begin(sessions, request)
    assert wait_until(lambda: "adds none yet" in sessions.get(request.id).message)
    waiting = sessions.get(request.id)
    assert waiting.state is SessionState.CREATING
    assert "pod didn't trigger scale-up: 1 max node group size reached" in waiting.message


def test_without_an_autoscaler_a_pod_waits_for_a_node_until_its_deadline(
    make_backend, cluster, clock
):
    sessions = service_for(make_backend())
    request = request_for(sessions.backend, GPU_POOL)
    begin(sessions, request)
    assert wait_until(lambda: "Waiting for a node: 0/3" in sessions.get(request.id).message)
    assert sessions.get(request.id).state is SessionState.CREATING
    clock.advance((request.deadline - clock()).total_seconds())
    failed = sessions.get(request.id)
    assert failed.reason is Reason.START_TIMEOUT
    assert failed.message.startswith("The session was not ready within 120 seconds (Waiting for")
    assert "didn't match Pod's node affinity/selector" in failed.message


def test_a_session_waits_for_the_gpu_another_session_releases(make_backend, cluster):
    sessions = service_for(make_backend())
    four_gpus = {"resources": {"limits": {"nvidia.com/gpu": "4"}}}
    running = [begin(sessions, request_for(sessions.backend, four_gpus)) for _ in range(3)]
    for session in running:
        wait_for(sessions, session.id, READY)
    waiting = begin(sessions, request_for(sessions.backend, four_gpus))
    assert wait_until(lambda: "Insufficient" in sessions.get(waiting.id).message)
    seen = sessions.get(waiting.id)
    assert seen.state is SessionState.CREATING
    assert seen.message.startswith(
        "Waiting for a node: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu. ("
    )
    sessions.stop(running[0].id)
    assert wait_for(sessions, waiting.id, READY | FAILED).ready


@pytest.mark.parametrize("mode", MODES)
def test_a_registry_timeout_then_a_pull_that_succeeds_is_ready(make_backend, cluster, mode):
    cluster.cluster.flaky_images = {"*flaky*": 1}
    cluster.cluster.pull_seconds = 0.3
    sessions = service_for(make_backend(mode))
    request = request_for(sessions.backend, {"image": {"repository": "registry.example/flaky"}})
    begin(sessions, request)
    seen, ready = messages_until(sessions, request.id, READY | FAILED)
    assert ready.state is SessionState.READY, ready.message
    retried = [m for m in seen if "retrying" in m]
    assert retried, seen
    assert retried[0].startswith("Pulling the image registry.example/flaky:1.0.0: retrying after")
    assert "i/o timeout" in retried[0]


@pytest.mark.parametrize(
    ("repository", "words"),
    [
        ("registry.example/does-not-exist", "registry.example/does-not-exist:1.0.0: not found"),
        ("registry.example/private-kit", "authorization failed"),
    ],
)
def test_an_image_that_no_retry_can_pull_fails_at_once(make_backend, cluster, repository, words):
    """Also once the kubelet backs off: its Events say why."""
    cluster.cluster.pull_seconds = 0.02
    sessions = service_for(make_backend())
    request = request_for(sessions.backend, {"image": {"repository": repository}})
    cluster.cluster.running = False
    begin(sessions, request)
    cluster.cluster.running = True
    backing_off = 'Back-off pulling image "'
    assert wait_until(lambda: backing_off in str(of_session(cluster, PODS, request.id)))
    failed = sessions.get(request.id)
    assert failed.reason is Reason.IMAGE_PULL
    assert failed.message.startswith(
        f"The Kit image could not be pulled: {repository}:1.0.0 (ImagePullBackOff): Failed to "
        f'pull image "{repository}:1.0.0"'
    )
    assert words in failed.message


@pytest.mark.parametrize("mode", MODES)
def test_an_evicted_pod_names_the_eviction(make_backend, cluster, mode):
    sessions = service_for(make_backend(mode))
    session = begin(sessions, request_for(sessions.backend))
    wait_for(sessions, session.id, READY)
    said = "The node was low on resource: memory. Threshold quantity: 100Mi, available: 12Mi."
    key = key_of(cluster, session.id)
    cluster.locked(lambda: evict(cluster.emulator, key, said))
    failed = sessions.get(session.id)
    assert (failed.state, failed.reason) == (SessionState.FAILED, Reason.EVICTED)
    assert failed.message == f"The session's pod was evicted: {said}"


@pytest.mark.parametrize("mode", MODES)
def test_a_preempted_pod_names_the_preemption(make_backend, cluster, mode):
    sessions = service_for(make_backend(mode))
    session = begin(sessions, request_for(sessions.backend))
    wait_for(sessions, session.id, READY)
    key = key_of(cluster, session.id)
    cluster.cluster.running = False  # its graceful deletion takes a while
    cluster.locked(lambda: preempt(cluster.emulator, key))
    failed = sessions.get(session.id)
    assert (failed.state, failed.reason) == (SessionState.FAILED, Reason.PREEMPTED)
    assert failed.message == (
        "The session was preempted by a workload of higher priority: default-scheduler: "
        "preempting to accommodate a higher priority pod"
    )
    # Its outcome is kept, and its pod is gone at once: it speaks for the session no more.
    assert outcome_of(cluster, session.id) is not None
    assert of_session(cluster, PODS, session.id) == []
    cluster.cluster.running = True
    assert sessions.get(session.id) == failed


@pytest.mark.parametrize("mode", MODES)
def test_a_lost_node_names_the_node(make_backend, cluster, mode):
    sessions = service_for(make_backend(mode))
    session = begin(sessions, request_for(sessions.backend))
    wait_for(sessions, session.id, READY)
    (pod,) = of_session(cluster, PODS, session.id)
    cluster.cluster.running = False
    cluster.locked(lambda: lose_node(cluster.emulator, pod["spec"]["nodeName"]))
    failed = sessions.get(session.id)
    assert (failed.state, failed.reason) == (SessionState.FAILED, Reason.NODE_LOST)
    assert failed.message == (
        "The session's node was lost: Taint manager: deleting due to NoExecute taint"
    )
    cluster.cluster.running = True


@pytest.mark.parametrize("mode", MODES)
def test_the_pods_events_show_while_creating(make_backend, cluster, mode):
    sessions = service_for(make_backend(mode))
    request = request_for(sessions.backend)
    cluster.cluster.running = False
    begin(sessions, request)

    def step() -> None:
        cluster.locked(lambda: cluster.cluster.step(time.monotonic()))

    step()  # Flux installs the chart (helmrelease), or the scheduler places the pod
    while not of_session(cluster, PODS, request.id) or not of_session(cluster, PODS, request.id)[0][
        "spec"
    ].get("nodeName"):
        step()
    message = sessions.get(request.id).message
    assert message.startswith(
        "Pulling the image ovas/kit-standin:1.0.0 and creating the container; "
        'Pulling image "ovas/kit-standin:1.0.0" (0 s so far; '
    )
    cluster.cluster.running = True
