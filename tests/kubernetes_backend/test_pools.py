"""Warm pools on the emulated cluster, in both session modes: a pool fills, matching POSTs
take its sessions at once, it refills, replicas never share a session, capacity goes to
on-demand starts first, and a restarted replica keeps the pool."""

from __future__ import annotations

import pytest
from support.warm_pools import OTHER_STAGE, POOL, START, fill, pooled, post_at_once

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


def test_claims_from_several_replicas_never_share_a_session(make_app):
    replicas = [make_app(), make_app(), make_app()]
    fill(replicas[0])
    answers = post_at_once(replicas)
    taken = [a.get_json()["id"] for a in answers if a.status_code == 200]
    assert len(taken) == 2 and len(set(taken)) == 2, [a.get_json() for a in answers]
    assert sorted(a.status_code for a in answers) == [200, 200, 202, 202, 202, 202]


def test_capacity_goes_to_on_demand_starts_first(make_app):
    app = make_app(SESSION_CAPACITY=2)
    fill(app)
    client = app.test_client()
    other = OTHER_STAGE
    assert client.post("/streaming/stream", json=other).status_code == 202
    assert len(pooled(app, ready=False)) == 1
    assert client.post("/streaming/stream", json=other).status_code == 202
    assert pooled(app, ready=False) == []
    assert client.post("/streaming/stream", json=other).status_code == 503
    app.extensions["ovas"].sessions.reap()
    assert pooled(app, ready=False) == []


def test_a_restarted_replica_keeps_the_pool(make_app):
    first = make_app()
    fill(first)
    before = {r.id for r in pooled(first)}
    restarted = make_app()
    restarted.extensions["ovas"].sessions.reap()
    assert {r.id for r in pooled(restarted, ready=False)} == before
    answer = restarted.test_client().post("/streaming/stream", json=START)
    assert answer.status_code == 200 and answer.get_json()["id"] in before
