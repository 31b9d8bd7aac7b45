"""`ovas gateway` as an operator runs it: a process of its own, built from the environment
(`OVAS_*` settings), for tests that go through the real gateway on real sockets, and a
client that talks through it as NVIDIA's streaming library does."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

import aiohttp
import yaml

from ovas.auth import STREAMER, hash_key
from ovas.gateway import presence
from tests.support.gateway import DOMAIN, PEER_PATH, client_session, viewer_protocols
from tests.support.polling import until

ROOT = Path(__file__).resolve().parents[2]


SECRET = "a-secret-the-api-and-the-gateway-share"  # the API's and the gateway's


def as_user(user: str) -> dict:
    """The test client's keyword arguments that call the API as `user` (see `write_keys`)."""
    return {"headers": {"Authorization": f"Bearer key-{user}"}}


def write_keys(path: Path) -> str:
    """An API keys file at `path` for streamers alice and bob (`key-<user>`); its path."""
    entries = [
        {"sha256": hash_key(f"key-{user}"), "user": user, "roles": [STREAMER]}
        for user in ("alice", "bob")
    ]
    path.write_text(yaml.safe_dump(entries))
    return str(path)


def connected(api, session_id: str) -> bool | None:
    """`connected` of alice's session, as the API answers her."""
    return api.get(f"/stream/{session_id}", **as_user("alice")).get_json()["connected"]


async def echoed(ws, text: str) -> str:
    """What an echoing session's socket sends back for `text`."""
    await ws.send_str(text)
    message = await ws.receive(timeout=5)
    assert message.type is aiohttp.WSMsgType.TEXT, message
    return message.data


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def gateway_and_api(
    engine: dict[str, str], keys: str, log: Path, **gateway_settings: str
) -> tuple[GatewayProcess, dict]:
    """A gateway process (not started) over `engine`'s settings (`OVAS_BACKEND` and what
    it reads), and the API's settings that go with it: both take the API keys of `keys`
    and share the domain and the secret; the gateway's port is the public one.
    `gateway_settings` add to the gateway's."""
    gateway = GatewayProcess(
        {
            **engine,
            "OVAS_AUTH": "apikey",
            "OVAS_APIKEYS_FILE": keys,
            "OVAS_GATEWAY_DOMAIN": DOMAIN,
            "OVAS_GATEWAY_SECRET": SECRET,
            **gateway_settings,
        },
        log,
    )
    api = {
        "TESTING": True,
        "REAP_INTERVAL": 0,
        "AUTH": "apikey",
        "APIKEYS_FILE": keys,
        "GATEWAY_DOMAIN": DOMAIN,
        "GATEWAY_SECRET": SECRET,
        "GATEWAY_PUBLIC_PORT": gateway.port,
    }
    return gateway, api


class GatewayProcess:
    """`ovas gateway --host 127.0.0.1 --port <port>` with `settings` (variable: value) over
    a plain environment; its log goes to `log`. `start()` waits (up to 30 s) until its
    /healthz answers; `stop()` is SIGTERM, as Kubernetes stops a pod; `kill()` is a crash."""

    def __init__(self, settings: dict[str, str], log: Path, port: int | None = None):
        self.settings = settings
        self.log = log
        self.port = port or free_port()
        self.tls = bool(settings.get("OVAS_GATEWAY_TLS_CERT"))
        self.process: subprocess.Popen | None = None

    def start(self) -> GatewayProcess:
        env = {
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", "/tmp"),
            "PYTHONPATH": str(ROOT),
            **self.settings,
        }
        command = [sys.executable, "-c", "from ovas.cli import main; main()", "gateway"]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [*command, "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=out,
            )
        scheme = "https" if self.tls else "http"
        unverified = ssl._create_unverified_context() if self.tls else None
        deadline = time.monotonic() + 30
        while True:
            try:
                url = f"{scheme}://127.0.0.1:{self.port}/healthz"
                with urllib.request.urlopen(url, timeout=5, context=unverified) as answer:
                    if answer.status == 200:
                        return self
            except (OSError, urllib.error.URLError):
                pass
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.1)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()


async def sign_in(url: str, session_id: str, token: str | None, **kw):
    """A WebSocket to `url` (`.../sign_in?peer_id=...`) offering the session id and
    `Authorization-Bearer.<token>` as subprotocols, as the web viewer's library does;
    returns (client session, socket) for the caller to close. Raises
    `aiohttp.WSServerHandshakeError` (its `status`) when refused."""
    http = client_session()
    try:
        ws = await http.ws_connect(url, protocols=viewer_protocols(session_id, token), **kw)
    except BaseException:
        await http.close()
        raise
    return http, ws


async def refused(url: str, session_id: str, token: str | None, **kw) -> int:
    """The status a refused sign-in got (0 when it was not refused)."""
    try:
        http, ws = await sign_in(url, session_id, token, **kw)
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status
    await ws.close()
    await http.close()
    return 0


def by_host(session_id: str, domain: str, port: int, scheme: str = "ws") -> str:
    return f"{scheme}://{session_id}.{domain}:{port}{PEER_PATH}"


def by_path(session_id: str, port: int) -> str:
    return f"ws://127.0.0.1:{port}/sessions/{session_id}{PEER_PATH}"


class LoopThread:
    """An event loop in a thread of its own, for servers a synchronous test talks to (an
    echo standing in for a Kit app's signaling socket, an in-process gateway) while its
    own client runs in another loop. `run(coroutine)` runs it there and returns its
    result."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> LoopThread:
        self.thread.start()
        return self

    def run(self, coroutine, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def a_gateway_dies_under_a_client(api, gateway, clock, sid: str, token: str) -> None:
    """The restart scenario every backend's end-to-end test runs: a gateway process killed
    under a client of session `sid` (its count left behind, as a crash leaves it); the
    client reconnects to the one started in its place; the dead count stops counting once
    `clock` is moved past its expiry, and the reaper deletes it."""
    url = by_host(sid, DOMAIN, gateway.port)

    ledger = api.application.extensions["ovas"].sessions.backend.ledger

    def records() -> list:
        """The session's client count records, one per gateway process that holds some."""
        return ledger.list(f"{presence.PREFIX}{sid}.")

    async def scene() -> None:
        http, ws = await sign_in(url, sid, token)
        assert await echoed(ws, "before") == "before"
        assert await asyncio.to_thread(until, lambda: len(records()) == 1)
        await asyncio.to_thread(gateway.kill)  # no time to delete its count
        message = await ws.receive(timeout=5)
        assert message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR), message
        await http.close()
        # The library reconnects, to the gateway started again in its place.
        await asyncio.to_thread(gateway.start)
        http, ws = await sign_in(url, sid, token)
        try:
            assert await echoed(ws, "after") == "after"
            # Counted by the new process too: the dead one's count and its own.
            assert await asyncio.to_thread(until, lambda: len(records()) == 2)
        finally:
            await ws.close()
            await http.close()

    asyncio.run(scene())
    # The new gateway deletes its count as the client leaves; the dead one's stays until it
    # expires: the clock is moved past that, not waited for.
    assert until(lambda: len(records()) == 1)
    (stale,) = records()
    assert connected(api, sid) is True
    expires = datetime.fromisoformat(presence.PRESENCE.decode(stale)["expires"])
    clock.advance((expires - clock()).total_seconds() + 1)
    assert connected(api, sid) is False
    removed = api.application.extensions["ovas"].sessions.reap_pass(tend_pools=False)
    assert removed[stale.name] == "its gateway replica stopped renewing it"
    assert records() == []
