"""How much ovas adds to starting a Kit container: on the stand-in image, the time from
`POST /stream` to the first 200 on `GET /stream/{id}`, against `docker run -d` plus the same
probe loop on the startup probe, in paired runs on one daemon. Prints the median ratio
(goal: at most 1.10) and the median latency of the POST itself.

    python bench/docker_start.py [--runs 15] [--poll 0.05]

Uses the daemon DOCKER_HOST (or the default socket) names, else starts a private one as
root, the way the tests do.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
from werkzeug.serving import WSGIRequestHandler, make_server

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from support import dockerd  # noqa: E402

from backends.docker import DockerBackend  # noqa: E402
from ovas import create_app  # noqa: E402
from ovas.catalog_files import FileCatalog  # noqa: E402

IMAGE = dockerd.STANDIN_IMAGE
BASELINE_PORTS = (30990, 30991, 30992)  # outside the range ovas hands out below


class QuietHandler(WSGIRequestHandler):
    def log_request(self, *args, **kwargs) -> None:
        pass


def wait_for_200(http: requests.Session, url: str, poll: float, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if http.get(url, timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer 200 within {timeout}s")
        time.sleep(poll)


def run_ovas(http: requests.Session, base: str, poll: float) -> tuple[float, float]:
    """(seconds from POST to the first 200, seconds the POST took)."""
    body = {"id": "kit-standin", "profile": "standin", "arguments": {}}
    began = time.perf_counter()
    answer = http.post(f"{base}/streaming/stream", json=body)
    posted = time.perf_counter() - began
    answer.raise_for_status()
    url = f"{base}/streaming/stream/{answer.json()['id']}"
    wait_for_200(http, url, poll)
    total = time.perf_counter() - began
    http.delete(url).raise_for_status()
    return total, posted


def run_docker(http: requests.Session, daemon_url: str, poll: float) -> float:
    """Seconds from `docker run -d` (same image, limits, ports) to the probe's first 200."""
    signaling, media, probe = BASELINE_PORTS
    env = {**os.environ, "DOCKER_HOST": daemon_url}
    command = [
        "docker",
        "run",
        "-d",
        "--cpus=0.25",
        "--memory=64m",
        "-e",
        "USD_PATH=/app/samples/stage01.usd",
        "-p",
        f"127.0.0.1:{signaling}:49100",
        "-p",
        f"127.0.0.1:{media}:47998/udp",
        "-p",
        f"127.0.0.1:{probe}:8011",
        IMAGE,
    ]
    began = time.perf_counter()
    container = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    wait_for_200(http, f"http://127.0.0.1:{probe}/v1/streaming/ready", poll)
    total = time.perf_counter() - began
    subprocess.run(
        ["docker", "rm", "-f", container.stdout.strip()], env=env, check=True, capture_output=True
    )
    return total


def serve_standin(daemon, work: Path, extra: dict[str, str] | None = None):
    """The stand-in image built on `daemon`, its catalog (plus `extra` files, by name) in
    `work/catalog`, a Docker backend on ports 30900-30980 and an ovas app over it served
    quietly on 127.0.0.1: (backend, app, server, base URL)."""
    dockerd.build_standin(daemon)
    (work / "catalog").mkdir()
    shutil.copy(REPO / "config/catalog/standin.yaml", work / "catalog")
    for name, text in (extra or {}).items():
        (work / "catalog" / name).write_text(text)
    backend = DockerBackend(
        FileCatalog(work / "catalog"),
        docker_host=daemon.url,
        port_range="30900-30980",
        gpus="none",
    )
    app = create_app({"REAP_INTERVAL": 0}, backend=backend)
    logging.getLogger("ovas").setLevel(logging.WARNING)
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return backend, app, server, f"http://127.0.0.1:{server.server_port}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--poll", type=float, default=0.05, help="seconds between polls")
    args = parser.parse_args()
    if shutil.which("docker") is None:
        print("docker_start: the docker CLI is needed for the baseline", file=sys.stderr)
        return 1
    try:
        daemon = dockerd.find_or_start("ovasbench")
    except dockerd.NoDaemon as exc:
        print(f"docker_start: no Docker daemon: {exc}", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="ovas-bench-"))
    try:
        backend, _app, server, base = serve_standin(daemon, work)
        http = requests.Session()
        run_ovas(http, base, args.poll)  # warm up both paths once
        run_docker(http, daemon.url, args.poll)
        ratios, posts, ovas_times, docker_times = [], [], [], []
        for i in range(args.runs):
            # Alternate which goes first, so drift on the host hits both alike.
            if i % 2:
                baseline = run_docker(http, daemon.url, args.poll)
                total, posted = run_ovas(http, base, args.poll)
            else:
                total, posted = run_ovas(http, base, args.poll)
                baseline = run_docker(http, daemon.url, args.poll)
            ratios.append(total / baseline)
            posts.append(posted)
            ovas_times.append(total)
            docker_times.append(baseline)
        server.shutdown()
        backend.close()
    finally:
        daemon.close()
        shutil.rmtree(work, ignore_errors=True)
    median = statistics.median
    print(f"runs: {args.runs} pairs, poll every {args.poll * 1000:.0f} ms, daemon {daemon.url}")
    print(f"ovas POST -> first 200:        median {median(ovas_times) * 1000:.0f} ms")
    print(f"docker run -d -> probe 200:    median {median(docker_times) * 1000:.0f} ms")
    print(f"median ratio ovas/docker run:  {median(ratios):.3f} (goal <= 1.10)")
    print(f"median POST /stream latency:   {median(posts) * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
