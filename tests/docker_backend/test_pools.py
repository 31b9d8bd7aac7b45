"""Warm pools on a real Docker daemon with the stand-in image: a pool fills, matching POSTs
take its sessions at once over HTTP, it refills, workers never share a session, capacity
goes to on-demand starts first, and a restart of ovas keeps the pool."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
import requests
import yaml
from support.warm_pools import OTHER_STAGE, POOL, START, fill, pooled, post_at_once

from ovas import create_app
from ovas.catalog_files import FileCatalog

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


def sessions_of(app):
    return app.extensions["ovas"].sessions


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


def test_concurrent_claims_from_several_workers_never_share_a_session(make_app):
    workers = [make_app(), make_app(), make_app()]
    fill(workers[0])
    answers = post_at_once(workers)
    taken = [a.get_json()["id"] for a in answers if a.status_code == 200]
    assert len(taken) == 2 and len(set(taken)) == 2, [a.get_json() for a in answers]
    assert sorted(a.status_code for a in answers) == [200, 200, 202, 202, 202, 202]


def test_capacity_goes_to_on_demand_starts_first(make_app):
    app = make_app(SESSION_CAPACITY=2)
    fill(app)
    client = app.test_client()
    # No match, so it starts on demand, in a place a pool's session gives up.
    other = OTHER_STAGE
    first = client.post("/streaming/stream", json=other)
    assert first.status_code == 202, first.get_json()
    assert len(pooled(app, ready=False)) == 1
    second = client.post("/streaming/stream", json=other)
    assert second.status_code == 202, second.get_json()
    assert pooled(app, ready=False) == []
    third = client.post("/streaming/stream", json=other)
    assert third.status_code == 503  # full, and no pool left to shrink
    sessions_of(app).reap()
    assert pooled(app, ready=False) == []  # no room: the pool does not take it back


def test_a_restart_of_ovas_keeps_the_pool(make_app):
    first = make_app()
    fill(first)
    before = {s.id for s in pooled(first)}
    restarted = make_app()  # a new process on the same engine
    assert {s.id for s in pooled(restarted)} == before
    sessions_of(restarted).reap()  # nothing to start: the pool is full
    assert {s.id for s in pooled(restarted, ready=False)} == before
    answer = restarted.test_client().post("/streaming/stream", json=START)
    assert answer.status_code == 200 and answer.get_json()["id"] in before
