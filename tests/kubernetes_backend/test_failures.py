"""Sessions fail at once, saying why, when the cluster cannot run them; and say what they are
waiting for while they start."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from support.kube_requests import request_for, wait_for

from ovas.models import SessionState

pytestmark = pytest.mark.kubernetes
FAILED = {SessionState.FAILED}


@pytest.mark.parametrize("mode", ["pod", "helmrelease"])
def test_an_image_that_cannot_be_pulled_fails_at_once(make_backend, mode):
    backend = make_backend(mode)
    request = request_for(backend, {"image": {"repository": "registry.example/does-not-exist"}})
    began = time.monotonic()
    backend.start(request)
    failed = wait_for(backend, request.id, FAILED)
    assert failed.state is SessionState.FAILED
    assert "registry.example/does-not-exist:1.0.0 cannot be pulled" in failed.message
    assert time.monotonic() - began < 5  # the deadline is two minutes away


@pytest.mark.parametrize("mode", ["pod", "helmrelease"])
def test_no_free_gpu_fails_with_the_schedulers_reason(make_backend, mode):
    backend = make_backend(mode)
    request = request_for(backend, {"resources": {"limits": {"nvidia.com/gpu": "8"}}})
    backend.start(request)
    failed = wait_for(backend, request.id, FAILED)
    assert failed.state is SessionState.FAILED
    assert "0/3 nodes are available: 3 Insufficient nvidia.com/gpu." in failed.message


def test_gpus_in_use_leave_no_room_for_another_session(make_backend, cluster):
    backend = make_backend()
    four_gpus = {"resources": {"limits": {"nvidia.com/gpu": "4"}}}
    requests = [request_for(backend, four_gpus) for _ in range(4)]
    for request in requests:
        backend.start(request)
    seen = [wait_for(backend, r.id, {SessionState.READY, *FAILED}) for r in requests]
    assert sorted(s.state for s in seen) == sorted([SessionState.READY] * 3 + [SessionState.FAILED])
    failed = next(s for s in seen if not s.ready)
    backend.stop(next(s.id for s in seen if s.ready))
    # The failed session's pod is still pending, so the scheduler gives it the freed GPUs,
    # as a real one would; the session stays failed (a client was told so), to be reaped.
    deadline = time.monotonic() + 5
    while not _scheduled(cluster, failed.id) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _scheduled(cluster, failed.id)
    time.sleep(0.3)
    assert backend.get(failed.id).state is SessionState.FAILED
    assert backend.get(failed.id).message == failed.message


def _scheduled(cluster, session_id: str) -> bool:
    pods = [p for p in cluster.objects("v1/pods") if session_id in p["metadata"]["name"]]
    return bool(pods and pods[0]["spec"].get("nodeName"))


def test_a_node_selector_no_node_matches_fails(make_backend):
    backend = make_backend()
    request = request_for(backend, {"nodeSelector": {"gpu": "h100"}})
    backend.start(request)
    failed = wait_for(backend, request.id, FAILED)
    assert "didn't match Pod's node affinity/selector" in failed.message


def test_a_chart_pod_that_keeps_crashing_fails_with_its_exit_code(make_backend):
    backend = make_backend("helmrelease")
    request = request_for(backend, {"env": [{"name": "STANDIN_EXIT_CODE", "value": "42"}]})
    backend.start(request)
    failed = wait_for(backend, request.id, FAILED)
    assert failed.message == "The Kit container keeps crashing; last exit code 42"


def test_a_pod_whose_container_exits_fails_with_its_exit_code(make_backend):
    backend = make_backend("pod")
    request = request_for(backend, {"env": [{"name": "STANDIN_EXIT_CODE", "value": "137"}]})
    backend.start(request)
    assert wait_for(backend, request.id, FAILED).message == (
        "The Kit container exited with code 137"
    )


def test_a_chart_that_cannot_be_installed_fails(make_backend):
    backend = make_backend("helmrelease")
    request = request_for(backend)
    request = replace(request, version=replace(request.version, helm_chart_version="0.0.0-missing"))
    backend.start(request)
    failed = wait_for(backend, request.id, FAILED)
    assert "kit-appstreaming-session 0.0.0-missing cannot be installed" in failed.message


@pytest.mark.parametrize("mode", ["pod", "helmrelease"])
def test_progress_shows_while_creating(make_backend, cluster, mode):
    backend = make_backend(mode)
    request = request_for(backend, {"env": [{"name": "STANDIN_READY_DELAY", "value": "30"}]})
    cluster.cluster.running = False
    backend.start(request)
    first = backend.get(request.id).message
    assert first == (
        "Installing the chart kit-appstreaming-session 1.11.0"
        if mode == "helmrelease"
        else "Waiting for a node to run the session"
    )
    cluster.cluster.running = True
    seen = set()
    deadline = time.monotonic() + 5
    while "Starting the Kit application" not in seen and time.monotonic() < deadline:
        seen.add(backend.get(request.id).message)
        time.sleep(0.01)
    assert "Pulling the image ovas/kit-standin:1.0.0 and creating the container" in seen
    assert "Starting the Kit application" in seen
