"""What a warm pool saves: on the Docker backend with the stand-in image, the time from
`POST /stream` to the first 200 for a start that a pool's ready session answers, against an
on-demand start of the same app (POST, then polling `GET /stream/{id}` every `--poll`
seconds until 200), paired in one run, the order alternating.

    python bench/warm_pool.py [--runs 15] [--poll 0.05] [--size 2]

Prints the p50 and p95 of each, their ratio, and how many pooled POSTs answered 200
themselves. Goal: pooled p50 <= 50 ms, with the POST itself answering 200. The pool is
refilled between pairs, as the reaper does, outside the timings. Uses the daemon
DOCKER_HOST (or the default socket) names, else starts a private one as root, as the tests
do. Exits 0; the goal is reported, not enforced.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "bench")]

from docker_start import serve_standin  # noqa: E402
from support import dockerd  # noqa: E402

from ovas.lifecycle import Mark  # noqa: E402

POOL = """\
apiVersion: ovas.io/v1alpha1
kind: WarmPool
metadata: {{name: standins}}
spec: {{application: kit-standin, version: latest, profile: standin, size: {size}}}
"""
MATCH = {"id": "kit-standin", "profile": "standin"}
# Another stage than the profile's own: no pool matches, so it starts on demand.
ON_DEMAND = {**MATCH, "arguments": {"usd_stage_uri": "omniverse://nucleus/bench.usd"}}


def first_200(http: requests.Session, base: str, body: dict, poll: float) -> tuple[float, int]:
    """Seconds from the POST to the first 200 (the POST's own, or a GET's), and the POST's
    status; the session is stopped afterwards."""
    began = time.perf_counter()
    posted = http.post(f"{base}/streaming/stream", json=body, timeout=30)
    session_id = posted.json()["id"]
    status = posted.status_code
    while status != 200:
        if time.perf_counter() - began > 60:
            raise RuntimeError(f"session {session_id} not ready in 60 s")
        time.sleep(poll)
        status = http.get(f"{base}/streaming/stream/{session_id}", timeout=30).status_code
    elapsed = time.perf_counter() - began
    http.delete(f"{base}/streaming/stream/{session_id}", timeout=30)
    return elapsed, posted.status_code


def refill(app, size: int, timeout: float = 60) -> None:
    """Reap until the pool holds `size` sessions a claim may take."""
    state = app.extensions["ovas"]
    deadline = time.monotonic() + timeout
    while True:
        ready = [
            r
            for r in state.backend.records()
            if r.pooled and r.outcome is None and Mark.READY in r.marks
        ]
        if len(ready) >= size:
            return
        if time.monotonic() > deadline:
            raise RuntimeError("the pool did not refill within 60 s")
        state.sessions.reap()
        time.sleep(0.1)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--poll", type=float, default=0.05, help="seconds between polls")
    parser.add_argument("--size", type=int, default=2, help="the pool's size")
    args = parser.parse_args()
    try:
        daemon = dockerd.find_or_start("ovasbench")
    except dockerd.NoDaemon as exc:
        print(f"warm_pool: no Docker daemon: {exc}", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="ovas-bench-"))
    pooled, on_demand, statuses = [], [], []
    try:
        pools = {"pools.yaml": POOL.format(size=args.size)}
        backend, app, server, base = serve_standin(daemon, work, pools)
        http = requests.Session()
        refill(app, args.size)
        first_200(http, base, MATCH, args.poll)  # warm up both paths once
        first_200(http, base, ON_DEMAND, args.poll)
        for i in range(args.runs):
            refill(app, args.size)
            # Alternate which goes first, so drift on the host hits both alike.
            for body in (MATCH, ON_DEMAND) if i % 2 == 0 else (ON_DEMAND, MATCH):
                elapsed, status = first_200(http, base, body, args.poll)
                if body is MATCH:
                    pooled.append(elapsed)
                    statuses.append(status)
                else:
                    on_demand.append(elapsed)
        server.shutdown()
        for session in app.extensions["ovas"].sessions.all():
            backend.stop(session.id)
        backend.close()
    finally:
        daemon.close()
        shutil.rmtree(work, ignore_errors=True)
    p50_pooled, p50_demand = statistics.median(pooled), statistics.median(on_demand)
    print(f"runs: {args.runs} pairs, pool of {args.size}, poll every {args.poll * 1000:.0f} ms")
    print(
        f"pooled match, POST -> first 200:   p50 {p50_pooled * 1000:.1f} ms, "
        f"p95 {pct(pooled, 0.95) * 1000:.1f} ms"
    )
    print(
        f"on demand, POST -> first 200:      p50 {p50_demand * 1000:.1f} ms, "
        f"p95 {pct(on_demand, 0.95) * 1000:.1f} ms"
    )
    print(f"ratio pooled / on demand (p50):    {p50_pooled / p50_demand:.3f}")
    print(
        f"pooled POSTs answering 200:        {statuses.count(200)} of {len(statuses)} "
        f"(goal: all, p50 <= 50 ms: {'met' if p50_pooled <= 0.05 else 'missed'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
