"""The signaling gateway over time: sessions and clients coming and going through a real
`ovas gateway` process for `--minutes`, with one restart of it midway; its open file
descriptors and RSS must stay flat and no socket to a session may be left behind.

    .venv/bin/python bench/gateway_soak.py [--minutes 10] [--clients 100] [--sessions 25]
                                           [--rate 2] [--churn 10] [--every 5]
                                           [--max-clients 8]

On loopback: the emulated Kubernetes cluster (tests/support/kube_server.py, every pod at
127.0.0.1) whose stand-in profile's signaling port is a WebSocket echo's
(tests/support/gateway.py); ovas (the API) and `ovas gateway` (tests/support/
gateway_process.py, built from its environment as an operator runs it) both on that cluster.
`--sessions` sessions are started through the API; every `--churn` seconds one more is
started and the oldest stopped. `--clients` clients each sign in to a random live session
(as NVIDIA's library does, by path or by the session's name, with its stream token; by
chance some get 429, `--max-clients` being in already), send `--rate` messages a second
and check each echo, leave after 2 to 20 seconds and come back.
At half time the gateway gets SIGTERM under its clients (as a rollout does) and is started
again on the same port; the clients reconnect.

Every `--every` seconds the gateway's open file descriptors (/proc/<pid>/fd) and RSS are
sampled. Printed: both at the start (no client yet), at the end of each half (loaded) and
once the clients are gone; their slope in each half (past its first third, the warm-up);
the echo's connections left; the gateway's relay errors and handshakes (both processes);
what the clients saw. Goals: open fds after the clients are gone within +10 of the start,
RSS then within +20% of the first half's plateau (its median past the warm-up), no
connection left at the echo. Always exits 0: goals are reported, not enforced.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import WSMsgType

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from gateway import raise_open_files, rss_mib  # noqa: E402
from support.kube_server import EmulatedCluster, catalog_documents  # noqa: E402

from backends.kubernetes import KubernetesBackend  # noqa: E402
from ovas import create_app  # noqa: E402
from tests.support.gateway import DOMAIN, Echo, WildcardResolver, viewer_protocols  # noqa: E402
from tests.support.gateway_process import (  # noqa: E402
    GatewayProcess,
    as_user,
    by_host,
    by_path,
    gateway_and_api,
    write_keys,
)

NAMESPACE = "omni-streaming"
START = {"id": "kit-standin", "profile": "standin", "version": "1.0.0"}
HOLD = (2.0, 20.0)  # seconds a client stays signed in
RECONNECT = 5.0  # seconds the clients take to come back after a restart
SETTLE = 15.0  # seconds for the echo's connections to close once the clients are gone


@dataclass
class Sample:
    at: float  # seconds since the start
    half: int  # 0 before any client, 1, 2, 3 once they are gone
    fds: int
    rss: float  # MiB


@dataclass
class Seen:
    """What the clients saw, and how much of it while the gateway restarted (from its
    SIGTERM to `RECONNECT` seconds after the new process answered)."""

    # handshake, echo, refused <status> (404/410: a session stopped; 429: --max-clients),
    # unreachable (no answer), dropped (closed under the client), wrong (another echo than
    # what was sent), late (no echo within 5 s)
    counts: Counter = field(default_factory=Counter)
    during_restart: Counter = field(default_factory=Counter)
    restarting: bool = False

    def note(self, what: str) -> None:
        self.counts[what] += 1
        if self.restarting:
            self.during_restart[what] += 1


def opened_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def scraped(port: int) -> dict[str, float]:
    """The gateway's relay errors and relayed handshakes (its counters since it started)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as got:
        lines = got.read().decode().splitlines()
    wanted = {
        "ovas_gateway_relay_errors_total": "relay errors",
        'ovas_gateway_handshakes_total{code="101"}': "handshakes",
    }
    found = dict.fromkeys(wanted.values(), 0.0)
    for line in lines:
        name, _, value = line.rpartition(" ")
        if name in wanted:
            found[wanted[name]] = float(value)
    return found


def seeded(echo_port: int) -> list[dict]:
    """The sample catalog, its stand-in profile's signaling port the echo's."""
    documents = catalog_documents()
    for doc in documents:
        if doc["kind"] == "ApplicationProfile" and doc["metadata"]["name"] == "standin":
            doc["spec"]["chartValues"]["streamingKit"]["ports"]["signaling"] = echo_port
    return documents


class Core:
    """ovas on the emulated cluster, called through its API as alice (one caller at once)."""

    def __init__(self, kubeconfig: str, settings: dict):
        backend = KubernetesBackend(namespace=NAMESPACE, config_file=kubeconfig, gateway=True)
        self.backend = backend
        api = {**settings, "LOG_LEVEL": "WARNING"}
        self.api = create_app(api, backend=backend).test_client()

    def start(self, count: int) -> dict[str, str]:
        """`count` new ready sessions: {id: stream token}."""
        ids = []
        for _ in range(count):
            answer = self.api.post("/stream", json=START, **as_user("alice"))
            assert answer.status_code in (200, 202), answer.text
            ids.append(answer.get_json()["id"])
        ready, deadline = {}, time.monotonic() + 60
        while len(ready) < len(ids):
            assert time.monotonic() < deadline, f"sessions not ready: {set(ids) - set(ready)}"
            for sid in set(ids) - set(ready):
                answer = self.api.get(f"/stream/{sid}", **as_user("alice"))
                if answer.status_code == 200:
                    ready[sid] = answer.get_json()["stream_token"]
            time.sleep(0.2)
        return ready

    def stop(self, sid: str) -> None:
        answer = self.api.delete("/stream", json={"id": sid}, **as_user("alice"))
        assert answer.status_code in (200, 202, 204), answer.text


async def client(http, live: dict[str, str], port: int, args, until: float, seen: Seen):
    """Sign in to a random live session, send and check echoes, leave; again until `until`."""
    n = 0
    while time.monotonic() < until:
        sid, token = random.choice(list(live.items()))
        url = by_path(sid, port) if random.random() < 0.5 else by_host(sid, DOMAIN, port)
        try:
            ws = await http.ws_connect(url, protocols=viewer_protocols(sid, token), compress=0)
        except aiohttp.WSServerHandshakeError as exc:
            seen.note(f"refused {exc.status}")
            await asyncio.sleep(1.0)
            continue
        except (aiohttp.ClientError, OSError):  # TimeoutError too
            seen.note("unreachable")
            await asyncio.sleep(1.0)
            continue
        seen.note("handshake")
        leave = min(until, time.monotonic() + random.uniform(*HOLD))
        try:
            while time.monotonic() < leave:
                n += 1
                await ws.send_str(f"{sid}:{n}")
                message = await ws.receive(timeout=5)
                if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR):
                    seen.note("dropped")
                    break
                if message.data != f"{sid}:{n}":
                    seen.note("wrong")
                    break
                seen.note("echo")
                await asyncio.sleep(1 / args.rate)
        except (aiohttp.ClientError, ConnectionError):
            seen.note("dropped")
        except TimeoutError:
            seen.note("late")
        finally:
            await ws.close()
        await asyncio.sleep(random.uniform(0.0, 1.0))


async def soak(args) -> None:
    raise_open_files(4 * args.clients + 512)
    work = Path(tempfile.mkdtemp(prefix="ovas-gateway-soak-"))
    echo = await Echo().start()
    with EmulatedCluster(interval=0.2, pod_ip="127.0.0.1") as cluster:
        cluster.seed(NAMESPACE, seeded(echo.port))
        keys = write_keys(work / "keys.yaml")
        engine = {
            "OVAS_BACKEND": "kubernetes",
            "KUBECONFIG": cluster.kubeconfig,
            "OVAS_KUBERNETES_NAMESPACE": NAMESPACE,
        }
        gateway, settings = gateway_and_api(
            engine,
            keys,
            work / "gateway.log",
            OVAS_GATEWAY_MAX_CLIENTS=str(args.max_clients),
            OVAS_LOG_LEVEL="WARNING",
        )
        core = Core(cluster.kubeconfig, settings)
        try:
            await run(args, core, gateway, echo)
        finally:
            gateway.close()
            core.backend.close()
            await echo.stop()
    print(f"(the gateway's log: {work / 'gateway.log'})")


async def run(args, core: Core, gateway: GatewayProcess, echo: Echo) -> None:
    live = await asyncio.to_thread(core.start, args.sessions)
    await asyncio.to_thread(gateway.start)
    began = time.monotonic()
    half_time = began + args.minutes * 30
    until = began + args.minutes * 60
    samples: list[Sample] = []
    half = [0]
    replaced = [0]

    def sample() -> Sample:
        pid = gateway.process.pid
        taken = Sample(time.monotonic() - began, half[0], opened_fds(pid), rss_mib(pid))
        samples.append(taken)
        return taken

    async def sampler() -> None:
        while time.monotonic() < until:
            await asyncio.sleep(args.every)
            if gateway.process.poll() is None and half[0] in (1, 2):
                with contextlib.suppress(FileNotFoundError):  # the restart, under way
                    sample()

    async def churn() -> None:
        while time.monotonic() + args.churn < until - args.churn:
            await asyncio.sleep(args.churn)
            live.update(await asyncio.to_thread(core.start, 1))
            oldest = next(iter(live))
            del live[oldest]  # no new client picks it; those on it are closed or leave
            await asyncio.to_thread(core.stop, oldest)
            replaced[0] += 1

    start = sample()
    half[0] = 1
    seen = Seen()
    connector = aiohttp.TCPConnector(limit=0, resolver=WildcardResolver())
    async with aiohttp.ClientSession(connector=connector) as http:
        clients = [
            asyncio.create_task(client(http, live, gateway.port, args, until, seen))
            for _ in range(args.clients)
        ]
        background = [asyncio.create_task(sampler()), asyncio.create_task(churn())]
        await asyncio.sleep(half_time - time.monotonic())
        first_end = sample()
        first = await asyncio.to_thread(scraped, gateway.port)
        seen.restarting, half[0] = True, 0  # no sample of either process in between
        await asyncio.to_thread(gateway.stop)
        await asyncio.to_thread(gateway.start)
        half[0] = 2
        await asyncio.sleep(RECONNECT)
        seen.restarting = False
        await asyncio.sleep(max(0.0, until - args.every / 2 - time.monotonic()))
        second_end = sample()
        await asyncio.gather(*clients, *background)
    half[0] = 3
    deadline = time.monotonic() + SETTLE
    while echo.open and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    await asyncio.sleep(2.0)  # the gateway's own closing, after the echo's
    gone = sample()
    second = await asyncio.to_thread(scraped, gateway.port)
    print(f"sessions: {args.sessions} started, then {replaced[0]} replaced")
    report(args, samples, start, first_end, second_end, gone, echo.open, first, second, seen)


def slope(samples: list[Sample], half: int) -> tuple[float, float]:
    """Least-squares slope of fds and of RSS in a half past its first third, per minute."""
    taken = [s for s in samples if s.half == half]
    taken = taken[len(taken) // 3 :]
    if len(taken) < 3:
        return float("nan"), float("nan")
    at = [s.at / 60 for s in taken]
    fds = statistics.linear_regression(at, [s.fds for s in taken]).slope
    return fds, statistics.linear_regression(at, [s.rss for s in taken]).slope


def report(args, samples, start, first_end, second_end, gone, left, first, second, seen):
    steady = [s.rss for s in samples if s.half == 1]
    plateau = statistics.median(steady[len(steady) // 3 :] or [start.rss])
    print(
        f"{args.minutes:g} min: {args.clients} clients, {args.sessions} sessions (one replaced "
        f"every {args.churn:g} s), {args.rate:g} msg/s each, gateway restarted at half time"
    )
    print(f"{'':>28}{'open fds':>10}{'RSS MiB':>10}")
    for name, s in (
        ("start (no client)", start),
        ("end of 1st half (loaded)", first_end),
        ("end of 2nd half (loaded)", second_end),
        ("clients gone", gone),
    ):
        print(f"{name:>28}{s.fds:>10}{s.rss:>10.1f}")
    for half in (1, 2):
        fds, rss = slope(samples, half)
        print(f"{f'slope, half {half}':>28}{fds:>+10.2f}{rss:>+10.2f}  (per minute)")
    print(f"{'1st half RSS plateau':>28}{'':>10}{plateau:>10.1f}")
    print(f"{len(samples)} samples every {args.every:g} s")
    errors = first["relay errors"] + second["relay errors"]
    handshakes = first["handshakes"] + second["handshakes"]
    print(
        f"gateway: {handshakes:.0f} handshakes relayed ({first['handshakes']:.0f} + "
        f"{second['handshakes']:.0f}), {errors:.0f} relay errors"
    )
    for name, counted in (("clients", seen.counts), ("in the restart", seen.during_restart)):
        shown = ", ".join(f"{n} {what}" for what, n in sorted(counted.items())) or "nothing"
        print(f"{name}: {shown}")
    print(f"upstream sockets left at the echo: {left}")
    goals = [
        ("open fds flat", gone.fds <= start.fds + 10, f"{gone.fds} <= {start.fds} + 10"),
        ("RSS flat", gone.rss <= 1.2 * plateau, f"{gone.rss:.1f} <= 1.2 x {plateau:.1f} MiB"),
        ("no upstream socket left", left == 0, f"{left} == 0"),
    ]
    for name, met, shown in goals:
        print(f"{name:>24}: {shown:<28} {'met' if met else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--sessions", type=int, default=25, help="live at once")
    parser.add_argument("--rate", type=float, default=2.0, help="messages a second, each")
    parser.add_argument("--churn", type=float, default=10.0, help="seconds between replacements")
    parser.add_argument(
        "--max-clients", type=int, default=8, help="of one session (429 beyond: some, by chance)"
    )
    parser.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    args = parser.parse_args()
    asyncio.run(soak(args))


if __name__ == "__main__":
    main()
