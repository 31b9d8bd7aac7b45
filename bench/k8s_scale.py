"""How the Kubernetes backend scales with the number of sessions.

With 10, 100 and 1000 ready sessions in the emulated cluster (kmock's emulator over real HTTP
on 127.0.0.1, with the fake kubelet of tests/support, in a process of its own as an API
server would be), measures GET /stream (its default page of 50) and
GET /stream/{id} through the ovas app, and the Kubernetes API calls each costs (from the
emulator's request log). Goals: calls constant in the number of sessions; GET /stream at 1000
sessions within 5x its latency at 10.

    .venv/bin/python bench/k8s_scale.py [--repeat 30] [--sizes 10,100,1000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from support.kube_requests import request_for  # noqa: E402
from support.kube_server import EmulatedCluster, catalog_documents  # noqa: E402

from backends.kubernetes import KubernetesBackend  # noqa: E402
from ovas import create_app  # noqa: E402
from ovas.services import SessionService  # noqa: E402

NAMESPACE = "omni-streaming"


class Cluster:
    """The emulated cluster in a child process, steered through a pipe."""

    def __init__(self):
        self.conn, child = multiprocessing.Pipe()
        self.process = multiprocessing.Process(target=_serve, args=(child,), daemon=True)
        self.process.start()
        self.kubeconfig = self.conn.recv()

    def ask(self, *command):
        self.conn.send(command)
        return self.conn.recv()

    def calls(self) -> int:
        return self.ask("calls")

    def close(self) -> None:
        self.ask("stop")
        self.process.join(10)


def _serve(conn) -> None:
    with EmulatedCluster(interval=0.2) as cluster:
        cluster.seed(NAMESPACE, catalog_documents())
        conn.send(cluster.kubeconfig)
        while True:
            command, *args = conn.recv()
            if command == "calls":
                conn.send(cluster.calls())
            elif command == "run":
                cluster.cluster.running = args[0]
                conn.send(True)
            elif command == "stop":
                conn.send(True)
                return


def measure(client, cluster, url: str, repeat: int) -> tuple[float, int]:
    """Median latency in ms, and the API calls of one request."""
    client.get(url)  # warm caches and connections
    times, calls = [], set()
    for _ in range(repeat):
        before = cluster.calls()
        began = time.perf_counter()
        answer = client.get(url)
        times.append((time.perf_counter() - began) * 1000)
        calls.add(cluster.calls() - before)
        assert answer.status_code == 200, answer.get_data(as_text=True)
    assert len(calls) == 1, calls
    return statistics.median(times), calls.pop()


def wait_ready(sessions: SessionService, total: int, timeout: float = 300) -> None:
    """Until `total` sessions are ready, each marked ready by a reap, as ovas's reaper
    does (so that the reads measured write nothing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sessions.reap()
        found = sessions.all()
        if len(found) == total and all(s.ready for s in found):
            return
        time.sleep(0.5)
    raise RuntimeError(f"the {total} sessions did not all become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--mode", default="pod", choices=["pod", "helmrelease"])
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]

    rows = []
    cluster = Cluster()
    backend = KubernetesBackend(namespace=NAMESPACE, mode=args.mode, config_file=cluster.kubeconfig)
    app = create_app({"TESTING": True, "REAP_INTERVAL": 0}, backend=backend)
    client = app.test_client()
    sessions = app.extensions["ovas"].sessions
    template = request_for(backend)
    started: list[str] = []
    for size in sizes:
        cluster.ask("run", True)
        while len(started) < size:
            # As POST /stream builds it, without asking the catalog a thousand times.
            request = replace(template, id=str(uuid.uuid4()))
            started.append(backend.start(request).record.id)
        wait_ready(sessions, size)
        cluster.ask("run", False)  # the kubelet idles: measure the API alone
        list_ms, list_calls = measure(client, cluster, "/streaming/stream", args.repeat)
        one = started[len(started) // 2]
        get_ms, get_calls = measure(client, cluster, f"/streaming/stream/{one}", args.repeat)
        rows.append((size, list_ms, list_calls, get_ms, get_calls))
    backend.close()
    cluster.close()

    print(f"Kubernetes backend, mode {args.mode}, median of {args.repeat} requests each")
    header = ("sessions", "GET /stream", "calls", "GET /stream/{id}", "calls")
    print("{:>8}  {:>12}  {:>5}  {:>16}  {:>5}".format(*header))
    for size, list_ms, list_calls, get_ms, get_calls in rows:
        print(f"{size:>8}  {list_ms:>9.1f} ms  {list_calls:>5}  {get_ms:>13.1f} ms  {get_calls:>5}")
    first, last = rows[0], rows[-1]
    ratio = last[1] / first[1]
    constant = len({r[2] for r in rows}) == 1 and len({r[4] for r in rows}) == 1
    print(f"API calls constant in the number of sessions: {'yes' if constant else 'NO'}")
    print(
        f"GET /stream at {last[0]} is {ratio:.1f}x its latency at {first[0]} "
        f"(goal: within 5x): {'met' if ratio <= 5 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
