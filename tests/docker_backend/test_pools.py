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
from support.warm_pools import POOL, START, PoolScenarios, fill, pooled

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
