"""Sessions whose image must be pulled first, from a local registry serving the stand-in
image slowly: visible while pulling (with progress), cancelled by a stop, resumed after a
crash of ovas, failed with the reason when the image cannot be had."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from support.registry import Registry

from ovas import create_app
from ovas.errors import SessionNotFound
from ovas.models import Reason, SessionState
from ovas.testing import service_for

pytestmark = pytest.mark.docker
WORKER = Path(__file__).resolve().parents[1] / "support" / "start_worker.py"


@pytest.fixture(scope="module")
def registry(engine):
    saved = b"".join(engine.get_image("ovas/kit-standin:1.0.0"))
    served = Registry(saved, rate=200_000, padding=384 * 1024)
    yield served
    served.close()


@pytest.fixture
def new_image(registry, engine):
    """`new_image()`: a reference the daemon does not hold yet; removed at the end."""
    made = []

    def make() -> str:
        made.append(registry.image(f"standin-{uuid.uuid4().hex[:8]}"))
        return made[-1]

    yield make
    registry.gate.set()
    for image in made:
        for container in engine.containers(all=True, filters={"ancestor": image}):
            engine.remove_container(container["Id"], force=True)
        for held in engine.images(name=image.rsplit(":", 1)[0]):
            engine.remove_image(held["Id"], force=True)


def wait_until(check, timeout=30.0, every=0.1):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every)
    return result


def test_a_session_is_visible_with_pull_progress_then_ready(
    new_backend, standin_request, new_image
):
    backend = new_backend()
    sessions = service_for(backend)
    image = new_image()
    started = backend.start(standin_request(image=image, pull_policy="IfNotPresent"))
    assert started.seen.detail == f"Pulling the image {image}"
    session_id = started.record.id
    assert sessions.get(session_id).message.startswith(f"Pulling the image {image}")

    progress = wait_until(lambda: "%" in (m := sessions.get(session_id).message) and m)
    assert progress.startswith(f"Pulling the image {image}: ")
    # Another ovas process sees the session, pulling, from the engine's records alone.
    other = service_for(new_backend())
    seen = other.get(session_id)
    assert seen.state is SessionState.CREATING and seen.message.startswith("Pulling the image")
    assert session_id in {s.id for s in other.all()}

    ready = wait_until(lambda: (s := sessions.get(session_id)).ready and s)
    assert ready.routes


def test_stopping_during_the_pull_leaves_nothing(
    backend, standin_request, new_image, registry, ours
):
    registry.gate.clear()  # the registry stalls: the pull cannot finish yet
    sessions = service_for(backend)
    session_id = backend.start(standin_request(image=new_image(), pull_policy="Always")).record.id
    assert sessions.get(session_id).state is SessionState.CREATING
    sessions.stop(session_id)
    with pytest.raises(SessionNotFound):
        sessions.get(session_id)
    registry.gate.set()
    wait_until(lambda: not backend.jobs.running_here(session_id))
    assert ours(session_id) == []


def test_a_pull_survives_a_crash_of_ovas(
    docker_daemon, catalog_dir, new_backend, new_image, registry
):
    registry.gate.clear()
    image = new_image()
    options = {
        "docker_host": docker_daemon.url,
        "catalog": str(catalog_dir),
        "count": 1,
        "image": image,
        "ready_delay": 0,
        "linger": 120,
    }
    crashing = subprocess.Popen(
        [sys.executable, str(WORKER), json.dumps(options)], stdout=subprocess.PIPE, text=True
    )
    (session_id,) = json.loads(crashing.stdout.readline())["started"]
    crashing.send_signal(signal.SIGKILL)
    crashing.wait()

    restarted = new_backend()
    sessions = service_for(restarted)
    pulling = sessions.get(session_id)  # finds no live puller: resumes the pull
    assert pulling.state is SessionState.CREATING
    assert restarted.jobs.running_here(session_id)
    registry.gate.set()
    ready = wait_until(lambda: (s := sessions.get(session_id)).ready and s)
    assert ready.state is SessionState.READY


def test_an_image_that_cannot_be_pulled_fails_with_the_reason(backend, standin_request):
    unreachable = "127.0.0.1:1/ovas/nothing:1.0.0"
    sessions = service_for(backend)
    started = backend.start(standin_request(image=unreachable, pull_policy="IfNotPresent"))
    failed = wait_until(
        lambda: (s := sessions.get(started.record.id)).state is SessionState.FAILED and s
    )
    assert failed.reason is Reason.IMAGE_PULL
    assert failed.message.startswith(f"The Kit image could not be pulled: {unreachable}: ")
    assert "connection refused" in failed.message


def test_a_missing_image_under_pull_policy_never_fails_at_once(backend, standin_request):
    sessions = service_for(backend)
    started = backend.start(standin_request(image="ovas/not-built:1", pull_policy="Never"))
    failed = sessions.get(started.record.id)
    assert (failed.state, failed.reason) == (SessionState.FAILED, Reason.IMAGE_PULL)
    assert failed.message == (
        "The Kit image could not be pulled: the image ovas/not-built:1 is not on the Docker "
        "engine and the profile's pullPolicy is Never"
    )


@pytest.mark.parametrize("pull_policy", ["IfNotPresent", "Always", "Never"])
def test_a_spec_the_engine_refuses_fails_with_its_words_not_a_500(
    backend, standin_request, pull_policy
):
    # The core refuses such a reference before any backend is asked; a third-party profile
    # path or an engine stricter than ovas may still hand the engine one it refuses (400).
    sessions = service_for(backend)
    started = backend.start(standin_request(image="UPPER/Case:1", pull_policy=pull_policy))
    failed = wait_until(
        lambda: (s := sessions.get(started.record.id)).state is SessionState.FAILED and s
    )
    assert failed.reason in (Reason.CREATE_FAILED, Reason.IMAGE_PULL)
    assert "invalid reference format: repository name must be lowercase" in failed.message
    client = create_app({"TESTING": True, "REAP_INTERVAL": 0}, backend=backend).test_client()
    answer = client.get(f"/stream/{started.record.id}")
    assert answer.status_code == 410
    assert answer.json["status"]["message"] == failed.message
