"""What the signaling gateway costs: 1,000 WebSocket clients held open, each sending 5
messages a second, straight to a WebSocket echo server and then through `ovas gateway` to the
same echo server, in one run.

    .venv/bin/python bench/gateway.py [--clients 1000] [--rate 5] [--seconds 10]
                                      [--size 300] [--per-session 4] [--long]

Three processes: the echo server (a Kit app's signaling socket stands in), the gateway (on a
FakeBackend whose sessions all point at the echo server, with `OVAS_GATEWAY_AUTH=token`),
and this one, the clients, connecting as NVIDIA's streaming library does (session id and
stream token as subprotocols). Each phase connects every client (100 at a time: handshakes
per second), sends for `--seconds` (the first second is not measured), and closes. Reported:
p50 and p99 of the echo time for both, their ratios, the gateway's CPU (cores) and RSS while
loaded, handshakes per second, and the gateway's relay errors. Goals: p50 ratio <= 1.5,
p99 ratio <= 2, RSS <= 150 MiB, no relay error. Always exits 0: goals are reported, not
enforced. Raises the soft open-files limit to the hard one when that is short.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
from aiohttp import WSMsgType, web

ROOT = Path(__file__).resolve().parent.parent
PEER = "/sign_in?peer_id=peer-{:010d}&version=2"
SECRET = "bench-secret"
DOMAIN = "streams.bench"
CONNECTING = 100  # handshakes under way at once
TICK = os.sysconf("SC_CLK_TCK")


# The two servers, each run as `bench/gateway.py echo|gateway ...` in a process of its own.


async def echo_server() -> None:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        ws = web.WebSocketResponse(protocols=[p for p in offered if p][:1], compress=False)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, backlog=2048).start()
    print(json.dumps({"port": runner.addresses[0][1]}), flush=True)
    await _until_terminated()


async def gateway_server(echo_port: int, sessions: int) -> None:
    import logging

    from ovas import create_app
    from ovas.gateway import tokens
    from ovas.gateway.server import Gateway
    from ovas.testing import FakeBackend

    backend = FakeBackend()
    backend.signaling = ("127.0.0.1", echo_port)
    settings = {
        "TESTING": True,
        "REAP_INTERVAL": 0,
        "GATEWAY_DOMAIN": DOMAIN,
        "GATEWAY_SECRET": SECRET,
        "LOG_LEVEL": "WARNING",
    }
    core = create_app(settings, backend=backend)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    service = core.extensions["ovas"].sessions
    ids = [service.start("usd-viewer", "default", username="bench").id for _ in range(sessions)]
    gateway = Gateway(core)
    port = await gateway.start("127.0.0.1", 0)
    made = [[sid, tokens.issue(SECRET, sid, "bench")] for sid in ids]
    print(json.dumps({"port": port, "sessions": made}), flush=True)
    try:
        await _until_terminated()
    finally:
        await gateway.stop()


async def _until_terminated() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


# The clients.


class Phase:
    def __init__(self, name: str):
        self.name = name
        self.echo_ms: list[float] = []
        self.errors = 0
        self.handshakes_per_s = 0.0
        self.cpu_cores = 0.0
        self.rss_mib = 0.0
        self.client_cores = 0.0  # this process's CPU while sending: near 1, it is the limit


async def run_phase(phase: Phase, targets: list[tuple[str, list[str]]], args, measured=None):
    """Connect every target (url, subprotocols), send for `args.seconds`, close them all."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        gate = asyncio.Semaphore(CONNECTING)

        async def connect(url: str, protocols: list[str]):
            async with gate:
                return await http.ws_connect(url, protocols=protocols, compress=0)

        began = time.perf_counter()
        sockets = await asyncio.gather(*(connect(u, p) for u, p in targets))
        phase.handshakes_per_s = len(sockets) / (time.perf_counter() - began)
        padding = "x" * max(0, args.size - 20)
        start = time.perf_counter()
        measure_from = start + 1.0
        stop_at = start + 1.0 + args.seconds

        async def reader(ws):
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                now = time.perf_counter()
                sent = int(msg.data[:20]) / 1e9
                if sent >= measure_from:
                    phase.echo_ms.append((now - sent) * 1000)

        async def sender(ws):
            interval = 1 / args.rate
            due = start + random.random() * interval
            try:
                while due < stop_at:
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                    await ws.send_str(f"{time.perf_counter_ns():020d}{padding}")
                    due += interval
            except (aiohttp.ClientError, ConnectionError):
                phase.errors += 1

        readers = [asyncio.create_task(reader(ws)) for ws in sockets]
        senders = asyncio.gather(*(sender(ws) for ws in sockets))
        await asyncio.sleep(1.0)
        began, own = time.perf_counter(), cpu_seconds(os.getpid())
        usage = cpu_seconds(measured) if measured is not None else 0.0
        await senders
        elapsed = time.perf_counter() - began
        phase.client_cores = (cpu_seconds(os.getpid()) - own) / elapsed
        if measured is not None:
            phase.cpu_cores = (cpu_seconds(measured) - usage) / elapsed
            phase.rss_mib = rss_mib(measured)
        await asyncio.sleep(0.5)  # the last echoes
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        for task in readers:
            task.cancel()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def spawn(*args: str) -> tuple[subprocess.Popen, dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, __file__, *args], stdout=subprocess.PIPE, env=env, cwd=ROOT
    )
    return process, json.loads(process.stdout.readline())


def raise_open_files(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        if wanted < needed:
            print(f"warning: open files limited to {wanted}; {needed} wanted", file=sys.stderr)


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=1000, method="inclusive")[int(share * 1000) - 1]


async def bench(args) -> None:
    raise_open_files(2 * args.clients + 512)  # the gateway holds two per client
    sessions = -(-args.clients // args.per_session)
    echo, echoed = spawn("echo")
    gateway, served = spawn("gateway", str(echoed["port"]), str(sessions))
    try:
        direct = Phase("direct")
        peers = [PEER.format(n) for n in range(args.clients)]
        await run_phase(direct, [(f"ws://127.0.0.1:{echoed['port']}{p}", []) for p in peers], args)
        through = Phase("gateway")
        rss_idle = rss_mib(gateway.pid)
        targets = []
        for n, peer in enumerate(peers):
            sid, token = served["sessions"][n // args.per_session]
            url = f"ws://127.0.0.1:{served['port']}/sessions/{sid}{peer}"
            targets.append((url, [sid, f"Authorization-Bearer.{token}"]))
        await run_phase(through, targets, args, measured=gateway.pid)
        with urllib.request.urlopen(f"http://127.0.0.1:{served['port']}/metrics") as got:
            metrics = got.read().decode()
    finally:
        for process in (gateway, echo):
            process.terminate()
            process.wait(timeout=30)
    relay_errors = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("ovas_gateway_relay_errors_total ")
    )
    report(direct, through, rss_idle, relay_errors, args)


def report(direct: Phase, through: Phase, rss_idle: float, relay_errors: float, args) -> None:
    print(
        f"{args.clients} clients x {args.rate} msg/s x {args.size} B for {args.seconds} s "
        f"(first second not measured), {args.per_session} clients a session"
    )
    rows = []
    for phase in (direct, through):
        p50, p99 = percentile(phase.echo_ms, 0.5), percentile(phase.echo_ms, 0.99)
        rows.append((p50, p99))
        print(
            f"{phase.name:>8}: echo p50 {p50:6.2f} ms  p99 {p99:7.2f} ms  "
            f"({len(phase.echo_ms)} echoes, {phase.errors} client errors)  "
            f"handshakes {phase.handshakes_per_s:6.0f}/s  clients' CPU {phase.client_cores:.2f}"
        )
    p50_ratio, p99_ratio = rows[1][0] / rows[0][0], rows[1][1] / rows[0][1]
    goals = [
        ("p50 ratio", p50_ratio, 1.5, f"{p50_ratio:.2f}"),
        ("p99 ratio", p99_ratio, 2.0, f"{p99_ratio:.2f}"),
        ("gateway RSS MiB", through.rss_mib, 150, f"{through.rss_mib:.0f}"),
        ("relay errors", relay_errors, 0, f"{relay_errors:.0f}"),
    ]
    print(f" gateway: CPU {through.cpu_cores:.2f} cores, RSS {through.rss_mib:.0f} MiB loaded")
    print(f"          ({rss_idle:.0f} MiB before the clients)")
    for name, value, goal, shown in goals:
        print(f"{name:>16}: {shown:>6}  goal <= {goal}  {'ok' if value <= goal else 'MISSED'}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "echo":
        asyncio.run(echo_server())
        return
    if len(sys.argv) > 1 and sys.argv[1] == "gateway":
        asyncio.run(gateway_server(int(sys.argv[2]), int(sys.argv[3])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=5.0, help="messages a second, each")
    parser.add_argument("--seconds", type=float, default=10.0, help="of sending, each phase")
    parser.add_argument("--long", action="store_true", help="send for 120 s each phase")
    parser.add_argument("--size", type=int, default=300, help="bytes a message")
    parser.add_argument("--per-session", type=int, default=4, help="clients of one session")
    args = parser.parse_args()
    if args.long:
        args.seconds = 120.0
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
