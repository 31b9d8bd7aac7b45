"""The relay between a client's WebSocket and its session's: every frame passed on as it
came (text and binary unchanged, pings and pongs, the close with its code and reason), and
the gateway's metrics of it."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import ClientWebSocketResponse, WSMsgType, web
from prometheus_client import CollectorRegistry, Counter, Gauge

log = logging.getLogger(__name__)

# Close codes that RFC 6455 7.4.1 forbids in a close frame: "no status" and the like are
# answered as a normal close.
_NOT_SENT = frozenset({0, 1005, 1006, 1015})
GOING_AWAY, INTERNAL_ERROR = 1001, 1011
TO_SESSION, TO_CLIENT = "to_session", "to_client"


class Metrics:
    """The gateway's metrics, in a registry of their own (one gateway process each)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.open = Gauge(
            "ovas_gateway_connections_open", "Signaling sockets relayed now", registry=r
        )
        self.handshakes = Counter(
            "ovas_gateway_handshakes",
            "WebSocket upgrade requests to a session, by answer (101: relayed)",
            ["code"],
            registry=r,
        )
        self.bytes = Counter(
            "ovas_gateway_relayed_bytes",
            "Payload bytes relayed, by direction (to_session, to_client)",
            ["direction"],
            registry=r,
        )
        self.errors = Counter(
            "ovas_gateway_relay_errors",
            "Relays ended by an error of either socket (not by a close)",
            registry=r,
        )
        for direction in (TO_SESSION, TO_CLIENT):
            self.bytes.labels(direction)


Socket = web.WebSocketResponse | ClientWebSocketResponse


def _code(code: object) -> int:
    return code if isinstance(code, int) and code not in _NOT_SENT else 1000


async def _pump(src: Socket, dst: Socket, counted: Counter) -> bool:
    """Pass `src`'s frames to `dst` until `src` closes or fails; a close is passed on with
    its code and reason, and the peer's answer returned to `src`. False when it ended by
    an error."""
    while True:
        msg = await src.receive()
        kind = msg.type
        if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
            await dst.send_frame(msg.data, kind)
            counted.inc(len(msg.data))
        elif kind is WSMsgType.PING:
            await dst.ping(msg.data)
        elif kind is WSMsgType.PONG:
            await dst.pong(msg.data)
        elif kind is WSMsgType.CLOSE:
            reason = (msg.extra or "").encode()
            await dst.close(code=_code(msg.data), message=reason)
            await src.close(code=_code(dst.close_code if dst.close_code else msg.data))
            return True
        elif kind is WSMsgType.CLOSING:  # the other pump is closing `src`
            return True
        else:  # CLOSED (the peer left without a close) or ERROR
            failed = kind is WSMsgType.ERROR
            await dst.close(code=INTERNAL_ERROR if failed else GOING_AWAY)
            return not failed


async def relay(client: web.WebSocketResponse, session: Socket, metrics: Metrics) -> None:
    """Relay between `client` and `session` until either side closes; both are closed when
    it returns, however it ended."""
    pumps = [
        asyncio.create_task(_pump(client, session, metrics.bytes.labels(TO_SESSION))),
        asyncio.create_task(_pump(session, client, metrics.bytes.labels(TO_CLIENT))),
    ]
    results: list = []
    try:
        done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        first = done.pop()
        if first.exception() is not None or first.result() is False:
            # The other pump may wait on a socket that says nothing: closing both ends it.
            await _close(session, client, INTERNAL_ERROR)
        results = await asyncio.gather(*pumps, return_exceptions=True)
    finally:
        for pump in pumps:
            pump.cancel()
        await _close(session, client, GOING_AWAY)
    problems = [r for r in results if r is False or isinstance(r, BaseException)]
    if problems:
        metrics.errors.inc()
        for problem in problems:
            if isinstance(problem, BaseException):
                log.info("a relay ended by an error: %r", problem)


async def _close(session: Socket, client: Socket, code: int) -> None:
    for socket in (session, client):
        if not socket.closed:
            try:
                await socket.close(code=code)
            except Exception as exc:  # a dead socket must not keep the other open
                log.debug("closing a relayed socket: %r", exc)
