"""Warm pools on the emulated cluster, in both session modes: a pool fills, matching POSTs
take its sessions at once, it refills, replicas never share a session, capacity goes to
on-demand starts first, a restarted replica keeps the pool, and its sessions record the
rendering they were started from, which a claim compares."""

from __future__ import annotations

import time

import pytest
from support.warm_pools import POOL, START, PoolScenarios, fill, pooled

from backends.kubernetes import objects as o
from backends.kubernetes.catalog import PROFILES
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


def owners(app) -> dict[str, dict]:
    """The pool's unclaimed sessions' owning objects (Pod or HelmRelease), by session id."""
    backend = app.extensions["ovas"].backend
    found = backend.kube.list(backend.owner_kind)
    ids = {r.id for r in pooled(app, ready=False)}
    return {
        obj["metadata"]["labels"][o.SESSION]: obj
        for obj in found
        if obj["metadata"]["labels"].get(o.SESSION) in ids
    }


def test_a_pools_sessions_record_their_rendering_and_an_edit_renews_them(make_app):
    app = make_app()
    fill(app)
    state = app.extensions["ovas"]
    (pool,) = state.catalog.warm_pools()
    _, rendering = state.catalogs.pool_target(pool)
    old = owners(app)
    assert len(old) == 2
    assert {obj["metadata"]["annotations"][o.RENDERING] for obj in old.values()} == {rendering}

    kube = state.backend.kube
    profile = kube.get(PROFILES, "standin")
    profile["spec"]["chartValues"]["streamingKit"]["env"] = [
        {"name": "USD_PATH", "value": "/app/samples/stage02.usd"}
    ]
    kube.replace(PROFILES, "standin", profile)
    stage02 = {**START, "arguments": {"usd_stage_uri": "/app/samples/stage02.usd"}}
    client = app.test_client()
    answer = client.post("/streaming/stream", json=stage02)
    assert answer.status_code == 202 and answer.get_json()["id"] not in old
    deadline = time.monotonic() + 30
    while set(owners(app)) & set(old) or len(pooled(app)) < 2:
        assert time.monotonic() < deadline, state.sessions.all()
        state.sessions.reap()
        time.sleep(0.1)
    _, edited = state.catalogs.pool_target(pool)
    renewed = {obj["metadata"]["annotations"][o.RENDERING] for obj in owners(app).values()}
    assert renewed == {edited} != {rendering}
    assert client.post("/streaming/stream", json=stage02).status_code == 200


def test_pool_sessions_recorded_without_a_rendering_are_never_handed_out(make_app):
    app = make_app()
    fill(app)
    state = app.extensions["ovas"]
    backend = state.backend
    old = owners(app)
    for session_id in old:  # as the previous ovas wrote them
        drop = {"metadata": {"annotations": {o.RENDERING: None}}}
        backend.kube.patch(backend.owner_kind, o.object_name(session_id), drop)
    assert {r.id for r in pooled(app)} == set(old)  # read still, as ready pool sessions
    answer = app.test_client().post("/streaming/stream", json=START)
    assert answer.status_code == 202 and answer.get_json()["id"] not in old
