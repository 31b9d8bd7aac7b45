"""Warm pools on the emulated cluster, in both session modes: a pool fills, matching POSTs
take its sessions at once, it refills, replicas never share a session, capacity goes to
on-demand starts first, a restarted replica keeps the pool, and its sessions' records (in
the ledger) keep the rendering they were started from, which a claim compares."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from support.warm_pools import POOL, START, PoolScenarios, fill, pooled

from backends.kubernetes.catalog import PROFILES
from ovas import create_app
from ovas.session_records import SESSION_RECORD, encode_session
from ovas.workloads import SESSION_PREFIX

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


def owners(app) -> dict[str, str]:
    """The rendering of each of the pool's unclaimed sessions whose workload runs, by id."""
    backend = app.extensions["ovas"].backend
    running = backend.observe_workloads()
    return {r.id: r.rendering for r in pooled(app, ready=False) if r.id in running}


def test_a_pools_sessions_record_their_rendering_and_an_edit_renews_them(make_app):
    app = make_app()
    fill(app)
    state = app.extensions["ovas"]
    (pool,) = state.catalog.warm_pools()
    _, rendering = state.catalogs.pool_target(pool)
    old = owners(app)
    assert len(old) == 2
    assert set(old.values()) == {rendering}

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
    assert set(owners(app).values()) == {edited} != {rendering}
    assert client.post("/streaming/stream", json=stage02).status_code == 200


def test_pool_sessions_recorded_without_a_rendering_are_never_handed_out(make_app):
    app = make_app()
    fill(app)
    state = app.extensions["ovas"]
    ledger = state.backend.ledger
    old = owners(app)
    for session_id in old:  # as an ovas that kept no rendering recorded them
        entry = ledger.get(SESSION_PREFIX + session_id)
        record, logs = SESSION_RECORD.decode(entry)
        assert ledger.replace(entry, encode_session(replace(record, rendering=""), logs))
    assert {r.id for r in pooled(app)} == set(old)  # read still, as ready pool sessions
    answer = app.test_client().post("/streaming/stream", json=START)
    assert answer.status_code == 202 and answer.get_json()["id"] not in old
