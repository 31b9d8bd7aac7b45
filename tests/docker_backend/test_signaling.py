"""The stand-in's signaling socket on a real Docker daemon: a WebSocket, as Kit's is, that
the signaling gateway reaches where the backend says (`Observation.signaling`), and that an
app built for OVAS quits on when its client leaves."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest

from ovas.gateway import presence
from ovas.gateway.rules import GatewayRules
from ovas.models import Reason, SessionState
from ovas.testing import service_for, wait_for
from ovas.testing.requests import STANDIN_QUIT_ON_LEAVE
from tests.support.gateway_process import until

pytestmark = pytest.mark.docker
SIGN_IN = "/sign_in?peer_id=peer-0123456789&version=2"  # as NVIDIA's streaming library asks


def test_the_gateway_reaches_the_signaling_websocket_where_the_backend_says(
    backend, standin_request
):
    sessions = service_for(backend)
    started = backend.start(standin_request())
    ready = wait_for(sessions, started.record.id, SessionState.READY)
    assert ready.state is SessionState.READY, ready.message
    published = next(r for r in ready.routes if r.description == "signaling")
    _, upstream = sessions.signaling(ready.id)
    assert upstream == (backend.probe_host, published.source_port)
    host, port = upstream

    async def talk() -> list[str]:
        heard = []
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(f"http://{host}:{port}{SIGN_IN}") as ws,
        ):
            for text in ('{"peer_msg": {"id": 1}}', "second message"):
                await ws.send_str(text)
                message = await ws.receive(timeout=5)
                assert message.type is aiohttp.WSMsgType.TEXT
                heard.append(message.data)
            # Held open, as Kit's socket is: one client on the session's port.
            connected = await asyncio.to_thread(until, lambda: sessions.get(ready.id).connected)
            assert connected is True
        return heard

    assert asyncio.run(talk()) == ['{"peer_msg": {"id": 1}}', "second message"]
    assert until(lambda: sessions.get(ready.id).connected is False)


def test_an_app_that_quits_when_its_websocket_client_leaves_has_ended(backend, standin_request):
    """What a Kit app built for OVAS does: exit 0 when its client leaves. That is no fault."""
    sessions = service_for(backend)
    session = backend.start(standin_request(env={STANDIN_QUIT_ON_LEAVE: "1"}))
    ready = wait_for(sessions, session.record.id, SessionState.READY)
    host, port = sessions.signaling(ready.id)[1]

    async def visit() -> None:
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(f"http://{host}:{port}{SIGN_IN}") as ws,
        ):
            await ws.send_str("hello")
            assert (await ws.receive(timeout=5)).data == "hello"
            seen = await asyncio.to_thread(until, lambda: sessions.get(ready.id).connected)
            assert seen is True

    asyncio.run(visit())
    ended = wait_for(sessions, ready.id, {SessionState.ENDED, SessionState.FAILED}, timeout=15)
    assert (ended.state, ended.reason) == (SessionState.ENDED, Reason.APP_EXITED), ended.message
    assert ended.last_connected_time is not None
    assert any("my client left" in line for line in backend.logs(ready.id))


def test_with_the_gateway_on_its_counts_decide_and_the_port_is_not_read(
    new_backend, standin_request
):
    backend = new_backend(gateway=True)
    sessions = service_for(backend, gateway=GatewayRules(domain="streams.example.com"))
    ready = wait_for(sessions, backend.start(standin_request()).record.id, SessionState.READY)
    host, port = sessions.signaling(ready.id)[1]
    with socket.create_connection((host, port), timeout=5):  # around the gateway
        # Held in the container's own table, as a client's would be, and yet not counted.
        assert until(lambda: backend.clients.count(f"ovas-{ready.id}", 49100) == 1)
        assert sessions.get(ready.id).connected is False
    name = presence.record_name(ready.id, "aaaaaaaaaaaa")
    backend.ledger.create(name, presence.data(1, backend.now()))
    try:
        assert sessions.get(ready.id).connected is True
    finally:
        backend.ledger.delete(name)
    assert sessions.get(ready.id).connected is False


@pytest.mark.parametrize("gateway", [True, False])
def test_signaling_is_published_on_the_probe_host_alone_with_the_gateway_on(
    new_backend, standin_request, engine, gateway
):
    """With the gateway on, a client that can reach the bind address still cannot open the
    signaling socket around the gateway; media stays on the bind address."""
    backend = new_backend(bind_address="127.0.0.2", probe_host="127.0.0.1", gateway=gateway)
    session = backend.start(standin_request()).record.id
    bindings = engine.inspect_container(f"ovas-{session}")["HostConfig"]["PortBindings"]
    signaling = {b["HostIp"] for b in bindings["49100/tcp"]}
    assert signaling == ({"127.0.0.1"} if gateway else {"127.0.0.2"})
    assert {b["HostIp"] for b in bindings["47998/udp"]} == {"127.0.0.2"}
