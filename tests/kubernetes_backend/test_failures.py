"""Sessions fail at once, with the reason and the cluster's own words, when the cluster cannot
run them; and say what they are waiting for while they start."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from support.kube_events import NodeGroup
from support.kube_requests import wait_for

from kubernetes_backend.steps import PODS, kubelet, of_session, request_for
from kubernetes_backend.steps import start as begin
from ovas.models import Reason, SessionState
from ovas.testing import service_for

pytestmark = pytest.mark.kubernetes
FAILED = {SessionState.FAILED}
READY = {SessionState.READY}
MODES = ["pod", "helmrelease"]


def _terminated(code: int, why: str, **extra):
    def change(pod):
        status = pod["status"]
        status["phase"] = "Failed"
        status["conditions"] = [{"type": "Ready", "status": "False"}]
        entry = status["containerStatuses"][0]
        entry.update(ready=False, state={"terminated": {"exitCode": code, "reason": why}})
        status.update(extra)

    return change


@pytest.mark.parametrize("mode", MODES)
def test_an_image_that_cannot_be_pulled_fails_at_once(make_backend, mode):
    sessions = service_for(make_backend(mode))
    request = request_for(
        sessions.backend, {"image": {"repository": "registry.example/does-not-exist"}}
    )
    began = time.monotonic()
    begin(sessions, request)
    failed = wait_for(sessions, request.id, FAILED)
    assert (failed.state, failed.reason) == (SessionState.FAILED, Reason.IMAGE_PULL)
    assert failed.message.startswith("The Kit image could not be pulled: ")
    assert "registry.example/does-not-exist:1.0.0 (" in failed.message
    assert "not found" in failed.message
    assert time.monotonic() - began < 5  # the deadline is two minutes away


def test_a_node_selector_no_node_group_matches_is_unschedulable(make_backend, cluster):
    cluster.cluster.autoscaler.groups = [NodeGroup("gpu-pool", labels={"gpu": "l40s"})]
    sessions = service_for(make_backend())
    request = request_for(sessions.backend, {"nodeSelector": {"gpu": "h100"}})
    begin(sessions, request)
    failed = wait_for(sessions, request.id, FAILED)
    assert failed.reason is Reason.UNSCHEDULABLE
    assert failed.message.startswith("No node can run the session: 0/3 nodes are available")
    assert "didn't match Pod's node affinity/selector" in failed.message
    assert "it wouldn't fit if a new node is added" in failed.message


@pytest.mark.parametrize("mode", MODES)
def test_a_kit_app_killed_for_memory_fails_as_oom(make_backend, cluster, mode):
    sessions = service_for(make_backend(mode))
    session = begin(sessions, request_for(sessions.backend))
    wait_for(sessions, session.id, READY)
    kubelet(cluster, session.id, _terminated(137, "OOMKilled"))
    failed = sessions.get(session.id)
    assert (failed.state, failed.reason) == (SessionState.FAILED, Reason.OOM)
    assert failed.message.startswith("The Kit app was killed for want of memory (out of memory)")


def test_a_container_that_cannot_be_created_fails(make_backend, cluster):
    sessions = service_for(make_backend())
    session = begin(sessions, request_for(sessions.backend))
    wait_for(sessions, session.id, READY)

    def refuse(pod):
        pod["status"]["containerStatuses"][0]["state"] = {
            "waiting": {
                "reason": "CreateContainerConfigError",
                "message": 'secret "ngc" not found',
            }
        }

    kubelet(cluster, session.id, refuse)
    failed = sessions.get(session.id)
    assert failed.reason is Reason.CREATE_FAILED
    assert failed.message == (
        'The Kit container could not be started: CreateContainerConfigError: secret "ngc" not found'
    )


def test_a_chart_pod_whose_app_exits_fails_with_its_exit_code(make_backend):
    """The chart's pod restarts its container: its first exit is the session's end."""
    sessions = service_for(make_backend("helmrelease"))
    exits = {"env": [{"name": "STANDIN_EXIT_CODE", "value": "42"}]}
    request = request_for(sessions.backend, exits)
    begin(sessions, request)
    failed = wait_for(sessions, request.id, FAILED)
    assert failed.reason is Reason.EXITED
    assert failed.message.startswith("The Kit app exited with code 42")


@pytest.mark.parametrize(
    ("code", "why", "reason", "message"),
    [
        (
            139,
            "Error",
            Reason.CRASH_LOOP,
            "The Kit app keeps crashing: restarted 5 times; last exit code 139",
        ),
        (
            137,
            "OOMKilled",
            Reason.OOM,
            "The Kit app was killed for want of memory (out of memory):",
        ),
    ],
)
def test_a_chart_pod_that_keeps_crashing_fails_with_its_cause(
    make_backend, cluster, code, why, reason, message
):
    sessions = service_for(make_backend("helmrelease"))
    session = begin(sessions, request_for(sessions.backend))
    wait_for(sessions, session.id, READY)

    def crash_loop(pod):
        entry = pod["status"]["containerStatuses"][0]
        entry.update(
            ready=False,
            restartCount=5,
            state={"waiting": {"reason": "CrashLoopBackOff"}},
            lastState={"terminated": {"exitCode": code, "reason": why}},
        )

    kubelet(cluster, session.id, crash_loop)
    failed = sessions.get(session.id)
    assert failed.reason is reason
    assert failed.message.startswith(message)


def test_a_pod_whose_container_exits_fails_with_its_exit_code(make_backend):
    sessions = service_for(make_backend("pod"))
    exits = {"env": [{"name": "STANDIN_EXIT_CODE", "value": "137"}]}
    request = request_for(sessions.backend, exits)
    begin(sessions, request)
    failed = wait_for(sessions, request.id, FAILED)
    assert failed.reason is Reason.EXITED
    assert failed.message.startswith("The Kit app exited with code 137")


def test_a_chart_that_cannot_be_installed_fails(make_backend):
    sessions = service_for(make_backend("helmrelease"))
    request = request_for(sessions.backend)
    request = replace(request, version=replace(request.version, helm_chart_version="0.0.0-missing"))
    begin(sessions, request)
    failed = wait_for(sessions, request.id, FAILED)
    assert failed.reason is Reason.INSTALL_FAILED
    assert failed.message == (
        "The session's chart could not be installed: chart kit-appstreaming-session "
        "0.0.0-missing: chart kit-appstreaming-session 0.0.0-missing not found in repository"
    )


@pytest.mark.parametrize("mode", MODES)
def test_a_pod_removed_outside_ovas_after_it_was_ready(make_backend, cluster, mode):
    """A pod gone once the session was ready, its node still there, is lost: a release
    keeps the record, and so does a pod-mode session's Service (test_lost_nodes.py)."""
    sessions = service_for(make_backend(mode))
    session = begin(sessions, request_for(sessions.backend))
    wait_for(sessions, session.id, READY)
    (pod,) = of_session(cluster, PODS, session.id)
    key = cluster.emulator.key(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"])
    cluster.locked(lambda: cluster.emulator.remove(key))
    lost = sessions.get(session.id)
    assert (lost.state, lost.reason) == (SessionState.FAILED, Reason.LOST)


@pytest.mark.parametrize("mode", MODES)
def test_progress_shows_while_creating(make_backend, cluster, mode):
    sessions = service_for(make_backend(mode))
    request = request_for(
        sessions.backend, {"env": [{"name": "STANDIN_READY_DELAY", "value": "30"}]}
    )
    cluster.cluster.running = False
    begin(sessions, request)
    first = sessions.get(request.id).message
    assert first.startswith(
        "Installing the chart kit-appstreaming-session 1.11.0 (0 s so far; it fails if not "
        "ready by "
        if mode == "helmrelease"
        else "Waiting for a node to run the session (0 s so far; it fails if not ready by "
    )
    cluster.cluster.running = True
    seen = set()
    deadline = time.monotonic() + 5
    while not any("Starting the Kit application" in m for m in seen) and (
        time.monotonic() < deadline
    ):
        # What it does, without the latest Event's words and the time so far.
        seen.add(sessions.get(request.id).message.partition(" (")[0].partition("; ")[0])
        time.sleep(0.01)
    assert "Pulling the image ovas/kit-standin:1.0.0 and creating the container" in seen
    assert "Starting the Kit application" in seen
