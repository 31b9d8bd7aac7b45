"""Warm pools on the emulated cluster, in both session modes: a pool fills, matching POSTs
take its sessions at once, it refills, replicas never share a session, capacity goes to
on-demand starts first, and a restarted replica keeps the pool."""

from __future__ import annotations

import pytest
from support.warm_pools import POOL, START, PoolScenarios, fill

from ovas import create_app

pytestmark = pytest.mark.kubernetes

NAMESPACE = "omni-streaming"


@pytest.fixture(params=["pod", "helmrelease"])
def make_app(request, cluster, make_backend):
    cluster.seed(NAMESPACE, [{**POOL, "metadata": {**POOL["metadata"], "namespace": NAMESPACE}}])

    def build(**config):
        backend = make_backend(request.param)
        return create_app({"TESTING": True, "REAP_INTERVAL": 0, **config}, backend=backend)

    return build


def test_a_pool_of_two_fills_two_posts_take_it_a_third_starts_and_it_refills(make_app):
    app = make_app()
    fill(app)
    client = app.test_client()
    answers = [client.post("/streaming/stream", json=START) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 202], [a.get_json() for a in answers]
    for answer in answers[:2]:
        assert answer.get_json()["status"]["condition"] == "ready"
        assert answer.get_json()["routes"]
    ids = {a.get_json()["id"] for a in answers}
    listed = client.get("/streaming/stream").get_json()["items"]
    assert ids <= {s["id"] for s in listed}
    fill(app)


class TestKubernetesPools(PoolScenarios):
    """Concurrent claims, capacity shared with on-demand starts, a restart."""
