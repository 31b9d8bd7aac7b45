"""Warm pools on a real Docker daemon with the stand-in image: a pool fills, matching POSTs
take its sessions at once over HTTP, it refills, workers never share a session, capacity
goes to on-demand starts first, a restart of ovas keeps the pool, an edited profile renews
it, and host ports are capacity a pool gives up to on-demand starts."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest
import requests
import yaml
from support import dockerd
from support.warm_pools import OTHER_STAGE, POOL, START, PoolScenarios, fill, pooled

from backends.docker import containers as c
from backends.docker.backend import ORPHAN_GRACE
from ovas import create_app
from ovas.catalog_files import FileCatalog
from ovas.models import SessionState
from ovas.testing import FakeClock, wait_for

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def pool_catalog(tmp_path) -> FileCatalog:
    shutil.copy(REPO / "config/catalog/standin.yaml", tmp_path)
    (tmp_path / "pools.yaml").write_text(yaml.safe_dump(POOL))
    return FileCatalog(tmp_path)


@pytest.fixture
def make_app(new_backend, pool_catalog):
    """`make_app(**config)`: an ovas process over the test daemon, with the pool's catalog."""

    def build(**config):
        backend = new_backend()
        backend.catalog = pool_catalog
        return create_app({"TESTING": True, "REAP_INTERVAL": 0, **config}, backend=backend)

    return build


def test_a_pool_of_two_fills_two_posts_take_it_at_once_a_third_starts_and_it_refills(
    make_app, serve
):
    app = make_app()
    fill(app)
    base = serve(app).url
    answers = [requests.post(f"{base}/streaming/stream", json=START, timeout=10) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 202], [a.text for a in answers]
    for answer in answers[:2]:
        body = answer.json()
        assert body["status"]["condition"] == "ready"
        (address,) = body["routes"]
        signaling = next(
            r for r in body["routes"][address]["routes"] if r["description"] == "signaling"
        )
        # The stream is really there: its signaling port answers on the published port.
        socket.create_connection((address, signaling["source_port"]), timeout=5).close()
    ids = {a.json()["id"] for a in answers}
    assert len(ids) == 3
    # They are the caller's sessions now, listed as any other.
    listed = requests.get(f"{base}/streaming/stream", timeout=10).json()["items"]
    assert ids <= {s["id"] for s in listed}
    assert all(s["id"] not in ids for s in pooled(app, ready=False))
    fill(app)  # the pool refills to its size


class TestDockerPools(PoolScenarios):
    """Concurrent claims, capacity shared with on-demand starts, a restart."""


def usd_path(engine, session_id: str) -> str:
    kit = {"label": [f"ovas.session={session_id}", "ovas.record=container"]}
    (container,) = engine.containers(all=True, filters=kit)
    env = engine.inspect_container(container["Id"])["Config"]["Env"]
    return next(e for e in env if e.startswith("USD_PATH=")).removeprefix("USD_PATH=")


def test_a_start_never_gets_a_session_of_the_profile_before_its_edit(
    make_app, pool_catalog, engine
):
    app = make_app()
    fill(app)
    old = {r.id for r in pooled(app)}
    catalog_file = pool_catalog.root / "standin.yaml"
    catalog_file.write_text(catalog_file.read_text().replace("stage01.usd", "stage02.usd"))
    client = app.test_client()
    stage02 = {**START, "arguments": {"usd_stage_uri": "/app/samples/stage02.usd"}}
    first = client.post("/streaming/stream", json=stage02)
    assert first.status_code == 202, first.get_json()
    assert first.get_json()["id"] not in old
    assert usd_path(engine, first.get_json()["id"]) == "/app/samples/stage02.usd"
    sessions = app.extensions["ovas"].sessions
    deadline = time.monotonic() + 60
    # Renewed: replacements of the new rendering ready, the old sessions gone.
    while {r.id for r in pooled(app, ready=False)} & old or len(pooled(app)) < 2:
        assert time.monotonic() < deadline, sessions.all()
        sessions.reap()
        time.sleep(0.1)
    second = client.post("/streaming/stream", json=stage02)
    assert second.status_code == 200, second.get_json()
    assert usd_path(engine, second.get_json()["id"]) == "/app/samples/stage02.usd"


def test_a_pool_holding_every_port_gives_one_up_to_an_on_demand_start(
    new_backend, pool_catalog, ours
):
    # The stand-in publishes two TCP ports (signaling, probe) and one UDP port: four ports
    # are room for two sessions, both the pool's.
    clock = FakeClock(ticking=True)
    backend = new_backend(port_range=dockerd.free_ports(4), now=clock)
    backend.catalog = pool_catalog
    app = create_app({"TESTING": True, "REAP_INTERVAL": 0}, backend=backend)
    fill(app)
    client = app.test_client()
    answer = client.post("/streaming/stream", json=OTHER_STAGE)
    assert answer.status_code == 202, answer.get_json()
    sessions = app.extensions["ovas"].sessions
    started = wait_for(sessions, answer.get_json()["id"], {SessionState.READY, SessionState.FAILED})
    assert started.state is SessionState.READY, started.message
    assert len(pooled(app, ready=False)) == 1
    sessions.reap()  # no room left: the pool starts nothing, and nothing fails
    assert len(pooled(app, ready=False)) == 1
    assert [s for s in sessions.all() if s.state is SessionState.FAILED] == []
    # The pool's last session, claimed, keeps the ports it publishes for its user.
    clock.advance(ORPHAN_GRACE.total_seconds() + 1)  # past the grace of a start's places
    taken = client.post("/streaming/stream", json=START)
    assert taken.status_code == 200, taken.get_json()
    sessions.reap()
    held = backend.ledger.list("slot.port-")
    assert len([p for p in held if p.data["session"] == taken.get_json()["id"]]) == 3
    assert pooled(app, ready=False) == []
    # Full, with no pool left to give way: it waits in line, as for a full capacity.
    full = client.post("/streaming/stream", json=OTHER_STAGE)
    assert full.status_code == 202 and full.get_json()["status"]["condition"] == "queued"


def test_a_pools_pass_starts_no_more_sessions_than_there_are_ports(
    new_backend, pool_catalog, engine
):
    (pool_catalog.root / "pools.yaml").write_text(
        yaml.safe_dump({**POOL, "spec": {**POOL["spec"], "size": 100}})
    )
    backend = new_backend(port_range=dockerd.free_ports(6))
    backend.catalog = pool_catalog
    app = create_app({"TESTING": True, "REAP_INTERVAL": 0}, backend=backend)
    fill(app, count=3, timeout=60)
    sessions = app.extensions["ovas"].sessions
    sessions.reap()
    assert len(pooled(app, ready=False)) == 3
    assert [s for s in sessions.all() if s.state is SessionState.FAILED] == []


def test_a_pooled_session_whose_container_died_is_never_handed_out(make_app, engine):
    app = make_app()
    fill(app)
    ready = {r.id for r in pooled(app)}
    for session_id in ready:  # as a daemon restart without live-restore leaves them
        engine.kill(c.container_name(session_id))
    answer = app.test_client().post("/streaming/stream", json=START)
    assert answer.status_code == 202, answer.get_json()
    assert answer.get_json()["id"] not in ready
    assert answer.get_json()["status"]["condition"] == "creating"
    # The dead ones were settled on the way: ended, for the pool's pass to replace.
    assert pooled(app, ready=False) == []


def test_a_broken_pools_back_off_holds_for_every_worker_on_the_engine(
    new_backend, pool_catalog, engine
):
    """The back-off one worker records is in the engine's ledger: another worker (or
    replica, or a restarted ovas) waits it out too, so more workers do not churn more."""
    standin = pool_catalog.root / "standin.yaml"
    standin.write_text(
        standin.read_text().replace(
            "- {name: USD_PATH, value: /app/samples/stage01.usd}",
            "- {name: USD_PATH, value: /app/samples/stage01.usd}\n"
            "        - {name: STANDIN_EXIT_CODE, value: '3'}",
        )
    )
    clock = FakeClock(ticking=True)

    def worker():
        backend = new_backend(now=clock)
        backend.catalog = pool_catalog
        return create_app({"TESTING": True, "REAP_INTERVAL": 0}, backend=backend)

    first, second = worker(), worker()
    first.extensions["ovas"].sessions.reap()
    failing = {r.id for r in pooled(first, ready=False)}
    assert len(failing) == 2
    deadline = time.monotonic() + 60
    while any(
        s["State"] != "exited"
        for sid in failing
        for s in engine.containers(all=True, filters={"name": c.container_name(sid)})
    ):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    clock.advance(10)
    first.extensions["ovas"].sessions.reap()  # both failed: the pool backs off 30 s
    assert pooled(first, ready=False) == []
    clock.advance(5)
    second.extensions["ovas"].sessions.reap()
    assert pooled(second, ready=False) == [], "the other worker must wait it out too"
    clock.advance(16)  # 31 s after the failed round started
    second.extensions["ovas"].sessions.reap()
    assert len(pooled(second, ready=False)) == 2
