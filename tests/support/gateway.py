"""What the gateway's tests stand on: a WebSocket echo server in place of a Kit app's
signaling socket, a resolver that sends every name of the test domain to 127.0.0.1 (as a
wildcard DNS record would), and a client that connects as NVIDIA's streaming library does."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field

import aiohttp
from aiohttp import WSMsgType, web
from aiohttp.abc import AbstractResolver, ResolveResult

DOMAIN = "streams.test"
PEER_PATH = "/sign_in?peer_id=peer-0123456789&version=2"  # as the web viewer's library sends


@dataclass
class Seen:
    """One connection the echo server accepted."""

    path: str
    headers: dict[str, str]
    offered: list[str]
    close_code: int | None = None
    texts: list[str] = field(default_factory=list)  # the text messages received


@dataclass
class Echo:
    """A WebSocket server that echoes every text and binary message, answers pings (aiohttp
    does), closes with code N when sent the text `close:N`, and records what it saw."""

    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    open: int = 0  # connections held now
    runner: web.AppRunner | None = None

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        offered = [p for p in offered if p]
        ws = web.WebSocketResponse(protocols=offered[:1], compress=False)
        await ws.prepare(request)
        seen = Seen(request.raw_path, dict(request.headers), offered)
        self.seen.append(seen)
        self.open += 1
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT and msg.data.startswith("close:"):
                    await ws.close(code=int(msg.data[6:]), message=b"asked")
                elif msg.type is WSMsgType.TEXT:
                    seen.texts.append(msg.data)
                    await ws.send_str(msg.data)
                elif msg.type is WSMsgType.BINARY:
                    await ws.send_bytes(msg.data)
        finally:
            seen.close_code = ws.close_code
            self.open -= 1
        return ws

    async def start(self) -> Echo:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handler)
        self.runner = web.AppRunner(
            app, handle_signals=False, max_line_size=16384, max_field_size=16384
        )
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        await self.runner.cleanup()

    async def settled(self, open: int, within: float = 5.0) -> None:
        """Wait until exactly `open` connections are held (a real wait on real sockets)."""
        async with asyncio.timeout(within):
            while self.open != open:
                await asyncio.sleep(0.02)


class WildcardResolver(AbstractResolver):
    """Resolves every name under `DOMAIN` to 127.0.0.1, others as the system does."""

    async def resolve(self, host: str, port: int = 0, family=socket.AF_INET):
        if host == DOMAIN or host.endswith("." + DOMAIN):
            host = "127.0.0.1"
        info = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, family=socket.AF_INET
        )
        return [
            ResolveResult(
                hostname=host,
                host=address[4][0],
                port=address[4][1],
                family=address[0],
                proto=address[2],
                flags=socket.AI_NUMERICHOST,
            )
            for address in info
        ]

    async def close(self) -> None:
        pass


def client_session(ssl_context=None) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(resolver=WildcardResolver(), ssl=ssl_context or True)
    return aiohttp.ClientSession(connector=connector)


def viewer_protocols(session_id: str, token: str | None) -> list[str]:
    """The subprotocols NVIDIA's streaming library offers: the session id, and its token
    as `Authorization-Bearer.<token>` when it authenticates."""
    return [session_id] + ([f"Authorization-Bearer.{token}"] if token else [])


UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}
