"""Admission on a real Docker daemon: capacity slots, host ports and GPUs, places in the
core's ledger, are never over-given, with concurrent starts in one process or in several,
and after a restart of ovas; host ports are Docker's to pick from the range, skipping any
another program holds, and counted by their places."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support import dockerd
from support.docker_earlier import kit_labels

from backends.docker import containers as c
from backends.docker.gpus import Gpu, Inventory
from backends.docker.ports import as_text, parse_port_range
from ovas.errors import CapacityExceeded
from ovas.models import Reason, SessionState
from ovas.testing import FakeClock, service_for, wait_for
from ovas.testing.requests import STANDIN_EXIT_CODE, STANDIN_READY_DELAY

pytestmark = pytest.mark.docker
WORKER = Path(__file__).resolve().parents[1] / "support" / "start_worker.py"
SLOW = {STANDIN_READY_DELAY: "60"}


def start_all(backend, requests):
    """Start every request at once from its own thread: (observed starts, refusals)."""
    barrier = threading.Barrier(len(requests))
    started, refused = [], []

    def start(request):
        barrier.wait()
        try:
            started.append(backend.start(request))
        except CapacityExceeded as exc:
            refused.append(exc)

    threads = [threading.Thread(target=start, args=(r,)) for r in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return started, refused


def places(backend, kind: str = "", session_id: str | None = None) -> list[str]:
    """The names of the places (`slot.<kind>...`) held in the ledger (by `session_id`)."""
    return sorted(
        e.name
        for e in backend.ledger.list(f"slot.{kind}")
        if session_id in (None, e.data.get("session"))
    )


def kit_container(ours, session_id):
    (found,) = [s for s in ours(session_id) if s["Labels"][c.RECORD] == c.CONTAINER]
    return found


def test_twenty_starts_in_four_processes_admit_exactly_capacity(
    docker_daemon, catalog_dir, backend, ours
):
    assert ours() == [], "the daemon should hold no session of ovas before this test"
    go_at = time.time() + 4  # after every worker has connected
    options = {
        "docker_host": docker_daemon.url,
        "catalog": str(catalog_dir),
        "count": 5,
        "capacity": 5,
        "go_at": go_at,
    }
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps(options)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    results = [json.loads(w.communicate(timeout=120)[0]) for w in workers]
    started = [s for r in results for s in r["started"]]
    refused = [m for r in results for m in r["refused"]]
    assert len(started) == 5, results
    assert len(refused) == 15 and all("All 5 session slots" in m for m in refused)
    assert {s["Labels"][c.SESSION] for s in ours()} == set(started)
    assert places(backend, "all.") == [f"slot.all.{k}" for k in range(5)]
    held = {e.data["session"] for e in backend.ledger.list("slot.")}
    assert held == set(started)
    # And the host ports each publishes: signaling and probe (TCP), media (UDP).
    assert len(places(backend, "port-tcp.")) == 10 and len(places(backend, "port-udp.")) == 5

    for session_id in started:
        backend.stop(session_id)
    assert ours() == [] and places(backend) == []  # nothing left behind: sessions, places


def test_an_ended_session_frees_its_slot_while_it_is_kept(backend, standin_request, ours):
    sessions = service_for(backend, retention=600)
    broken = backend.start(standin_request(capacity=1, env={STANDIN_EXIT_CODE: "4"}))
    with pytest.raises(CapacityExceeded, match="All 1 session slots"):
        backend.start(standin_request(capacity=1))
    failed = wait_for(sessions, broken.record.id, SessionState.FAILED)
    assert failed.reason is Reason.EXITED
    # Failed, it is kept for its retention, and holds no place.
    assert places(backend, session_id=failed.id) == []
    admitted = backend.start(standin_request(capacity=1))
    assert sessions.get(admitted.record.id).state is SessionState.CREATING
    assert sessions.get(failed.id).state is SessionState.FAILED


def test_docker_picks_distinct_host_ports_from_the_range(new_backend, standin_request, engine):
    ports = dockerd.free_ports(9)
    backend = new_backend(port_range=ports)
    started, refused = start_all(backend, [standin_request() for _ in range(3)])
    assert (len(started), refused) == (3, [])
    sessions = service_for(backend)
    taken = []
    for start in started:
        ready = wait_for(sessions, start.record.id, SessionState.READY)
        assert ready.state is SessionState.READY, ready.message
        taken += [(r.source_port, r.protocol) for r in ready.routes]
    # Signaling (TCP) and media (UDP) of each; a number may serve both protocols.
    assert len(taken) == len(set(taken)) == 6
    assert {port for port, _ in taken} <= set(parse_port_range(ports))


def test_a_port_another_program_holds_is_skipped(new_backend, standin_request, engine, ours):
    ports = parse_port_range(dockerd.free_ports(8))
    holders = []
    for port in ports[:3]:  # the first ports of the range are held by someone else
        held = socket.socket()
        held.bind(("127.0.0.1", port))
        held.listen()
        holders.append(held)
    try:
        backend = new_backend(port_range=f"{ports[0]}-{ports[-1]}")
        session = backend.start(standin_request())
        ready = wait_for(service_for(backend), session.record.id, SessionState.READY)
        assert ready.state is SessionState.READY, ready.message
        published = engine.inspect_container(kit_container(ours, ready.id)["Id"])
        bound = {
            (int(b["HostPort"]), key.rsplit("/", 1)[1])
            for key, bindings in (published["NetworkSettings"]["Ports"] or {}).items()
            for b in bindings or ()
        }
        tcp = {port for port, protocol in bound if protocol == "tcp"}
        assert tcp and tcp.isdisjoint(ports[:3]) and tcp <= set(ports)
        assert {(r.source_port, r.protocol.lower()) for r in ready.routes} <= bound
    finally:
        for held in holders:
            held.close()


TWO_GPUS = Inventory((Gpu(0, "GPU-0000-test"), Gpu(1, "GPU-1111-test")), "a test inventory")


def test_the_gpu_ledger_gives_each_gpu_to_one_session(new_backend, standin_request, ours):
    clock = FakeClock(ticking=True)
    backend = new_backend(gpus=TWO_GPUS, now=clock)
    started, refused = start_all(backend, [standin_request(gpus=1) for _ in range(8)])
    assert len(started) == 2 and len(refused) == 6
    assert all("asks for 1 GPU; 0 of the 2 GPUs" in e.message for e in refused)
    given = sorted(e.data["place"] for e in backend.ledger.list("slot.gpu."))
    assert given == ["GPU-0000-test", "GPU-1111-test"]
    kinds = (c.PENDING, c.CONTAINER)
    held = sorted(s["Labels"][c.GPUS] for s in ours() if s["Labels"].get(c.RECORD) in kinds)
    assert held == ["GPU-0000-test", "GPU-1111-test"]

    restarted = new_backend(gpus=TWO_GPUS, now=clock)  # the places are in the engine
    with pytest.raises(CapacityExceeded, match="0 of the 2 GPUs"):
        restarted.start(standin_request(gpus=1))
    # This daemon has no NVIDIA runtime: each session fails and says why, and its GPU is
    # free again once it has failed.
    sessions = service_for(restarted, retention=600)
    for start in started:
        failed = wait_for(sessions, start.record.id, SessionState.FAILED)
        assert failed.reason is Reason.CREATE_FAILED
        assert "could not be started" in failed.message and "NVIDIA" in failed.message
    again = restarted.start(standin_request(gpus=1))
    assert c.parse_labels(kit_or_pending(ours, again.record.id)).gpus in (
        ("GPU-0000-test",),
        ("GPU-1111-test",),
    )
    clock.advance(601)
    assert sorted(sessions.reap()) == sorted(s.record.id for s in started)


def test_gpus_by_cdi_name_are_claimed_once_and_asked_of_the_cdi_driver(
    new_backend, standin_request, ours, engine
):
    # The setting as an operator writes it, read as at startup.
    backend = new_backend(gpus="nvidia.com/gpu=0,nvidia.com/gpu=1")
    assert backend.describe(True)["gpus"] == ["GPU nvidia.com/gpu=0", "GPU nvidia.com/gpu=1"]
    started, refused = start_all(backend, [standin_request(gpus=1) for _ in range(4)])
    assert len(started) == 2 and len(refused) == 2
    assert all("asks for 1 GPU; 0 of the 2 GPUs" in e.message for e in refused)
    kinds = (c.PENDING, c.CONTAINER)
    held = sorted(s["Labels"][c.GPUS] for s in ours() if s["Labels"].get(c.RECORD) in kinds)
    assert held == ["nvidia.com/gpu=0", "nvidia.com/gpu=1"]
    # This daemon has no CDI: it takes the request, and refuses to start the container.
    for start in started:
        requested = engine.inspect_container(kit_container(ours, start.record.id)["Id"])
        (device,) = requested["HostConfig"]["DeviceRequests"]
        assert (device["Driver"], device["DeviceIDs"]) == (
            "cdi",
            [c.parse_labels(kit_or_pending(ours, start.record.id)).gpus[0]],
        )
    sessions = service_for(backend, retention=600)
    for start in started:
        failed = wait_for(sessions, start.record.id, SessionState.FAILED)
        assert "CDI" in failed.message and "nvidia-ctk cdi generate" in failed.message


def kit_or_pending(ours, session_id):
    kinds = (c.CONTAINER, c.PENDING)
    return next(s["Labels"] for s in ours(session_id) if s["Labels"][c.RECORD] in kinds)


def test_a_session_without_gpu_asks_docker_for_none(backend, standin_request, engine, ours):
    session = backend.start(standin_request())
    container = kit_container(ours, session.record.id)
    assert not engine.inspect_container(container["Id"])["HostConfig"].get("DeviceRequests")


def test_user_capacity_limits_each_user(backend, standin_request):
    backend.start(standin_request(username="ann", user_capacity=1, env=SLOW))
    with pytest.raises(CapacityExceeded) as caught:
        backend.start(standin_request(username="ann", user_capacity=1, env=SLOW))
    assert caught.value.http_status == 429
    assert backend.start(standin_request(username="bob", user_capacity=1, env=SLOW))


def test_a_slot_held_by_an_exited_container_is_free_for_the_next_start(new_backend, engine):
    sessions = service_for(new_backend(), capacity=1)
    first = sessions.start("kit-standin", "standin").id
    dockerd.wait_running(engine, c.container_name(first))
    engine.kill(c.container_name(first))  # it ended; no GET, no pass has seen it
    second = sessions.start("kit-standin", "standin")
    assert second.id != first and second.state is SessionState.CREATING
    assert sessions.get(first).state.final


def test_a_slot_of_a_starting_session_removed_by_hand_is_free_at_once(new_backend, engine):
    backend = new_backend(now=FakeClock(ticking=True))
    sessions = service_for(backend, capacity=1)
    first = sessions.start("kit-standin", "standin").id
    dockerd.wait_running(engine, c.container_name(first))
    engine.remove_container(c.container_name(first), force=True)
    # Its record says it was started: the refused start ends it and goes ahead.
    second = sessions.start("kit-standin", "standin").id
    assert second != first
    lost = sessions.get(first)
    assert (lost.state, lost.reason) == (SessionState.FAILED, Reason.LOST)
    assert places(backend, session_id=first) == []


def test_a_slot_of_a_ready_session_removed_by_hand_is_free_at_once(new_backend, engine):
    backend = new_backend(now=FakeClock(ticking=True))
    sessions = service_for(backend, capacity=1)
    first = sessions.start("kit-standin", "standin").id
    assert wait_for(sessions, first, {SessionState.READY}, 60).state is SessionState.READY
    engine.remove_container(c.container_name(first), force=True)
    # The refused start ends it, which frees its slot, and goes ahead.
    second = sessions.start("kit-standin", "standin").id
    assert second != first
    lost = sessions.get(first)
    assert (lost.state, lost.reason) == (SessionState.FAILED, Reason.LOST)
    assert (
        lost.message
        == "The session's container or pod was removed outside ovas: its workload is gone"
    )
    assert wait_for(sessions, second, {SessionState.READY}, 60).state is SessionState.READY
    engine.remove_container(c.container_name(second), force=True)
    sessions.reap_pass(tend_pools=False)  # one pass frees what it held
    assert places(backend, session_id=second) == []
    assert sessions.get(second).reason is Reason.LOST


def started_earlier(backend, request, engine) -> str:
    """A Kit container as the release before port claims and the core's ledger started it:
    labelled as it labelled one, publishing its ports from the range, holding no place. Its
    session id."""
    spec = c.container_spec(request, [], host_ports=as_text(backend.ports))
    spec["labels"] = kit_labels(request)
    container_id, refusal = backend.engine.create_kit(spec)
    assert not refusal and not backend.engine.start(container_id)
    dockerd.wait_running(engine, spec["name"])
    return request.id


def port_places(backend, session_id=None) -> list[str]:
    """The kinds of the host port places held (by `session_id`), sorted."""
    return sorted(n.split(".")[1] for n in places(backend, "port-", session_id))


def test_ports_a_session_of_the_earlier_release_publishes_are_counted_then_recorded(
    new_backend, standin_request, engine, ours
):
    # Four ports: room for two stand-ins (two TCP ports and one UDP port each).
    ports = dockerd.free_ports(4)
    backend = new_backend(port_range=ports)
    earlier = started_earlier(backend, standin_request(), engine)
    assert places(backend) == []
    # Read as it starts, its ports are counted: one more session, not two.
    first = backend.start(standin_request()).record.id
    assert port_places(backend, earlier) == ["port-tcp", "port-tcp", "port-udp"]
    with pytest.raises(CapacityExceeded, match="OVAS_DOCKER_PORT_RANGE"):
        backend.start(standin_request())
    backend.stop(first)

    sessions = service_for(backend)
    sessions.reap()
    sessions.reap()  # once
    assert port_places(backend) == ["port-tcp", "port-tcp", "port-udp"]
    # Processes reading it at once record it once: the places of those that lost go.
    ledger = backend.ledger
    ledger.delete(ledger.get(f"session.{earlier}"))
    for place in ledger.list("slot."):
        ledger.delete(place)
    others = [new_backend(port_range=ports) for _ in range(3)]
    barrier = threading.Barrier(len(others))

    def read(other):
        barrier.wait()
        other.observe_all()

    threads = [threading.Thread(target=read, args=(o,)) for o in others]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert port_places(backend) == ["port-tcp", "port-tcp", "port-udp"]
    assert len(places(backend, "all.")) == 1

    second = backend.start(standin_request()).record.id
    with pytest.raises(CapacityExceeded, match="OVAS_DOCKER_PORT_RANGE"):
        backend.start(standin_request())
    # Both run; the earlier session is read as it was written, and was never touched.
    ready = wait_for(sessions, second, SessionState.READY)
    assert ready.state is SessionState.READY, ready.message
    kept = wait_for(sessions, earlier, SessionState.READY)
    assert kept.state is SessionState.READY and len(kept.routes) == 2
    # Once it ends, its places are free for the next start.
    sessions.stop(earlier)
    assert port_places(backend, earlier) == [] and ours(earlier) == []
    assert backend.start(standin_request())
