"""What ovas's web layer costs: ovas (on FakeBackend) against a bare Flask app answering the
same bytes, both behind the same server, driven by one load generator in one run. A page of
100 sessions is listed from 100 and from 1,000 sessions (one ovas app each): the goal with
1,000 is half the ratio reached with 100, since a page must not cost what every session does.

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

import orjson
from flask import Flask, Response, request

from blueprints.streaming.schemas import StreamListSchema, session_fields
from ovas import create_app
from ovas.testing import FakeBackend

SIZES = (100, 1000)  # sessions in the backend behind `GET /stream`, one ovas app each
PAGE = 100  # sessions on the page `GET /stream` asks for
LIST_LABEL = f"GET /streaming/stream ({SIZES[0]} sessions)"
# Headers that differ per response or are set by the server, not by the app.
_SERVER_HEADERS = {"content-length", "date", "server", "connection", "transfer-encoding"}


@dataclass
class Endpoint:
    label: str
    path: str
    goal: float  # the least ratio to bare Flask; see `relative_to`
    app: str = "ovas"  # which ovas app answers it
    relative_to: str = ""  # a label: then the goal is this share of that endpoint's ratio
    status: int = 0
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


def _ovas_with(sessions: int) -> tuple[Flask, list[str]]:
    """An ovas app on FakeBackend holding `sessions` ready sessions, and their ids."""
    # Setting up starts the sessions at once: more than the start rate limit allows.
    app = create_app({"START_RATE_LIMIT": ""}, backend=FakeBackend())
    client = app.test_client()
    ids = []
    logging.disable(logging.INFO)  # the audit trail of the starts
    for _ in range(sessions):
        answer = client.post("/streaming/stream", json={"id": "usd-viewer", "profile": "default"})
        assert answer.status_code in (200, 202), answer.data
        ids.append(answer.get_json()["id"])
    logging.disable(logging.NOTSET)
    return app, ids


def build_ovas() -> tuple[dict[str, Flask], list[Endpoint]]:
    """The ovas apps (one per size of SIZES, named `ovas<size>`), and the endpoints with
    their exact answers."""
    apps: dict[str, Flask] = {}
    endpoints = []
    for size in SIZES:
        name = f"ovas{size}"
        apps[name], ids = _ovas_with(size)
        if size == SIZES[0]:
            endpoints += [
                Endpoint("GET /cfg/apps", "/cfg/apps", 0.7, name),
                Endpoint("GET /streaming/stream/{id}", f"/streaming/stream/{ids[0]}", 0.7, name),
            ]
        endpoints.append(
            Endpoint(
                f"GET /streaming/stream ({size} sessions)",
                f"/streaming/stream?limit={PAGE}",
                0.5,
                name,
                relative_to="" if size == SIZES[0] else LIST_LABEL,
            )
        )
    for endpoint in endpoints:
        answer = apps[endpoint.app].test_client().get(endpoint.path)
        assert answer.status_code == 200, (endpoint.path, answer.status_code, answer.data)
        endpoint.status, endpoint.body = answer.status_code, answer.data
        endpoint.headers = tuple(
            (k, v) for k, v in answer.headers.items() if k.lower() not in _SERVER_HEADERS
        )
        if "sessions)" in endpoint.label:
            assert endpoint.body.count(b'"condition":"ready"') == PAGE
    return apps, endpoints


def build_bare(endpoints: list[Endpoint]) -> Flask:
    """A Flask app with one route per path, answering the bytes ovas answered for the
    endpoint whose query string the request carries."""
    app = Flask("bare")
    by_path: dict[str, dict[bytes, Endpoint]] = {}
    for endpoint in endpoints:
        path, _, query = endpoint.path.partition("?")
        by_path.setdefault(path, {})[query.encode()] = endpoint
    for number, (path, answers) in enumerate(by_path.items()):

        def view(answers=answers, **_):
            endpoint = answers[request.query_string]
            return Response(endpoint.body, endpoint.status, list(endpoint.headers))

        app.add_url_rule(path, f"endpoint{number}", view)
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


def profile_ovas(apps: dict[str, Flask], endpoints: list[Endpoint], requests: int = 200) -> None:
    """cProfile of the ovas apps alone (no server, no sockets), per endpoint."""
    for endpoint in endpoints:
        app = apps[endpoint.app]
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

        def call(environ=environ, expected=endpoint.body, app=app):
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


def compare_serialisers(app: Flask, repeat: int = 200) -> None:
    """In process: one page of `PAGE` sessions written as ovas writes it (marshmallow's
    StreamListSchema, then the app's JSON provider), against the alternative flask-smorest
    documents for a view that returns a `Response` (its schema then only documents): the
    same plain data (`session_fields`) written by orjson, which writes datetimes and enums
    itself. Both must give the same JSON."""
    page = app.extensions["ovas"].sessions.list(limit=PAGE)
    schema = StreamListSchema()

    def with_marshmallow() -> bytes:
        return app.json.dumps(schema.dump(page)).encode()

    def with_orjson() -> bytes:
        items = [session_fields(s) for s in page.items]
        body = {"offset": page.offset, "limit": page.limit, "count": page.count, "items": items}
        return orjson.dumps(body)

    assert orjson.loads(with_marshmallow()) == orjson.loads(with_orjson())
    costs = {}
    for name, write in (("marshmallow", with_marshmallow), ("orjson", with_orjson)):
        best = float("inf")
        for _ in range(5):
            started = time.process_time()
            for _ in range(repeat):
                write()
            best = min(best, (time.process_time() - started) / repeat * 1e6)
        costs[name] = best
    print(
        f"\nwriting a page of {PAGE} sessions (in process, CPU, best of 5): marshmallow "
        f"{costs['marshmallow']:.0f} us, the Response alternative (orjson on plain data) "
        f"{costs['orjson']:.0f} us; ratio {costs['marshmallow'] / costs['orjson']:.1f}"
    )


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

    ovas_apps, endpoints = build_ovas()
    servers = {}
    for name, app in ovas_apps.items():
        # Each with a bare twin answering the same paths with the same bytes.
        servers[name] = ServerProcess(app, server_kind, args.threads)
        bare_app = build_bare([e for e in endpoints if e.app == name])
        servers[f"bare-{name}"] = ServerProcess(bare_app, server_kind, args.threads)
    print(
        f"server: {server_kind} (1 process, {args.threads} threads); client: {args.threads} "
        f"keep-alive connections; {args.rounds} x {args.seconds:g} s per app and endpoint; "
        f"{os.cpu_count()} CPUs"
    )
    results = []
    try:
        for endpoint in endpoints:
            pair = {"ovas": servers[endpoint.app], "bare": servers[f"bare-{endpoint.app}"]}
            for server in pair.values():
                drive(server.port, endpoint, 0.3, args.threads)  # warm up
            samples: dict[str, list[Sample]] = {"ovas": [], "bare": []}
            for round_ in range(args.rounds):
                order = ["ovas", "bare"] if round_ % 2 == 0 else ["bare", "ovas"]
                for name in order:
                    samples[name].append(measure(pair[name], endpoint, args.seconds, args.threads))
            results.append((endpoint, samples))
    finally:
        for server in servers.values():
            server.close()

    header = (
        f"{'endpoint':<38} {'bytes':>7} {'ovas req/s':>10} {'bare req/s':>10} "
        f"{'ratio':>6} {'goal':>5}  {'ovas us':>7} {'bare us':>7} {'cpu ratio':>9}  result"
    )
    print("\n" + header + "\n" + "-" * len(header))
    ratios: dict[str, float] = {}
    for endpoint, samples in results:
        ovas, bare = samples["ovas"], samples["bare"]
        ratio = statistics.median(o.rps / b.rps for o, b in zip(ovas, bare, strict=True))
        ratios[endpoint.label] = ratio
        ovas_cpu = statistics.median(s.cpu_us for s in ovas)
        bare_cpu = statistics.median(s.cpu_us for s in bare)
        cpu_ratio = bare_cpu / ovas_cpu if ovas_cpu else float("nan")
        goal = endpoint.goal * ratios.get(endpoint.relative_to, 1.0)
        verdict = "met" if ratio >= goal else "MISSED"
        if endpoint.relative_to:
            verdict += (
                f" (goal: {endpoint.goal:g} x the {endpoint.relative_to.split('(')[1][:-1]} ratio)"
            )
        print(
            f"{endpoint.label:<38} {len(endpoint.body):>7} "
            f"{statistics.median(s.rps for s in ovas):>10.0f} "
            f"{statistics.median(s.rps for s in bare):>10.0f} {ratio:>6.2f} "
            f"{goal:>5.2f}  {ovas_cpu:>7.0f} {bare_cpu:>7.0f} {cpu_ratio:>9.2f}  {verdict}"
        )
    print(
        "\nratio: median over rounds of ovas/bare throughput; us: server CPU time per request "
        "(median); cpu ratio: bare/ovas CPU per request (higher is better)"
    )
    compare_serialisers(ovas_apps[f"ovas{SIZES[0]}"])
    if args.profile:
        profile_ovas(ovas_apps, endpoints)
    return 0


if __name__ == "__main__":
    sys.exit(main())
