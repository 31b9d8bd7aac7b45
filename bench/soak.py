"""Soak: ovas under gunicorn on the Docker backend, for N minutes of mixed traffic with faults,
against a private Docker daemon (live-restore) holding the stand-in Kit image.

    .venv/bin/python bench/soak.py [--minutes 20] [--workers 4] [--clients 8]
                                   [--fault-every 30] [--interval 10]

Clients run whole sessions (start, poll until ready, connect to the signaling port, leave,
stop), stop sessions while they start, abandon ready sessions (the connect timeout must end
them), and list. About every `--fault-every` seconds one fault, in turn: `docker kill` of a
session's container, `docker rm -f` of one, SIGKILL of a worker, SIGHUP of the master, the
daemon stopped for a few seconds and started again.

Every `--interval` seconds it prints each process's memory, open files and threads, the
containers and sessions, the 5xx answers and the poll latency. At the end it stops every
session through the API and fails (exit 1) on: any 500; memory, open files or threads that
grow without bound; a session in the wrong state (an abandoned session still ready well after
its connect timeout, a killed one still ready); a running Kit container no live session
owns; anything left behind on the daemon; a metrics folder that grows with worker turnover.
Needs root (it starts its own dockerd). `make test` runs a two-minute version
(tests/test_soak.py).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import docker
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support import dockerd  # noqa: E402

CONNECT_TIMEOUT = 20  # seconds: the clocks are short, so sessions end on their own here
IDLE_TIMEOUT = 10
RETENTION = 20
REAP_INTERVAL = 3
SLACK = 3 * REAP_INTERVAL + 10  # seconds a clock's end may take to show, faults included


@dataclass
class Tally:
    """What the clients saw, shared by their threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    statuses: Counter = field(default_factory=Counter)
    lost: int = 0  # requests that got no answer (a worker killed under them, the daemon...)
    polls: list[float] = field(default_factory=list)  # GET /stream/{id} latencies this interval
    server_errors: list[str] = field(default_factory=list)  # 500s, with what was asked
    abandoned: dict[str, float] = field(default_factory=dict)  # id -> when it was ready
    faulted: dict[str, float] = field(default_factory=dict)  # id -> when its container died

    def answer(self, method: str, path: str, response: requests.Response, took: float):
        with self.lock:
            self.statuses[response.status_code] += 1
            if response.status_code == 500:
                self.server_errors.append(f"{method} {path}: {response.text[:200]}")
            if method == "GET" and path.count("/") == 3:
                self.polls.append(took)


class Client(threading.Thread):
    def __init__(self, base: str, tally: Tally, stop: threading.Event, seed: int):
        super().__init__(daemon=True)
        self.base, self.tally, self.stop_event = base, tally, stop
        self.http = requests.Session()  # keep-alive, as browsers and proxies do
        self.random = random.Random(seed)

    def call(self, method: str, path: str, **kw) -> requests.Response | None:
        began = time.monotonic()
        try:
            response = self.http.request(method, self.base + path, timeout=30, **kw)
        except requests.RequestException:
            with self.tally.lock:
                self.tally.lost += 1
            return None
        self.tally.answer(method, path, response, time.monotonic() - began)
        return response

    def run(self) -> None:
        scenarios = (
            [self.whole] * 4 + [self.stop_while_starting] * 2 + [self.abandon] + [self.list_all] * 2
        )
        while not self.stop_event.is_set():
            self.random.choice(scenarios)()
            self.stop_event.wait(self.random.uniform(0.1, 0.5))

    def start_one(self) -> str | None:
        body = {"id": "kit-standin", "profile": "standin", "arguments": {}}
        answer = self.call("POST", "/streaming/stream", json=body)
        if answer is None or answer.status_code not in (200, 202):
            return None
        return answer.json()["id"]

    def poll_ready(self, session_id: str, within: float = 60) -> dict | None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline and not self.stop_event.is_set():
            answer = self.call("GET", f"/streaming/stream/{session_id}")
            if answer is not None and answer.status_code == 200:
                return answer.json()
            if answer is not None and answer.status_code in (404, 410):
                return None
            time.sleep(0.2)
        return None

    def whole(self) -> None:
        session_id = self.start_one()
        if session_id is None:
            return
        ready = self.poll_ready(session_id)
        if ready is not None:
            (host,) = ready["routes"]
            signaling = next(
                r for r in ready["routes"][host]["routes"] if r["description"] == "signaling"
            )
            try:
                with socket.create_connection((host, signaling["source_port"]), timeout=5):
                    self.stop_event.wait(self.random.uniform(1, 4))
            except OSError:
                pass
        self.call("DELETE", f"/streaming/stream/{session_id}")

    def stop_while_starting(self) -> None:
        session_id = self.start_one()
        if session_id is not None:
            self.call("DELETE", f"/streaming/stream/{session_id}")

    def abandon(self) -> None:
        session_id = self.start_one()
        if session_id is not None and self.poll_ready(session_id) is not None:
            with self.tally.lock:
                self.tally.abandoned[session_id] = time.monotonic()

    def list_all(self) -> None:
        self.call("GET", "/streaming/stream?limit=1000")


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def process_figures(pid: int) -> tuple[float, int, int] | None:
    """(resident MiB, open files, threads) of a process, or None if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        files = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss = int(fields["VmRSS"].split()[0]) / 1024
    return rss, files, int(fields["Threads"])


class Soak:
    def __init__(self, args):
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="ovas-soak-"))
        self.failures: list[str] = []
        self.tally = Tally()
        self.stop_event = threading.Event()
        self.daemon_down = threading.Event()
        self.samples: list[dict] = []
        self.suspects: dict[str, int] = {}  # running Kit containers of no live session
        self.faults: Counter = Counter()

    # Setting up

    def start_daemon(self) -> None:
        self.daemon = dockerd.start_private("ovassoak", options=["--live-restore"])
        dockerd.build_standin(self.daemon)
        self.engine = docker.APIClient(base_url=self.daemon.url, version="auto", timeout=30)

    def start_ovas(self) -> None:
        catalog = self.work / "catalog"
        catalog.mkdir()
        shutil.copy(REPO / "config/catalog/standin.yaml", catalog)
        self.metrics_dir = self.work / "metrics"
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = {
            **os.environ,
            "OVAS_BIND": f"127.0.0.1:{port}",
            "OVAS_WORKERS": str(self.args.workers),
            "OVAS_BACKEND": "docker",
            "OVAS_CATALOG_PATH": str(catalog),
            "DOCKER_HOST": self.daemon.url,
            "OVAS_DOCKER_PORT_RANGE": dockerd.free_ports(400),
            "OVAS_DOCKER_GPUS": "none",
            "OVAS_REAP_INTERVAL": str(REAP_INTERVAL),
            "OVAS_SESSION_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT),
            "OVAS_SESSION_IDLE_TIMEOUT": str(IDLE_TIMEOUT),
            "OVAS_SESSION_RETENTION": str(RETENTION),
            "OVAS_START_RATE_LIMIT": "",
            "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
        }
        self.log = (self.work / "gunicorn.log").open("wb")
        self.master = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.conf.py"],
            cwd=REPO,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{self.base}/ready", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if self.master.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"soak: ovas did not start: {self.gunicorn_tail()}")
            time.sleep(0.2)

    def gunicorn_tail(self) -> str:
        text = (self.work / "gunicorn.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-20:])

    # Faults

    def kit_containers(self, running: bool = True) -> list[dict]:
        found = self.engine.containers(
            all=not running, filters={"label": ["ovas.session", "ovas.record=container"]}
        )
        return found

    def fault_loop(self) -> None:
        faults = itertools.cycle(["kill", "remove", "worker", "reload", "kill", "daemon"])
        rng = random.Random(self.args.seed)
        while not self.stop_event.wait(self.args.fault_every * rng.uniform(0.7, 1.3)):
            kind = next(faults)
            try:
                self.fault(kind, rng)
            except Exception as exc:  # a fault that could not be done is reported, not fatal
                print(f"  fault {kind} not done: {exc}", flush=True)

    def fault(self, kind: str, rng: random.Random) -> None:
        if kind in ("kill", "remove"):
            running = self.kit_containers()
            if not running:
                return
            victim = rng.choice(running)
            session_id = victim["Labels"]["ovas.session"]
            if kind == "kill":
                self.engine.kill(victim["Id"])
            else:
                self.engine.remove_container(victim["Id"], force=True)
            with self.tally.lock:
                self.tally.faulted[session_id] = time.monotonic()
        elif kind == "worker":
            workers = children(self.master.pid)
            if workers:
                os.kill(rng.choice(workers), signal.SIGKILL)
        elif kind == "reload":
            self.master.send_signal(signal.SIGHUP)
        elif kind == "daemon":
            self.daemon_down.set()
            try:
                self.daemon.stop()
                self.stop_event.wait(4)
                self.daemon.start()
            finally:
                self.daemon_down.clear()
        self.faults[kind] += 1
        print(f"  fault: {kind}", flush=True)

    # Watching

    def sample(self, began: float) -> None:
        if self.daemon_down.is_set():
            return
        procs = {"master": process_figures(self.master.pid)}
        for pid in children(self.master.pid):
            procs[f"worker {pid}"] = process_figures(pid)
        procs = {k: v for k, v in procs.items() if v is not None}
        try:
            listed = requests.get(f"{self.base}/streaming/stream?limit=1000", timeout=30)
            running = self.kit_containers()
        except (requests.RequestException, docker.errors.DockerException):
            return
        if listed.status_code != 200:
            return
        items = listed.json()["items"]
        states = Counter(s["status"]["condition"] for s in items)
        live = {s["id"] for s in items if s["status"]["condition"] in ("creating", "ready")}
        orphans = {c["Labels"]["ovas.session"] for c in running} - live
        for session_id in list(self.suspects):
            if session_id not in orphans:
                del self.suspects[session_id]
        for session_id in orphans:
            self.suspects[session_id] = self.suspects.get(session_id, 0) + 1
            if self.suspects[session_id] == 3:  # three samples in a row: not a transition
                self.failures.append(f"container of {session_id} runs with no live session")
        now = time.monotonic()
        ready = {s["id"] for s in items if s["status"]["condition"] == "ready"}
        with self.tally.lock:
            polls, self.tally.polls = self.tally.polls, []
            abandoned = dict(self.tally.abandoned)
            faulted = dict(self.tally.faulted)
            statuses = dict(self.tally.statuses)
        for session_id, at in abandoned.items():
            if session_id in ready and now - at > CONNECT_TIMEOUT + SLACK:
                self.failures.append(
                    f"abandoned session {session_id} still ready {now - at:.0f} s after ready"
                )
                with self.tally.lock:
                    self.tally.abandoned.pop(session_id, None)
        for session_id, at in faulted.items():
            if session_id in ready and now - at > SLACK:
                self.failures.append(f"session {session_id} still ready after its container died")
                with self.tally.lock:
                    self.tally.faulted.pop(session_id, None)
        workers = [v for k, v in procs.items() if k.startswith("worker")]
        metrics_files = len(list(self.metrics_dir.glob("*.db")))
        figures = {
            "t": now - began,
            "worker_rss": statistics.mean(w[0] for w in workers) if workers else 0.0,
            "worker_files": max((w[1] for w in workers), default=0),
            "worker_threads": max((w[2] for w in workers), default=0),
            "master_rss": procs.get("master", (0, 0, 0))[0],
            "metrics_files": metrics_files,
        }
        self.samples.append(figures)
        p = sorted(polls)
        p50 = p[len(p) // 2] * 1000 if p else 0
        p95 = p[int(len(p) * 0.95)] * 1000 if p else 0
        server_errors = sum(n for code, n in statuses.items() if code >= 500)
        print(
            f"{figures['t']:6.0f}s workers {len(workers)} rss {figures['worker_rss']:5.1f} MiB "
            f"(master {figures['master_rss']:.1f}) files {figures['worker_files']:3d} "
            f"threads {figures['worker_threads']:3d} | containers {len(running):3d} "
            f"sessions {dict(states)} | 5xx {server_errors} lost {self.tally.lost} | "
            f"poll p50 {p50:.0f} ms p95 {p95:.0f} ms | metrics files {metrics_files}",
            flush=True,
        )

    def check_growth(self) -> None:
        usable = [s for s in self.samples if s["t"] > 30]  # after warm-up
        if len(usable) < 6:
            return
        third = len(usable) // 3
        for key, allowed in (("worker_rss", 30.0), ("worker_files", 30), ("worker_threads", 20)):
            first = statistics.median(s[key] for s in usable[:third])
            last = statistics.median(s[key] for s in usable[-third:])
            if last > first * 1.5 and last - first > allowed:
                self.failures.append(f"{key} grew from {first:.1f} to {last:.1f}")
        bound = 2 * self.args.workers + 6
        worst = max(s["metrics_files"] for s in usable)
        if worst > bound:
            self.failures.append(f"the metrics folder held {worst} files (more than {bound})")

    # Ending

    def drain(self) -> None:
        """Stop every session through the API; then nothing of ovas may remain."""
        http = requests.Session()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                items = http.get(f"{self.base}/streaming/stream?limit=1000", timeout=30)
                items = items.json()["items"] if items.status_code == 200 else None
            except requests.RequestException:
                items = None
            if items == []:
                break
            for session in items or []:
                with contextlib.suppress(requests.RequestException):
                    http.delete(f"{self.base}/streaming/stream/{session['id']}", timeout=30)
            time.sleep(1)
        # Claims of a start cut short by a fault are the reaper's after a minute.
        deadline = time.monotonic() + 90
        while left := self.engine.containers(all=True, filters={"label": "ovas.session"}):
            if time.monotonic() > deadline:
                break
            time.sleep(2)
        if left:
            names = sorted(n for c in left for n in c["Names"])
            self.failures.append(f"left behind on the daemon: {names[:10]} ({len(left)})")

    def run(self) -> int:
        self.start_daemon()
        try:
            self.start_ovas()
            print(
                f"soak: {self.args.minutes} min, {self.args.workers} workers, "
                f"{self.args.clients} clients, a fault every ~{self.args.fault_every} s",
                flush=True,
            )
            clients = [
                Client(self.base, self.tally, self.stop_event, self.args.seed + n)
                for n in range(self.args.clients)
            ]
            for client in clients:
                client.start()
            faults = threading.Thread(target=self.fault_loop, daemon=True)
            faults.start()
            began = time.monotonic()
            end = began + self.args.minutes * 60
            while time.monotonic() < end:
                time.sleep(min(self.args.interval, max(0.0, end - time.monotonic())))
                self.sample(began)
            self.stop_event.set()
            faults.join(timeout=60)
            for client in clients:
                client.join(timeout=60)
            self.sample(began)
            self.check_growth()
            self.drain()
        finally:
            self.stop_event.set()
            if getattr(self, "master", None) is not None:
                self.master.terminate()
                try:
                    self.master.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    self.master.kill()
            self.daemon.close()
        if self.tally.server_errors:
            self.failures.append(f"{len(self.tally.server_errors)} answers were 500:")
            self.failures.extend(f"  {e}" for e in self.tally.server_errors[:10])
        total = sum(self.tally.statuses.values())
        print(
            f"requests: {total}, by status {dict(sorted(self.tally.statuses.items()))}, "
            f"no answer {self.tally.lost}; faults {dict(self.faults)}"
        )
        if self.failures:
            print("soak: FAILED")
            for failure in self.failures:
                print(f"  {failure}")
            print(self.gunicorn_tail())
            return 1
        print("soak: passed")
        shutil.rmtree(self.work, ignore_errors=True)
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--fault-every", type=float, default=30)
    parser.add_argument("--interval", type=float, default=10)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    try:
        return Soak(args).run()
    except dockerd.NoDaemon as exc:
        print(f"soak: no Docker daemon: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
