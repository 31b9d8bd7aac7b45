"""What the warm pool tests of every backend share: the stand-in's pool, and reading, filling
and claiming it through an ovas app."""

from __future__ import annotations

import threading
import time

from ovas.lifecycle import Mark

POOL = {
    "apiVersion": "ovas.io/v1alpha1",
    "kind": "WarmPool",
    "metadata": {"name": "standins"},
    "spec": {"application": "kit-standin", "version": "latest", "profile": "standin", "size": 2},
}
START = {"id": "kit-standin", "profile": "standin"}
# Another stage than the profile's own: no pool matches it.
OTHER_STAGE = {**START, "arguments": {"usd_stage_uri": "omniverse://nucleus/other.usd"}}


def pooled(app, ready=True) -> list:
    """The pool's live records (`ready`: those a claim may take, marked ready by a pass)."""
    backend = app.extensions["ovas"].backend
    return [
        r
        for r in backend.records()
        if r.pooled and r.outcome is None and (Mark.READY in r.marks or not ready)
    ]


def fill(app, count: int = 2, timeout: float = 30.0, interval: float = 0.1) -> None:
    """Reap, as the reaper thread does, until `count` sessions may be claimed."""
    sessions = app.extensions["ovas"].sessions
    deadline = time.monotonic() + timeout
    while len(pooled(app)) < count:
        assert time.monotonic() < deadline, sessions.all()
        sessions.reap()
        time.sleep(interval)


def post_at_once(apps: list, each: int = 2) -> list:
    """`each` matching POSTs per app (worker process, replica), all let go at once; the
    answers."""
    answers: list = []
    barrier = threading.Barrier(len(apps) * each)

    def post(app):
        client = app.test_client()
        barrier.wait()
        answers.append(client.post("/streaming/stream", json=START))

    threads = [threading.Thread(target=post, args=(a,)) for a in apps for _ in range(each)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return answers


class PoolScenarios:
    """The warm pool scenarios every backend's tests run: subclass it where a `make_app`
    fixture gives `make_app(**config)`, a new ovas process (worker, replica, restart) on one
    engine whose catalog holds `POOL`."""

    def test_claims_from_several_processes_never_share_a_session(self, make_app):
        processes = [make_app(), make_app(), make_app()]
        fill(processes[0])
        answers = post_at_once(processes)
        taken = [a.get_json()["id"] for a in answers if a.status_code == 200]
        assert len(taken) == 2 and len(set(taken)) == 2, [a.get_json() for a in answers]
        assert sorted(a.status_code for a in answers) == [200, 200, 202, 202, 202, 202]

    def test_capacity_goes_to_on_demand_starts_first(self, make_app):
        app = make_app(SESSION_CAPACITY=2)
        fill(app)
        client = app.test_client()
        # No match, so it starts on demand, in a place a pool's session gives up.
        first = client.post("/streaming/stream", json=OTHER_STAGE)
        assert first.status_code == 202, first.get_json()
        assert len(pooled(app, ready=False)) == 1
        second = client.post("/streaming/stream", json=OTHER_STAGE)
        assert second.status_code == 202, second.get_json()
        assert pooled(app, ready=False) == []
        # Full, and no pool left to shrink: it waits in line.
        third = client.post("/streaming/stream", json=OTHER_STAGE)
        assert (third.status_code, third.get_json()["queue_position"]) == (202, 1)
        app.extensions["ovas"].sessions.reap()
        assert pooled(app, ready=False) == []  # no room: the pool does not take it back
        waiting = client.get(f"/streaming/stream/{third.get_json()['id']}")
        assert waiting.get_json()["queue_position"] == 1

    def test_a_restart_of_ovas_keeps_the_pool(self, make_app):
        first = make_app()
        fill(first)
        before = {r.id for r in pooled(first)}
        restarted = make_app()  # a new process on the same engine
        assert {r.id for r in pooled(restarted)} == before
        restarted.extensions["ovas"].sessions.reap()  # nothing to start: the pool is full
        assert {r.id for r in pooled(restarted, ready=False)} == before
        answer = restarted.test_client().post("/streaming/stream", json=START)
        assert answer.status_code == 200 and answer.get_json()["id"] in before
