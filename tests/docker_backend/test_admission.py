"""Admission on a real Docker daemon: capacity, host ports and GPUs are never over-given,
with concurrent starts in one process or in several, and after a restart of ovas."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support import dockerd

from backends.docker import containers as c
from backends.docker.gpus import Gpu, Inventory
from ovas.errors import CapacityExceeded
from ovas.models import SessionState
from ovas.testing import wait_for
from ovas.testing.requests import STANDIN_READY_DELAY

pytestmark = pytest.mark.docker
WORKER = Path(__file__).resolve().parents[1] / "support" / "start_worker.py"
SLOW = {STANDIN_READY_DELAY: "60"}


def start_all(backend, requests):
    """Start every request at once from its own thread: (sessions, refusals)."""
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


def test_twenty_starts_in_four_processes_admit_exactly_capacity(
    docker_daemon, catalog_dir, state_dir, backend, ours
):
    assert ours() == [], "the daemon should hold no session of ovas before this test"
    go_at = time.time() + 4  # after every worker has connected
    options = {
        "docker_host": docker_daemon.url,
        "state_dir": str(state_dir),
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

    for session_id in started:
        backend.stop(session_id)
    assert ours() == []  # nothing left behind


def test_the_port_range_is_shared_out_without_overlap(new_backend, standin_request):
    # 7 ports; each stand-in session takes 3 (signaling, media, probe): room for two.
    ports = dockerd.free_ports(7)
    backend = new_backend(port_range=ports)
    started, refused = start_all(backend, [standin_request(env=SLOW) for _ in range(8)])
    assert len(started) == 2 and len(refused) == 6
    assert all(f"OVAS_DOCKER_PORT_RANGE {ports}" in e.message for e in refused)
    taken = [p.host_port for s in started for p in c.parse_labels(label_of(backend, s.id)).ports]
    assert len(taken) == len(set(taken)) == 6

    restarted = new_backend(port_range=ports)  # ports in use are read back
    with pytest.raises(CapacityExceeded):
        restarted.start(standin_request(env=SLOW))
    restarted.stop(started[0].id)
    assert restarted.start(standin_request(env=SLOW)).state is SessionState.CREATING


def label_of(backend, session_id):
    summaries = backend.engine.summaries(session_id)
    return summaries[0]["Labels"]


TWO_GPUS = Inventory((Gpu(0, "GPU-0000-test"), Gpu(1, "GPU-1111-test")), "a test inventory")


def test_the_gpu_ledger_gives_each_gpu_to_one_session(new_backend, standin_request, ours):
    backend = new_backend(gpus=TWO_GPUS)
    started, refused = start_all(backend, [standin_request(gpus=1) for _ in range(8)])
    assert len(started) == 2 and len(refused) == 6
    assert all("asks for 1 GPU; 0 of the 2 GPUs" in e.message for e in refused)
    held = sorted(s["Labels"][c.GPUS] for s in ours())
    assert held[-2:] == ["GPU-0000-test", "GPU-1111-test"]
    # This daemon has no NVIDIA runtime: each session fails and says why. Both are waited
    # for, as each is started in the background and only a failed session is reaped.
    for session in started:
        failed = wait_for(backend, session.id, SessionState.FAILED)
        assert "could not be started" in failed.message and "NVIDIA" in failed.message

    restarted = new_backend(gpus=TWO_GPUS)  # the ledger is rebuilt from the labels
    with pytest.raises(CapacityExceeded, match="0 of the 2 GPUs"):
        restarted.start(standin_request(gpus=1))
    later = datetime.now(UTC) + timedelta(seconds=restarted.reap_grace + 1)
    assert sorted(restarted.reap(later)) == sorted(s.id for s in started)
    again = restarted.start(standin_request(gpus=1))  # admitted: a GPU is free
    assert wait_for(restarted, again.id, SessionState.FAILED).state is SessionState.FAILED
    assert c.parse_labels(label_of(restarted, again.id)).gpus == ("GPU-0000-test",)


def test_a_session_without_gpu_asks_docker_for_none(backend, standin_request, engine, ours):
    session = backend.start(standin_request())
    (container,) = ours(session.id)
    assert not engine.inspect_container(container["Id"])["HostConfig"].get("DeviceRequests")


def test_user_capacity_limits_each_user(backend, standin_request):
    backend.start(standin_request(username="ann", user_capacity=1, env=SLOW))
    with pytest.raises(CapacityExceeded) as caught:
        backend.start(standin_request(username="ann", user_capacity=1, env=SLOW))
    assert caught.value.http_status == 429
    assert backend.start(standin_request(username="bob", user_capacity=1, env=SLOW))
