"""How promptly the line moves on the Docker backend: with `OVAS_SESSION_CAPACITY=2` and 20
starts queued behind two sessions, each session is deleted in turn (HTTP, through gunicorn)
and the time until the next queued session's Kit container is created is measured, against
the time of a plain start (POST until its container is created) in the same run.

    .venv/bin/python bench/queued_starts.py [--queued 20] [--plain 20] [--workers 4]

Container creation is read from the daemon's own `create` events (their `timeNano`), against
this process's clock, which is the daemon's (one machine). Each measurement begins with the
system quiet: the session started before it is ready. Printed: p50, p95 and max of both, the
ratio of the p95s, whether the queued sessions started in their order, and the part of the
queued time after the deleted session's container was removed (its `destroy` event): what
is left once the engine's removal of a running container is taken out. Goal: the queued p95
at most 1.5 x the plain start's p95. A private Docker daemon is used (root), or
DOCKER_HOST's. Exits 0; a goal missed is printed as MISSED.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import queue  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import docker  # noqa: E402
import requests  # noqa: E402
from support import dockerd, ovas_process  # noqa: E402

from backends.docker.containers import CONTAINER, RECORD, SESSION  # noqa: E402

BODY = {"id": "kit-standin", "profile": "standin", "arguments": {}}
POLL = 0.05
GOAL = 1.5


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


class Creations:
    """The daemon's `create` and `destroy` events of Kit containers: when each session's was
    created, in the order they come, and when each was removed (seconds since the epoch)."""

    def __init__(self, client: docker.DockerClient):
        self.events = client.events(
            decode=True,
            filters={
                "type": "container",
                "event": ["create", "destroy"],
                "label": f"{RECORD}={CONTAINER}",
            },
        )
        self.found: queue.Queue[tuple[str, float]] = queue.Queue()
        self.destroyed: dict[str, float] = {}
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for event in self.events:
                labels = (event.get("Actor") or {}).get("Attributes") or {}
                session_id, at = labels.get(SESSION), event["timeNano"] / 1e9
                if not session_id:
                    continue
                if event.get("Action") == "create":
                    self.found.put((session_id, at))
                else:
                    with self.changed:
                        self.destroyed[session_id] = at
                        self.changed.notify_all()
        except Exception:  # the stream closed at the end
            pass

    def next(self, timeout: float = 60) -> tuple[str, float]:
        """The next session whose Kit container was created, and when."""
        return self.found.get(timeout=timeout)

    def destroyed_at(self, session_id: str, timeout: float = 60) -> float:
        """When the session's Kit container was removed."""
        with self.changed:
            if not self.changed.wait_for(lambda: session_id in self.destroyed, timeout):
                raise RuntimeError(f"no removal of session {session_id}'s container seen")
            return self.destroyed[session_id]

    def close(self) -> None:
        self.events.close()


def ready(http: requests.Session, base: str, session_id: str, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while http.get(f"{base}/streaming/stream/{session_id}", timeout=30).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"session {session_id} not ready within {limit} s")
        time.sleep(POLL)


def gone(client: docker.DockerClient, session_id: str, limit: float = 60) -> None:
    """Wait until nothing of the session's is left in the daemon."""
    deadline = time.monotonic() + limit
    while client.containers.list(all=True, filters={"label": f"{SESSION}={session_id}"}):
        if time.monotonic() > deadline:
            raise RuntimeError(f"session {session_id} not removed within {limit} s")
        time.sleep(POLL)


def plain_starts(http, base, sdk, creations: Creations, count: int) -> list[float]:
    """POST until the session's container is created, `count` times, one session at once."""
    took = []
    for _ in range(count):
        began = time.time()
        answer = http.post(f"{base}/streaming/stream", json=BODY, timeout=60)
        assert answer.status_code == 202, answer.text
        session_id = answer.json()["id"]
        created, at = creations.next()
        assert created == session_id, (created, session_id)
        took.append(at - began)
        ready(http, base, session_id)
        assert http.delete(f"{base}/streaming/stream/{session_id}").status_code == 204
        gone(sdk, session_id)
    return took


def queued_starts(
    http, base, creations: Creations, count: int
) -> tuple[list[float], list[float], bool]:
    """Two sessions, `count` queued behind them; each DELETE of the oldest running session
    until the next in line has its container. The times from the DELETE, those from the
    removal of the deleted session's container, and whether the order held."""
    running = []
    for _ in range(2):
        answer = http.post(f"{base}/streaming/stream", json=BODY, timeout=60)
        assert answer.status_code == 202 and answer.json()["queue_position"] is None
        running.append(answer.json()["id"])
        creations.next()
    waiting = []
    for place in range(1, count + 1):
        answer = http.post(f"{base}/streaming/stream", json=BODY, timeout=60)
        assert answer.json()["queue_position"] == place, answer.text
        waiting.append(answer.json()["id"])
    for session_id in running:
        ready(http, base, session_id)
    took, after_removal, order = [], [], []
    for _ in range(count):
        began = time.time()
        deleted = running.pop(0)
        assert http.delete(f"{base}/streaming/stream/{deleted}").status_code == 204
        created, at = creations.next()
        took.append(at - began)
        after_removal.append(at - creations.destroyed_at(deleted))
        order.append(created)
        running.append(created)
        ready(http, base, created)
    for session_id in running:
        http.delete(f"{base}/streaming/stream/{session_id}")
    return took, after_removal, order == waiting


def line(name: str, took: list[float]) -> str:
    return (
        f"{name:<30} p50 {statistics.median(took) * 1000:6.0f} ms   p95 "
        f"{pct(took, 0.95) * 1000:6.0f} ms   max {max(took) * 1000:6.0f} ms   (n={len(took)})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queued", type=int, default=20)
    parser.add_argument("--plain", type=int, default=20)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    held = contextlib.ExitStack()  # what the run holds, ended in `finally`, the last first
    try:
        daemon, work = ovas_process.standin_daemon("ovasqueue", held)
        port = ovas_process.free_port()
        env = ovas_process.docker_env(
            daemon.url,
            ovas_process.standin_catalog(work / "catalog"),
            dockerd.free_ports(30),
            OVAS_SESSION_CAPACITY="2",
            OVAS_QUEUE_SIZE=str(max(100, args.queued)),
            # Nobody polls the waiting sessions here: they must not be dropped meanwhile.
            OVAS_QUEUE_ABANDON_TIMEOUT="3600",
            OVAS_REAP_INTERVAL="30",
            OVAS_START_RATE_LIMIT="",
        )
        log = work / "gunicorn.log"
        master = held.enter_context(
            ovas_process.serving(ovas_process.gunicorn(port, args.workers), env, log)
        )
        base = f"http://127.0.0.1:{port}"
        ovas_process.wait_answering(f"{base}/ready", master, log)
        sdk = docker.DockerClient(base_url=daemon.url, version="auto")
        creations = Creations(sdk)
        held.callback(creations.close)
        http = requests.Session()
        plain_starts(http, base, sdk, creations, 1)  # warm the path once
        half = args.plain // 2
        plain = plain_starts(http, base, sdk, creations, half)
        queued, after_removal, in_order = queued_starts(http, base, creations, args.queued)
        plain += plain_starts(http, base, sdk, creations, args.plain - half)
        print(f"gunicorn {args.workers} workers, capacity 2, {args.queued} queued, 2 CPUs shared")
        print(line("plain start (POST->created)", plain))
        print(line("queued (DELETE->next created)", queued))
        print(line("  of which: old removed->next", after_removal))
        ratio = pct(queued, 0.95) / pct(plain, 0.95)
        print(
            f"p95 ratio {ratio:.2f} (p50 ratio "
            f"{statistics.median(queued) / statistics.median(plain):.2f}); goal p95 <= "
            f"{GOAL} x plain: {'met' if ratio <= GOAL else 'MISSED'}"
        )
        print(f"queued sessions started in their order: {'yes' if in_order else 'MISSED'}")
    finally:
        held.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
