"""A session's life on a real Docker daemon, as users and operators see it: the OVAS client
sequence over HTTP, a restart of ovas, a container dying, the reaper, one engine call per
list."""

from __future__ import annotations

import socket
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import requests

from backends.docker import containers as c
from ovas import create_app
from ovas.errors import SessionNotFound
from ovas.models import SessionState
from ovas.testing import wait_for
from ovas.testing.requests import STANDIN_EXIT_CODE, STANDIN_NEVER_READY, STANDIN_READY_DELAY

pytestmark = pytest.mark.docker


def test_ovas_client_sequence_over_http(backend, serve, engine, ours):
    server = serve(create_app({"TESTING": True, "REAP_INTERVAL": 0}, backend=backend))
    http = requests.Session()
    base = server.url
    versions = http.get(f"{base}/cfg/apps/kit-standin/versions").json()["items"]
    version = versions[0]["version"]
    profiles = http.get(f"{base}/cfg/apps/kit-standin/versions/{version}/profiles").json()
    assert [p["id"] for p in profiles["items"]] == ["standin"]

    body = {
        "id": "kit-standin",
        "profile": "standin",
        "version": version,
        "arguments": {"usd_stage_uri": "omniverse://nucleus/stage.usd"},
    }
    started = http.post(f"{base}/streaming/stream", json=body)
    assert started.status_code == 202, started.text
    session_id = started.json()["id"]
    assert started.json()["routes"] == {}

    deadline = time.monotonic() + 30
    while (answer := http.get(f"{base}/streaming/stream/{session_id}")).status_code != 200:
        assert answer.status_code == 202, answer.text
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.1)
    ready = answer.json()
    assert ready["status"] == {"condition": "ready", "message": "Session is active", "status": True}
    (address,) = ready["routes"]
    routes = {r["description"]: r for r in ready["routes"][address]["routes"]}
    assert routes["signaling"]["destination_port"] == 49100
    assert routes["media"] == {
        "description": "media",
        "protocol": "UDP",
        "source_port": routes["media"]["source_port"],
        "destination_port": 47998,
    }
    # What a client does next: connect to the signaling port it was given.
    with socket.create_connection((address, routes["signaling"]["source_port"]), timeout=2):
        pass
    (container,) = ours(session_id)
    env = engine.inspect_container(container["Id"])["Config"]["Env"]
    assert "USD_PATH=omniverse://nucleus/stage.usd" in env

    listed = http.get(f"{base}/streaming/stream").json()
    assert session_id in [s["id"] for s in listed["items"]]

    stopped = http.delete(f"{base}/streaming/stream", json={"id": session_id})
    assert (stopped.status_code, stopped.content) == (204, b"")
    assert http.get(f"{base}/streaming/stream/{session_id}").status_code == 404
    assert ours(session_id) == []


def test_a_new_ovas_process_sees_the_same_sessions(new_backend, standin_request):
    first = new_backend()
    ready = first.start(standin_request(username="ann"))
    slow = first.start(standin_request(env={STANDIN_READY_DELAY: "60"}, username="bob"))
    broken = first.start(standin_request(env={STANDIN_EXIT_CODE: "7"}))
    wait_for(first, ready.id, SessionState.READY)
    wait_for(first, broken.id, SessionState.FAILED)
    before = {s.id: s for s in first.list()}

    restarted = new_backend()
    after = {s.id: s for s in restarted.list()}
    assert after.keys() == before.keys() >= {ready.id, slow.id, broken.id}
    for session_id, seen in before.items():
        again = after[session_id]
        assert (again.state, again.routes, again.username, again.created_time) == (
            seen.state,
            seen.routes,
            seen.username,
            seen.created_time,
        )
    assert restarted.get(ready.id).state is SessionState.READY
    assert restarted.get(slow.id).state is SessionState.CREATING
    assert "code 7" in restarted.get(broken.id).message
    restarted.stop(slow.id)
    with pytest.raises(SessionNotFound):
        first.get(slow.id)


def test_a_container_killed_from_outside_fails_and_is_reaped(
    backend, standin_request, engine, ours
):
    session = backend.start(standin_request())
    ready = wait_for(backend, session.id, SessionState.READY)
    ports = {r.source_port for r in ready.routes}
    (container,) = ours(session.id)
    engine.kill(container["Id"])

    failed = wait_for(backend, session.id, SessionState.FAILED)
    assert "exited with code 137" in failed.message
    assert backend.reap(datetime.now(UTC)) == []  # within the grace period
    assert backend.get(session.id).state is SessionState.FAILED
    later = datetime.now(UTC) + timedelta(seconds=backend.reap_grace + 1)
    assert backend.reap(later) == [session.id]
    with pytest.raises(SessionNotFound):
        backend.get(session.id)
    assert ours(session.id) == []
    # Its host ports are free again: the next session may take them.
    again = wait_for(backend, backend.start(standin_request()).id, SessionState.READY)
    assert {r.source_port for r in again.routes} == ports


def test_a_session_past_its_deadline_is_failed_then_reaped(backend, standin_request, ours):
    session = backend.start(standin_request(env={STANDIN_NEVER_READY: "1"}, start_timeout=2))
    failed = wait_for(backend, session.id, SessionState.FAILED, timeout=10)
    assert "not ready within 2 seconds" in failed.message
    later = datetime.now(UTC) + timedelta(seconds=backend.reap_grace + 1)
    assert session.id in backend.reap(later)
    assert ours(session.id) == []


def test_reap_removes_what_carries_our_labels_but_is_no_session(
    backend, standin_request, engine, ours
):
    kept = backend.start(standin_request())
    junk = engine.create_container(
        "ovas/kit-standin:1.0.0", name="not-a-session", labels={c.SESSION: "junk"}
    )
    assert backend.reap(datetime.now(UTC)) == ["not-a-session"]
    assert junk["Id"] not in [s["Id"] for s in ours()]
    assert backend.get(kept.id).state is not SessionState.FAILED


def test_without_a_probe_ready_means_the_signaling_port_accepts(backend, standin_request):
    request = standin_request(env={STANDIN_READY_DELAY: "2"})
    request = replace(request, kit=replace(request.kit, startup_probe=None))
    session = backend.start(request)
    # Docker's port proxy accepts at once; the session is not ready before the app listens.
    assert backend.get(session.id).state is SessionState.CREATING
    ready = wait_for(backend, session.id, SessionState.READY)
    assert ready.state is SessionState.READY
    assert len(ready.routes) == 2


def test_listing_many_sessions_is_one_engine_call(backend, standin_request):
    sessions = [backend.start(standin_request(env={STANDIN_READY_DELAY: "30"})) for _ in range(4)]
    backend.pulls.join(timeout=10)  # the containers' starts, in the background, are done
    calls = []
    client = backend.engine.api()
    client.hooks["response"].append(lambda response, **kw: calls.append(response.url))
    try:
        listed = backend.list()
    finally:
        client.hooks["response"].pop()
    assert {s.id for s in sessions} <= {s.id for s in listed}
    assert len(calls) == 1 and "/containers/json" in calls[0]


def test_a_get_answers_within_about_a_second_while_starting(backend, standin_request):
    session = backend.start(standin_request(env={STANDIN_NEVER_READY: "1"}))
    for _ in range(3):
        began = time.monotonic()
        assert backend.get(session.id).state is SessionState.CREATING
        assert time.monotonic() - began < 1.5


def test_a_ready_session_outlives_its_start_deadline_and_a_restart(
    new_backend, standin_request, ours
):
    first = new_backend()
    session = first.start(standin_request(start_timeout=3))
    wait_for(first, session.id, SessionState.READY)
    time.sleep(3.5)  # past its start deadline
    # A restarted ovas whose probes cannot reach the session (as when Kit is busy loading a
    # stage) still knows it was ready: a live stream is never failed by its start deadline.
    restarted = new_backend(probe_host="127.0.0.2")
    assert restarted.get(session.id).state is SessionState.READY
    later = datetime.now(UTC) + timedelta(seconds=restarted.reap_grace + 1)
    assert session.id not in restarted.reap(later)
    assert ours(session.id)
