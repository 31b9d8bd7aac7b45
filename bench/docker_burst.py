"""Bursts of starts on the Docker backend: 1, 10 and 40 stand-in sessions started at once
through gunicorn (4 workers, as config/gunicorn.conf.py runs it), against the floor: the
Docker SDK's `containers.create` then `start` of the same containers in parallel, plus the
same probe.

    .venv/bin/python bench/docker_burst.py [--sizes 1,10,40] [--rounds 3] [--workers 4]

Printed per size: POST p50/p95/max as the client saw it and p95 as served (the time
gunicorn's access log gives each `POST /streaming/stream`, matched by its X-Request-ID),
the SDK's `containers.create` p95 in the floor's burst, the time until every session is
ready (polling each every 50 ms until 200) for ovas and for the floor, and their ratio
(medians over rounds, the order alternating; percentiles over every round's requests).
Goals: at 40, the served POST p95 at most 1.5 x the SDK's create p95, and all ready within
1.10 x the floor; at 1, all ready within 1.05 x. Then engine calls per start and per GET,
counted by a proxy between ovas and the daemon. A private Docker daemon is used (root), or
DOCKER_HOST's. Exits 0; goals are reported (MISSED when missed), not enforced.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from support import dockerd, ovas_process  # noqa: E402

IMAGE = "ovas/kit-standin:1.0.0"
POLL = 0.05
_REQUEST_LINE = re.compile(rb"(?:^|\r\n)(GET|POST|PUT|DELETE|HEAD) /")
# A line of config/gunicorn.conf.py's access log for a start: its time in ms, its request ID.
_SERVED_POST = re.compile(r'"POST /streaming/stream HTTP/[\d.]+" \d+ .* (\d+)ms (\S+)$')
POST_GOAL = 1.5  # the served POST p95 at most this many times the SDK's create p95


def served_times(log: Path, request_ids: set[str], timeout: float = 10) -> list[float]:
    """Seconds gunicorn's access log gives the POSTs of `request_ids`, once all are logged
    (a worker writes its line as it answers). Raises RuntimeError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        found = {}
        for line in log.read_text(errors="replace").splitlines():
            match = _SERVED_POST.search(line)
            if match and match.group(2) in request_ids:
                found[match.group(2)] = int(match.group(1)) / 1000
        if len(found) == len(request_ids):
            return list(found.values())
        if time.monotonic() > deadline:
            missing = len(request_ids) - len(found)
            raise RuntimeError(f"{missing} POSTs are not in the access log {log}")
        time.sleep(0.1)


class CountingProxy:
    """TCP on 127.0.0.1 -> the daemon's unix socket, counting HTTP requests sent to it."""

    def __init__(self, socket_path: str):
        self.path = socket_path
        self.count = 0
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"tcp://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.server.accept()
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.path)
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source, target, counting: bool) -> None:
        try:
            while data := source.recv(65536):
                if counting:
                    with self.lock:
                        self.count += len(_REQUEST_LINE.findall(data))
                target.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def ready_within(url: str, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    http = requests.Session()
    while time.monotonic() < deadline:
        try:
            if http.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(POLL)
    raise RuntimeError(f"not ready within {limit} s: {url}")


def ovas_burst(base: str, size: int, log: Path) -> tuple[list[float], list[float], float]:
    """POST times as the clients saw them and as served, and the time until all ready."""
    barrier = threading.Barrier(size)
    body = {"id": "kit-standin", "profile": "standin", "arguments": {}}

    def one(_):
        http = requests.Session()
        barrier.wait()
        began = time.monotonic()
        answer = http.post(f"{base}/streaming/stream", json=body, timeout=60)
        posted = time.monotonic() - began
        assert answer.status_code == 202, answer.text
        session_id = answer.json()["id"]
        request_ids.add(answer.headers["X-Request-ID"])
        while http.get(f"{base}/streaming/stream/{session_id}", timeout=60).status_code != 200:
            time.sleep(POLL)
        return posted, time.monotonic() - began, session_id

    request_ids: set[str] = set()
    began = time.monotonic()
    with ThreadPoolExecutor(size) as pool:
        results = list(pool.map(one, range(size)))
    total = time.monotonic() - began
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda r: requests.delete(f"{base}/streaming/stream/{r[2]}"), results))
    return [r[0] for r in results], served_times(log, request_ids), total


def floor_burst(client: docker.DockerClient, size: int, ports: range) -> tuple[list[float], float]:
    """The SDK's `containers.create` times, and the time until all are started and ready."""
    barrier = threading.Barrier(size)

    def one(k):
        probe = ports[3 * k]
        barrier.wait()
        began = time.monotonic()
        container = client.containers.create(
            IMAGE,
            ports={
                "8011/tcp": ("127.0.0.1", probe),
                "49100/tcp": ("127.0.0.1", probe + 1),
                "47998/udp": ("127.0.0.1", probe + 2),
            },
            labels={"ovas.bench": "floor"},
        )
        created = time.monotonic() - began
        container.start()
        ready_within(f"http://127.0.0.1:{probe}/v1/streaming/ready")
        return container, created

    began = time.monotonic()
    with ThreadPoolExecutor(size) as pool:
        results = list(pool.map(one, range(size)))
    total = time.monotonic() - began
    for container, _ in results:
        container.remove(force=True)
    return [created for _, created in results], total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,40")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    held = contextlib.ExitStack()  # what the run holds, ended in `finally`, the last first
    try:
        daemon, work = ovas_process.standin_daemon("ovasburst", held)
        assert daemon.url.startswith("unix://"), "the counting proxy needs a unix socket"
        proxy = CountingProxy(daemon.url.removeprefix("unix://"))
        port = ovas_process.free_port()
        ovas_ports = dockerd.free_ports(3 * max(sizes) + 20)
        env = ovas_process.docker_env(
            daemon.url,
            ovas_process.standin_catalog(work / "catalog"),
            ovas_ports,
            OVAS_REAP_INTERVAL="0",
            OVAS_START_RATE_LIMIT="",
        )
        access_log = work / "gunicorn.log"
        command = ovas_process.gunicorn(port, args.workers)
        master = held.enter_context(ovas_process.serving(command, env, access_log))
        base = f"http://127.0.0.1:{port}"
        ovas_process.wait_answering(f"{base}/ready", master, access_log)
        first = int(ovas_ports.split("-")[1]) + 1
        floor_ports = range(first, first + 3 * max(sizes) + 3)
        sdk = docker.DockerClient(base_url=daemon.url, version="auto", max_pool_size=64)
        ovas_burst(base, 1, access_log)  # warm both paths once
        floor_burst(sdk, 1, floor_ports)
        print(f"gunicorn {args.workers} workers, {args.rounds} rounds, 2 CPUs shared")
        print(
            f"{'N':>3} {'POST p50':>9} {'p95':>7} {'max':>7} {'served p95':>11} "
            f"{'SDK create p95':>15} {'ovas all ready':>15} {'floor':>7} {'ratio':>6}"
        )
        verdicts = []
        for size in sizes:
            posts, served, creates, ovas_t, floor_t, ratios = [], [], [], [], [], []
            for r in range(args.rounds):
                if r % 2:
                    c, f = floor_burst(sdk, size, floor_ports)
                    p, s, o = ovas_burst(base, size, access_log)
                else:
                    p, s, o = ovas_burst(base, size, access_log)
                    c, f = floor_burst(sdk, size, floor_ports)
                posts += p
                served += s
                creates += c
                ovas_t.append(o)
                floor_t.append(f)
                ratios.append(o / f)
            ratio = statistics.median(ratios)
            served_p95, create_p95 = pct(served, 0.95), pct(creates, 0.95)
            if size >= 40:
                post_ratio = served_p95 / create_p95
                verdicts.append(
                    f"N={size}: served POST p95 {served_p95 * 1000:.0f}ms vs SDK create p95 "
                    f"{create_p95 * 1000:.0f}ms = {post_ratio:.2f}x (goal <= {POST_GOAL}x): "
                    f"{'met' if post_ratio <= POST_GOAL else 'MISSED'}"
                )
                verdicts.append(
                    f"N={size}: all ready {ratio:.2f}x the floor (goal <= 1.10x): "
                    f"{'met' if ratio <= 1.10 else 'MISSED'}"
                )
            if size == 1:
                verdicts.append(
                    f"N=1: all ready {ratio:.2f}x the floor (goal <= 1.05x): "
                    f"{'met' if ratio <= 1.05 else 'MISSED'}"
                )
            print(
                f"{size:>3} {statistics.median(posts) * 1000:>7.0f}ms "
                f"{pct(posts, 0.95) * 1000:>5.0f}ms {max(posts) * 1000:>5.0f}ms "
                f"{served_p95 * 1000:>9.0f}ms {create_p95 * 1000:>13.0f}ms "
                f"{statistics.median(ovas_t):>14.2f}s {statistics.median(floor_t):>6.2f}s "
                f"{ratio:>6.2f}"
            )
        for verdict in verdicts:
            print(verdict)
        # Engine calls, through the counting proxy: one start, then GETs of it once ready.
        from backends.docker import DockerBackend
        from ovas.catalog_files import FileCatalog
        from ovas.testing import make_request, service_for, wait_for

        catalog = FileCatalog(work / "catalog")
        counted = DockerBackend(catalog, docker_host=proxy.url, port_range=ovas_ports, gpus="none")
        sessions = service_for(counted)
        before = proxy.count
        request = make_request(catalog, app_id="kit-standin", profile_id="standin")
        session_id = counted.start(request).record.id
        start_calls = proxy.count - before
        wait_for(sessions, session_id, "ready")
        time.sleep(3)  # past the moments right after readiness
        before = proxy.count
        for _ in range(20):
            sessions.get(session_id)
        per_get = (proxy.count - before) / 20
        counted.stop(session_id)
        counted.close()
        print(
            f"engine calls: {start_calls} for a start (admission and create; the container's "
            f"start follows in the background), {per_get:.1f} per GET of a ready session"
        )
    finally:
        held.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
