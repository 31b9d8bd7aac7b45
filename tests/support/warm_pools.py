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
