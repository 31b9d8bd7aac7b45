"""A session's life on a real Docker daemon, as users and operators see it: the OVAS client
sequence over HTTP, a restart of ovas, a container dying, apps that quit, the clocks through
a restart, the reaper, one engine call per list."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from dataclasses import replace

import pytest
import requests

from backends.docker import DockerBackend
from backends.docker import containers as c
from ovas import create_app
from ovas.errors import SessionNotFound
from ovas.events import SessionRemoved
from ovas.lifecycle import Mark
from ovas.models import Clocks, Reason, SessionState
from ovas.testing import FakeClock, service_for, wait_for
from ovas.testing.requests import (
    STANDIN_EXIT_CODE,
    STANDIN_NEVER_READY,
    STANDIN_READY_DELAY,
)

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
    (container,) = [s for s in ours(session_id) if s["Labels"][c.RECORD] == c.CONTAINER]
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
    wait_for(first, ready.record.id, SessionState.READY)
    wait_for(first, broken.record.id, SessionState.FAILED)
    before = {s.id: s for s in service_for(first).all()}

    restarted = new_backend()
    after = {s.id: s for s in service_for(restarted).all()}
    assert after.keys() == before.keys() >= {ready.record.id, slow.record.id, broken.record.id}
    for session_id, seen in before.items():
        again = after[session_id]
        assert (again.state, again.routes, again.username, again.created_time) == (
            seen.state,
            seen.routes,
            seen.username,
            seen.created_time,
        )
    sessions = service_for(restarted)
    assert sessions.get(ready.record.id).state is SessionState.READY
    assert sessions.get(slow.record.id).state is SessionState.CREATING
    assert "code 7" in sessions.get(broken.record.id).message
    restarted.stop(slow.record.id)
    with pytest.raises(SessionNotFound):
        first.observe(slow.record.id)


def test_a_container_killed_from_outside_fails_and_is_reaped(
    new_backend, standin_request, engine, ours
):
    clock = FakeClock(ticking=True)
    backend = new_backend(now=clock)
    sessions = service_for(backend, retention=600)
    session = backend.start(standin_request())
    ready = wait_for(sessions, session.record.id, SessionState.READY)
    sessions.get(ready.id)  # its clients are counted, from its process id
    assert backend.clients.remembered == 1
    (container,) = [s for s in ours(ready.id) if s["Labels"][c.RECORD] == c.CONTAINER]
    engine.kill(container["Id"])

    failed = wait_for(sessions, ready.id, SessionState.FAILED)
    assert (failed.reason, "exited with code 137" in failed.message) == (Reason.EXITED, True)
    # Polled by id alone (as the web viewer does), it keeps nothing of it in memory.
    assert backend.clients.remembered == 0
    assert sessions.reap() == []  # kept for its retention, holding nothing
    assert sessions.get(ready.id).state is SessionState.FAILED
    clock.advance(601)
    assert sessions.reap() == [ready.id]
    with pytest.raises(SessionNotFound):
        sessions.get(ready.id)
    assert ours(ready.id) == []


def test_a_failure_keeps_its_last_log_lines_for_its_retention(backend, standin_request):
    sessions = service_for(backend)
    session = backend.start(standin_request(env={STANDIN_EXIT_CODE: "3"}))
    failed = wait_for(sessions, session.record.id, SessionState.FAILED)
    assert failed.reason is Reason.EXITED
    assert "code 3" in failed.message
    assert ": last log lines: " in failed.message
    # Docker may interleave the app's stdout and stderr either way.
    assert "stand-in Kit app: USD_PATH=" in failed.message
    assert "exiting with code 3 as asked" in failed.message
    logs = backend.logs(failed.id)
    assert any("exiting with code 3 as asked" in line for line in logs)


def test_the_idle_clock_runs_on_through_a_restart_of_ovas(new_backend, standin_request, ours):
    clock = FakeClock(ticking=True)
    clocks = Clocks(connect_timeout=300, idle_timeout=300, max_lifetime=0)
    first = new_backend(now=clock)
    sessions = service_for(first, clocks=clocks)
    started = first.start(standin_request(clocks=clocks))
    ready = wait_for(sessions, started.record.id, SessionState.READY)
    signaling = next(r for r in ready.routes if r.description == "signaling")
    with socket.create_connection((ready.host, signaling.source_port), timeout=5):
        clock.advance(5)  # past the moment a probe of ours might still be counted
        assert sessions.get(ready.id).connected is True
    clock.advance(1)
    left = wait_for(sessions, ready.id, SessionState.READY)
    deadline = time.monotonic() + 10
    while sessions.get(ready.id).connected is not False and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sessions.get(ready.id).connected is False
    clock.advance(200)

    restarted = new_backend(now=clock)  # ovas restarts 200 s into the idle time
    again = service_for(restarted, clocks=clocks)
    assert again.reap() == []
    assert again.get(ready.id).state is SessionState.READY
    clock.advance(101)
    again.reap()
    ended = again.get(ready.id)
    assert (ended.state, ended.reason) == (SessionState.ENDED, Reason.IDLE_TIMEOUT), left
    assert ended.message == "Ended: nobody was connected for 300 seconds"
    # Ended, it holds nothing: its container is gone, and so are its places; its record
    # keeps the outcome and the last log lines.
    assert ours(ready.id) == []
    assert [p.name for p in restarted.ledger.list("slot.") if p.data["session"] == ready.id] == []
    assert restarted.observe(ready.id).record.outcome.reason is Reason.IDLE_TIMEOUT
    assert any("stand-in Kit app" in line for line in restarted.logs(ready.id))


def test_reap_removes_what_carries_our_labels_but_is_no_session(
    backend, standin_request, engine, ours
):
    kept = backend.start(standin_request())
    # Named as a session's container is, labelled as no record of ovas is.
    name = c.container_name(str(uuid.uuid4()))
    junk = engine.create_container("ovas/kit-standin:1.0.0", name=name, labels={c.SESSION: "junk"})
    assert service_for(backend).reap() == [name]
    assert junk["Id"] not in [s["Id"] for s in ours()]
    assert service_for(backend).get(kept.record.id).state is not SessionState.FAILED


def test_without_a_probe_ready_means_the_signaling_port_accepts(backend, standin_request):
    request = standin_request(env={STANDIN_READY_DELAY: "2"})
    request = replace(request, kit=replace(request.kit, startup_probe=None))
    session = backend.start(request)
    sessions = service_for(backend)
    # Docker's port proxy accepts at once; the session is not ready before the app listens.
    assert sessions.get(session.record.id).state is SessionState.CREATING
    ready = wait_for(sessions, session.record.id, SessionState.READY)
    assert ready.state is SessionState.READY
    assert len(ready.routes) == 2


def test_a_profile_asking_more_cpus_than_the_host_has_runs_with_a_note(
    backend, standin_request, engine, ours
):
    request = standin_request()
    request = replace(request, kit=replace(request.kit, cpu_limit="16000m"))
    session = backend.start(request)
    ready = wait_for(backend, session.record.id, SessionState.READY)
    host = engine.info()["NCPU"]
    assert ready.message == (
        f"Session is active. The profile's CPU limit of 16000m is more than this host's "
        f"{host} CPUs; it runs with {host}"
    )
    (kit,) = [s for s in ours(ready.id) if s["Labels"][c.RECORD] == c.CONTAINER]
    assert engine.inspect_container(kit["Id"])["HostConfig"]["NanoCpus"] == host * 10**9


def test_listing_many_sessions_is_one_engine_call(backend, standin_request):
    started = [backend.start(standin_request(env={STANDIN_READY_DELAY: "30"})) for _ in range(4)]
    backend.jobs.join(timeout=10)  # the containers' starts, in the background, are done
    calls = []
    client = backend.engine.api()
    client.hooks["response"].append(lambda response, **kw: calls.append(response.url))
    try:
        listed = backend.observe_all()
    finally:
        client.hooks["response"].pop()
    assert {s.record.id for s in started} <= {o.record.id for o in listed}
    assert len(calls) == 1 and "/containers/json" in calls[0]


def test_a_get_answers_within_about_a_second_while_starting(backend, standin_request):
    session = backend.start(standin_request(env={STANDIN_NEVER_READY: "1"}))
    sessions = service_for(backend)
    for _ in range(3):
        began = time.monotonic()
        assert sessions.get(session.record.id).state is SessionState.CREATING
        assert time.monotonic() - began < 1.5


def test_a_ready_session_outlives_its_start_deadline_and_a_restart(
    new_backend, standin_request, ours
):
    clock = FakeClock(ticking=True)
    first = new_backend(now=clock)
    session = first.start(standin_request(start_timeout=30, now=clock()))
    wait_for(first, session.record.id, SessionState.READY)
    clock.advance(60)  # past its start deadline
    # A restarted ovas whose probes cannot reach the session (as when Kit is busy loading a
    # stage) still knows it was ready: a live stream is never failed by its start deadline.
    restarted = new_backend(probe_host="127.0.0.2", now=clock)
    sessions = service_for(restarted)
    assert sessions.get(session.record.id).state is SessionState.READY
    assert session.record.id not in sessions.reap()
    assert ours(session.record.id)


def test_a_mark_for_a_session_stopped_meanwhile_is_not_kept(backend, standin_request, ours):
    session = backend.start(standin_request())
    backend.stop(session.record.id)  # another worker stops it while this one decides
    assert backend.mark(session.record.id, Mark.READY, backend.now()) is False
    assert ours(session.record.id) == []


class InStep(DockerBackend):
    """Observes, then waits for the other worker to have observed too: two passes at once."""

    barrier: threading.Barrier

    def observe_all(self):
        found = super().observe_all()
        self.barrier.wait(30)
        return found


def test_a_removal_decided_by_two_workers_at_once_is_done_and_audited_once(
    new_backend, catalog, docker_daemon, standin_request
):
    from docker_backend.conftest import TEST_PORTS

    new_backend()  # its clean-up removes what this test leaves
    barrier = threading.Barrier(2)
    workers = []
    for _ in range(2):
        backend = InStep(catalog, docker_host=docker_daemon.url, port_range=TEST_PORTS, gpus="none")
        backend.barrier = barrier
        workers.append(service_for(backend, retention=0))
    removed: list[str] = []
    for service in workers:
        service.events.subscribe(
            lambda event: (
                removed.append(event.session_id) if isinstance(event, SessionRemoved) else None
            )
        )
    failing = workers[0].backend.start(standin_request(env={STANDIN_EXIT_CODE: "3"}))
    wait_for(workers[0], failing.record.id, SessionState.FAILED)
    passes = [threading.Thread(target=service.reap) for service in workers]
    for thread in passes:
        thread.start()
    for thread in passes:
        thread.join(60)
    assert removed == [failing.record.id]
    for service in workers:
        service.backend.close()
