"""What ovas's web layer costs: ovas (on FakeBackend) against a bare Flask app answering the
same bytes, both behind the same server, driven by one load generator in one run.

    .venv/bin/python bench/api_overhead.py [--seconds 1.5] [--rounds 5] [--threads 4]
                                           [--server gunicorn|werkzeug] [--profile]

For each endpoint the two apps take turns (the order alternates each round), so a noisy
neighbour on a shared machine hurts both alike. Reported per endpoint: requests per second
and server CPU time per request, for each app, with the median of the rounds' ratios
ovas/bare. `--profile` adds where ovas spends its time, from cProfile on the app alone.
Always exits 0: the goals are reported, not enforced.
"""

from __future__ import annotations

import argparse
import cProfile
import http.client
import io
import logging
import multiprocessing
import os
import pstats
import socket
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, Response

from ovas import create_app
from ovas.testing import FakeBackend

SESSIONS = 100
# Headers that differ per response or are set by the server, not by the app.
_SERVER_HEADERS = {"content-length", "date", "server", "connection", "transfer-encoding"}


@dataclass
class Endpoint:
    label: str
    path: str
    goal: float
    status: int = 0
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


def build_ovas() -> tuple[Flask, list[Endpoint]]:
    """The ovas app with SESSIONS ready sessions, and the endpoints with their exact answers."""
    # Setting up starts SESSIONS sessions at once: more than the start rate limit allows.
    app = create_app({"START_RATE_LIMIT": ""}, backend=FakeBackend())
    client = app.test_client()
    ids = []
    logging.disable(logging.INFO)  # the audit trail of SESSIONS starts
    for _ in range(SESSIONS):
        answer = client.post("/streaming/stream", json={"id": "usd-viewer", "profile": "default"})
        assert answer.status_code in (200, 202), answer.data
        ids.append(answer.get_json()["id"])
    logging.disable(logging.NOTSET)
    endpoints = [
        Endpoint("GET /cfg/apps", "/cfg/apps", 0.7),
        Endpoint("GET /streaming/stream/{id}", f"/streaming/stream/{ids[0]}", 0.7),
        Endpoint(
            f"GET /streaming/stream ({SESSIONS} sessions)",
            f"/streaming/stream?limit={SESSIONS}",
            0.5,
        ),
    ]
    for endpoint in endpoints:
        answer = client.get(endpoint.path)
        assert answer.status_code == 200, (endpoint.path, answer.status_code, answer.data)
        endpoint.status, endpoint.body = answer.status_code, answer.data
        endpoint.headers = tuple(
            (k, v) for k, v in answer.headers.items() if k.lower() not in _SERVER_HEADERS
        )
    assert endpoints[2].body.count(b'"condition":"ready"') == SESSIONS
    return app, endpoints


def build_bare(endpoints: list[Endpoint]) -> Flask:
    """A Flask app with one route per endpoint, answering the bytes ovas answered."""
    app = Flask("bare")
    for number, endpoint in enumerate(endpoints):
        rule = endpoint.path.split("?")[0]

        def view(endpoint=endpoint):
            return Response(endpoint.body, endpoint.status, list(endpoint.headers))

        app.add_url_rule(rule, f"endpoint{number}", view)
    return app


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(app: Flask, port: int, server: str, threads: int) -> None:
    if server == "gunicorn":
        from gunicorn.app.base import BaseApplication

        class Server(BaseApplication):
            def load_config(self):
                settings = {
                    "bind": f"127.0.0.1:{port}",
                    "workers": 1,
                    "worker_class": "gthread",
                    "threads": threads,
                    "keepalive": 30,
                    "accesslog": None,
                    "loglevel": "warning",
                }
                for key, value in settings.items():
                    self.cfg.set(key, value)

            def load(self):
                return app

        Server().run()
    else:
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        make_server("127.0.0.1", port, app, threaded=True).serve_forever()


class ServerProcess:
    """One app served in a forked process, so the load generator never shares its GIL."""

    def __init__(self, app: Flask, server: str, threads: int):
        self.port = _free_port()
        context = multiprocessing.get_context("fork")
        self.process = context.Process(
            target=_serve, args=(app, self.port, server, threads), daemon=True
        )
        self.process.start()
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the {server} server did not start") from None
                time.sleep(0.05)

    def cpu_seconds(self) -> float:
        """CPU time of the server and its children (gunicorn's worker); 0 off Linux."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0.0
        pending = [self.process.pid]
        while pending:
            pid = pending.pop()
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / ticks
                for task in Path(f"/proc/{pid}/task").iterdir():
                    pending += [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
        return total

    def close(self) -> None:
        self.process.terminate()
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()


def drive(port: int, endpoint: Endpoint, seconds: float, threads: int) -> int:
    """Keep-alive GETs from `threads` connections for `seconds`; returns the answers counted,
    each checked to be the expected status and bytes."""
    stop = time.monotonic() + seconds
    counts = [0] * threads
    failures: list[str] = []

    def worker(slot: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        done = 0
        try:
            while time.monotonic() < stop:
                connection.request("GET", endpoint.path)
                answer = connection.getresponse()
                body = answer.read()
                if answer.status != endpoint.status or body != endpoint.body:
                    failures.append(f"{endpoint.path}: {answer.status} {body[:200]!r}")
                    return
                done += 1
        except (OSError, http.client.HTTPException) as error:
            failures.append(f"{endpoint.path}: {error!r}")
        finally:
            counts[slot] = done
            connection.close()

    pool = [threading.Thread(target=worker, args=(slot,)) for slot in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    if failures:
        raise RuntimeError(failures[0])
    return sum(counts)


@dataclass
class Sample:
    rps: float
    cpu_us: float


def measure(server: ServerProcess, endpoint: Endpoint, seconds: float, threads: int) -> Sample:
    cpu_before, started = server.cpu_seconds(), time.perf_counter()
    count = drive(server.port, endpoint, seconds, threads)
    elapsed, cpu = time.perf_counter() - started, server.cpu_seconds() - cpu_before
    return Sample(count / elapsed, cpu / count * 1e6)


def profile_ovas(app: Flask, endpoints: list[Endpoint], requests: int = 500) -> None:
    """cProfile of the ovas app alone (no server, no sockets), per endpoint."""
    for endpoint in endpoints:
        path, _, query = endpoint.path.partition("?")
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "REMOTE_ADDR": "127.0.0.1",
        }

        def call(environ=environ, expected=endpoint.body):
            body = b"".join(app.wsgi_app(dict(environ), lambda *start: None))
            assert body == expected

        for _ in range(50):
            call()
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        for _ in range(requests):
            call()
        profiler.disable()
        per_request = (time.perf_counter() - started) / requests * 1e6
        print(f"\n--- profile: {endpoint.label}: {per_request:.0f} us/request under cProfile")
        stats = pstats.Stats(profiler, stream=sys.stdout)
        stats.sort_stats("cumulative").print_stats(25)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="length of one run")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each app per endpoint")
    parser.add_argument("--threads", type=int, default=4, help="client connections")
    parser.add_argument("--server", choices=["gunicorn", "werkzeug"], default=None)
    parser.add_argument("--profile", action="store_true", help="cProfile the ovas side too")
    args = parser.parse_args()
    server_kind = args.server
    if server_kind is None:
        try:
            import gunicorn  # noqa: F401

            server_kind = "gunicorn"
        except ImportError:
            server_kind = "werkzeug"

    ovas_app, endpoints = build_ovas()
    bare_app = build_bare(endpoints)
    servers = {
        "ovas": ServerProcess(ovas_app, server_kind, args.threads),
        "bare": ServerProcess(bare_app, server_kind, args.threads),
    }
    print(
        f"server: {server_kind} (1 process, {args.threads} threads); client: {args.threads} "
        f"keep-alive connections; {args.rounds} x {args.seconds:g} s per app and endpoint; "
        f"{os.cpu_count()} CPUs"
    )
    results = []
    try:
        for endpoint in endpoints:
            for server in servers.values():
                drive(server.port, endpoint, 0.3, args.threads)  # warm up
            samples: dict[str, list[Sample]] = {"ovas": [], "bare": []}
            for round_ in range(args.rounds):
                order = ["ovas", "bare"] if round_ % 2 == 0 else ["bare", "ovas"]
                for name in order:
                    samples[name].append(
                        measure(servers[name], endpoint, args.seconds, args.threads)
                    )
            results.append((endpoint, samples))
    finally:
        for server in servers.values():
            server.close()

    header = (
        f"{'endpoint':<38} {'bytes':>6} {'ovas req/s':>10} {'bare req/s':>10} "
        f"{'ratio':>6} {'goal':>5}  {'ovas us':>7} {'bare us':>7} {'cpu ratio':>9}  result"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for endpoint, samples in results:
        ovas, bare = samples["ovas"], samples["bare"]
        ratio = statistics.median(o.rps / b.rps for o, b in zip(ovas, bare, strict=True))
        ovas_cpu = statistics.median(s.cpu_us for s in ovas)
        bare_cpu = statistics.median(s.cpu_us for s in bare)
        cpu_ratio = bare_cpu / ovas_cpu if ovas_cpu else float("nan")
        verdict = "met" if ratio >= endpoint.goal else "MISSED"
        print(
            f"{endpoint.label:<38} {len(endpoint.body):>6} "
            f"{statistics.median(s.rps for s in ovas):>10.0f} "
            f"{statistics.median(s.rps for s in bare):>10.0f} {ratio:>6.2f} "
            f"{endpoint.goal:>5.2f}  {ovas_cpu:>7.0f} {bare_cpu:>7.0f} {cpu_ratio:>9.2f}  {verdict}"
        )
    print(
        "\nratio: median over rounds of ovas/bare throughput; us: server CPU time per request "
        "(median); cpu ratio: bare/ovas CPU per request (higher is better)"
    )
    if args.profile:
        profile_ovas(ovas_app, endpoints)
    return 0


if __name__ == "__main__":
    sys.exit(main())
