"""Admission on a real Docker daemon: capacity slots and GPUs are never over-given, with
concurrent starts in one process or in several, and after a restart of ovas; host ports are
Docker's to pick from the range, skipping any another program holds."""

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

from backends.docker import containers as c
from backends.docker.backend import ORPHAN_GRACE
from backends.docker.gpus import Gpu, Inventory
from backends.docker.ports import as_text, parse_port_range
from ovas.errors import CapacityExceeded, SessionNotFound
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
    assert {s["Labels"][c.SESSION] for s in ours() if c.CLAIM not in s["Labels"]} == set(started)
    slots = [s["Names"][0] for s in ours() if s["Labels"].get(c.RECORD) == c.SLOT]
    assert sorted(n for n in slots if n.startswith("/ovas-slot-")) == [
        f"/ovas-slot-{k}" for k in range(5)
    ]
    # And the host ports each publishes: signaling and probe (TCP), media (UDP).
    ports = [n for n in slots if n.startswith("/" + c.PORT_SLOT_PREFIX)]
    assert len(ports) == len(set(ports)) == 15
    assert sum(n.startswith("/ovas-port-udp-") for n in ports) == 5

    for session_id in started:
        backend.stop(session_id)
    assert ours() == []  # nothing left behind: sessions, slots


def test_an_ended_session_frees_its_slot_while_it_is_kept(backend, standin_request, ours):
    sessions = service_for(backend, retention=600)
    broken = backend.start(standin_request(capacity=1, env={STANDIN_EXIT_CODE: "4"}))
    with pytest.raises(CapacityExceeded, match="All 1 session slots"):
        backend.start(standin_request(capacity=1))
    failed = wait_for(sessions, broken.record.id, SessionState.FAILED)
    assert failed.reason is Reason.EXITED
    # Failed, it is kept for its retention, and holds no slot.
    assert not [s for s in ours(failed.id) if s["Labels"][c.RECORD] == c.SLOT]
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
    claims = sorted(s["Names"][0] for s in ours() if s["Labels"].get(c.RECORD) == c.GPU)
    assert claims == ["/ovas-gpu-GPU-0000-test", "/ovas-gpu-GPU-1111-test"]
    kinds = (c.PENDING, c.CONTAINER)
    held = sorted(s["Labels"][c.GPUS] for s in ours() if s["Labels"].get(c.RECORD) in kinds)
    assert held == ["GPU-0000-test", "GPU-1111-test"]

    restarted = new_backend(gpus=TWO_GPUS, now=clock)  # the claims are in the engine
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
    sessions = service_for(backend, retention=600)
    for start in started:
        failed = wait_for(sessions, start.record.id, SessionState.FAILED)
        assert "CDI" in failed.message and "nvidia-ctk cdi generate" in failed.message
        requested = engine.inspect_container(kit_container(ours, start.record.id)["Id"])
        (device,) = requested["HostConfig"]["DeviceRequests"]
        assert (device["Driver"], device["DeviceIDs"]) == (
            "cdi",
            [c.parse_labels(kit_or_pending(ours, start.record.id)).gpus[0]],
        )


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


def test_a_slot_of_a_container_removed_by_hand_is_free_once_the_grace_passes(new_backend, engine):
    clock = FakeClock(ticking=True)
    sessions = service_for(new_backend(now=clock), capacity=1)
    first = sessions.start("kit-standin", "standin").id
    dockerd.wait_running(engine, c.container_name(first))
    engine.remove_container(c.container_name(first), force=True)
    with pytest.raises(CapacityExceeded):  # a claim this young may be a start in progress
        sessions.start("kit-standin", "standin")
    clock.advance(ORPHAN_GRACE.total_seconds() + 1)
    assert sessions.start("kit-standin", "standin").id != first


def test_a_slot_of_a_ready_session_removed_by_hand_is_free_at_once(new_backend, engine):
    sessions = service_for(new_backend(now=FakeClock(ticking=True)), capacity=1)
    first = sessions.start("kit-standin", "standin").id
    assert wait_for(sessions, first, {SessionState.READY}, 60).state is SessionState.READY
    engine.remove_container(c.container_name(first), force=True)
    # Its ready mark shows it was started: the refused start frees its slot and goes ahead.
    second = sessions.start("kit-standin", "standin").id
    assert second != first
    with pytest.raises(SessionNotFound):
        sessions.get(first)
    assert wait_for(sessions, second, {SessionState.READY}, 60).state is SessionState.READY
    engine.remove_container(c.container_name(second), force=True)
    removed = sessions.reap_pass(tend_pools=False)  # one pass frees what it held
    assert c.slot_name(0) in removed, removed


# The labels the release before port claims gave a session's Kit container.
EARLIER_LABELS = (
    "ovas.session",
    "ovas.record",
    "ovas.app",
    "ovas.version",
    "ovas.profile",
    "ovas.user",
    "ovas.created",
    "ovas.deadline",
    "ovas.clocks",
    "ovas.image",
    "ovas.ports",
    "ovas.gpus",
    "ovas.probe",
    "ovas.note",
    "ovas.pool",
)


def started_earlier(backend, request, engine) -> str:
    """A Kit container as the release before port claims started it: labelled as it
    labelled one, publishing its ports from the range, holding no claim. Its session id."""
    spec = c.container_spec(request, [], host_ports=as_text(backend.ports))
    spec["labels"] = {k: v for k, v in spec["labels"].items() if k in EARLIER_LABELS}
    container_id, refusal = backend.engine.create_kit(spec)
    assert not refusal and not backend.engine.start(container_id)
    dockerd.wait_running(engine, spec["name"])
    return request.id


def port_claims(ours, session_id=None) -> list[str]:
    return sorted(
        s["Names"][0].lstrip("/")
        for s in ours(session_id)
        if s["Names"][0].startswith("/" + c.PORT_SLOT_PREFIX)
    )


def test_ports_a_session_of_the_earlier_release_publishes_are_counted_then_claimed(
    new_backend, standin_request, engine, ours
):
    # Four ports: room for two stand-ins (two TCP ports and one UDP port each).
    backend = new_backend(port_range=dockerd.free_ports(4))
    earlier = started_earlier(backend, standin_request(), engine)
    assert port_claims(ours) == []
    # Before any clean-up has run, its ports are counted: one more session, not two.
    first = backend.start(standin_request()).record.id
    with pytest.raises(CapacityExceeded, match="OVAS_DOCKER_PORT_RANGE"):
        backend.start(standin_request())
    backend.stop(first)

    sessions = service_for(backend)
    sessions.reap()  # claims what it publishes, at the places a start left for it
    held = ["ovas-port-tcp-2", "ovas-port-tcp-3", "ovas-port-udp-3"]
    assert port_claims(ours, earlier) == held
    sessions.reap()  # once
    assert port_claims(ours) == held
    # Two processes that claimed them at once: the extra place is given back.
    extra = c.record_spec("ovas-port-tcp-1", c.claim_labels(earlier, c.SLOT))
    assert backend.engine.create_record(extra)
    sessions.reap()
    assert port_claims(ours) == held

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
    assert port_claims(ours, earlier) == []
    assert backend.start(standin_request())
