"""The signaling gateway, served for real on 127.0.0.1 in front of a FakeBackend-driven core,
relaying to a real WebSocket echo server, with clients that connect as NVIDIA's streaming
library does."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest
import pytest_asyncio
import yaml
from aiohttp import WSMsgType
from yarl import URL

from ovas import create_app
from ovas.auth import ADMIN, STREAMER, hash_key, new_key
from ovas.errors import BackendUnavailable
from ovas.gateway import presence, tokens
from ovas.gateway.server import Gateway
from ovas.ledger import MemoryLedger
from ovas.models import Reason
from ovas.testing import FakeBackend
from ovas.testing.clock import FakeClock
from tests.support.gateway import (
    DOMAIN,
    PEER_PATH,
    UPGRADE,
    Echo,
    client_session,
    viewer_protocols,
)

SECRET = "gateway-test-secret"
KEYS = {user: new_key() for user in ("alice", "bob", "root")}


class FlakyLedger(MemoryLedger):
    """A memory ledger whose engine can go down (`down = True`)."""

    down = False

    def _check(self):
        if self.down:
            raise BackendUnavailable("The ledger's engine is down")

    def create(self, name, data):
        self._check()
        return super().create(name, data)

    def replace(self, entry, data):
        self._check()
        return super().replace(entry, data)

    def list(self, prefix=""):
        self._check()
        return super().list(prefix)

    def delete(self, target):
        self._check()
        return super().delete(target)


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def backend(clock):
    backend = FakeBackend(now=clock)
    backend.ledger = FlakyLedger(now=clock)
    return backend


@pytest.fixture
def settings(tmp_path):
    keys = tmp_path / "keys.yaml"
    roles = {"alice": [STREAMER], "bob": [STREAMER], "root": [ADMIN]}
    entries = [{"sha256": hash_key(k), "user": u, "roles": roles[u]} for u, k in KEYS.items()]
    keys.write_text(yaml.safe_dump(entries))
    return {
        "TESTING": True,
        "REAP_INTERVAL": 0,
        "AUTH": "apikey",
        "APIKEYS_FILE": str(keys),
        "GATEWAY_DOMAIN": DOMAIN,
        "GATEWAY_SECRET": SECRET,
        "GATEWAY_MAX_CLIENTS": 2,
    }


@pytest.fixture
def core(settings, backend):
    return create_app(settings, backend=backend)


@pytest_asyncio.fixture
async def echo(backend):
    echo = await Echo().start()
    backend.signaling = ("127.0.0.1", echo.port)
    yield echo
    await echo.stop()


class Served:
    def __init__(self, gateway: Gateway, port: int):
        self.gateway, self.port = gateway, port

    def by_host(self, session_id: str, path: str = PEER_PATH) -> str:
        return f"ws://{session_id.upper()}.{DOMAIN}:{self.port}{path}"

    def by_path(self, session_id: str, path: str = PEER_PATH) -> str:
        return f"ws://127.0.0.1:{self.port}/sessions/{session_id}{path}"


@pytest_asyncio.fixture
async def served(core, echo):
    gateway = Gateway(core, renew=0.1)
    port = await gateway.start("127.0.0.1", 0)
    yield Served(gateway, port)
    await gateway.stop(timeout=1)


@pytest_asyncio.fixture
async def http():
    async with client_session() as session:
        yield session


def start(core, user: str = "alice") -> str:
    return core.extensions["ovas"].sessions.start("usd-viewer", "default", username=user).id


def token(session_id: str, user: str = "alice") -> str:
    return tokens.issue(SECRET, session_id, user)


async def counted(ledger, clock, expected: dict[str, int], within: float = 5.0) -> None:
    """Wait until the ledger's client counts are `expected` (real writes take real time)."""
    try:
        async with asyncio.timeout(within):
            while presence.read(ledger, clock()) != expected:
                await asyncio.sleep(0.02)
    except TimeoutError:
        held = [(e.name, dict(e.data)) for e in ledger.list(presence.PREFIX)]
        raise AssertionError(f"at {clock()}, not {expected}: {held}") from None


async def renewed(ledger, clock, within: float = 5.0) -> None:
    """Wait until every client count record was written since the clock last moved (its
    `expires` is a whole TTL from now), without sleeping a guessed time."""
    due = clock() + presence.TTL
    async with asyncio.timeout(within):
        while any(
            datetime.fromisoformat(presence.PRESENCE.decode(e)["expires"]) < due
            for e in ledger.list(presence.PREFIX)
        ):
            await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_by_host_frames_pass_unchanged_and_the_sessions_subprotocol_is_returned(
    core, served, echo, http
):
    sid = start(core)
    protocols = viewer_protocols(sid, token(sid))
    async with http.ws_connect(served.by_host(sid), protocols=protocols) as ws:
        assert ws.protocol == sid  # what the session chose, never the token's element
        await ws.send_str('{"event_type": "hello", "payload": "é"}')
        assert await ws.receive_str() == '{"event_type": "hello", "payload": "é"}'
        await ws.send_bytes(b"\x00\x01\xff" * 1000)
        assert await ws.receive_bytes() == b"\x00\x01\xff" * 1000
    seen = echo.seen[-1]
    assert seen.path == PEER_PATH
    assert seen.offered == [sid]
    assert "Authorization" not in seen.headers
    assert seen.headers["X-Forwarded-Host"] == f"{sid}.{DOMAIN}:{served.port}"
    await echo.settled(0)


@pytest.mark.asyncio
async def test_by_path_the_rest_goes_upstream_without_the_query_token(core, served, echo, http):
    sid = start(core)
    url = served.by_path(sid, PEER_PATH + f"&access_token={token(sid)}&x=%2F")
    async with http.ws_connect(URL(url, encoded=True), protocols=[sid]) as ws:
        await ws.send_str("over the path")
        assert await ws.receive_str() == "over the path"
    assert echo.seen[-1].path == "/sign_in?peer_id=peer-0123456789&version=2&x=%2F"


@pytest.mark.asyncio
async def test_the_cookie_and_the_api_credentials_open_it_and_stay_with_the_gateway(
    core, served, echo, http
):
    sid = start(core)
    cookie = f"theme=dark; {tokens.cookie_name(sid)}={token(sid)}; lang=fr"
    async with http.ws_connect(
        served.by_host(sid), headers={"Cookie": cookie}, origin=f"https://{DOMAIN}"
    ) as ws:
        await ws.send_str("cookie")
        assert await ws.receive_str() == "cookie"
    assert echo.seen[-1].headers["Cookie"] == "theme=dark; lang=fr"
    for user in ("alice", "root"):  # the owner's API key, and an admin's
        bearer = {"Authorization": f"Bearer {KEYS[user]}"}
        async with http.ws_connect(served.by_host(sid), headers=bearer) as ws:
            await ws.send_str(user)
            assert await ws.receive_str() == user
        assert "Authorization" not in echo.seen[-1].headers
    protocols = viewer_protocols(sid, KEYS["alice"])
    async with http.ws_connect(served.by_path(sid), protocols=protocols) as ws:
        assert ws.protocol == sid


async def refused(http, url: str, **headers) -> tuple[int, dict, dict]:
    async with http.get(url.replace("ws://", "http://"), headers={**UPGRADE, **headers}) as got:
        return got.status, await got.json(), dict(got.headers)


@pytest.mark.asyncio
async def test_every_refusal_is_answered_before_the_upgrade_as_json(
    core, served, echo, http, backend
):
    sid, bobs = start(core), start(core, "bob")
    bearer = f"Authorization-Bearer.{token(sid)}"
    unknown = "0c5e7a9e-0a55-4a70-9c39-8a1d5d3b7f10"
    status, body, _ = await refused(
        http, served.by_host(unknown), **{"Sec-WebSocket-Protocol": bearer}
    )
    assert (status, body) == (404, {"detail": f"Session '{unknown}' not found"})
    status, body, _ = await refused(http, served.by_host(sid))
    assert status == 401 and "stream token" in body["detail"]
    for wrong in ("nonsense", token(bobs, "bob"), tokens.issue("other", sid, "alice")):
        proto = {"Sec-WebSocket-Protocol": f"Authorization-Bearer.{wrong}"}
        assert (await refused(http, served.by_host(sid), **proto))[0] == 403
    bob = {"Authorization": f"Bearer {KEYS['bob']}"}
    assert (await refused(http, served.by_host(sid), **bob))[0] == 403

    backend.ready_after = 60
    starting = start(core)
    status, body, headers = await refused(
        http, served.by_path(starting), Authorization=f"Bearer {token(starting)}"
    )
    backend.ready_after = 0
    assert status == 503 and headers["Retry-After"] == "5" and "starting" in body["detail"]

    backend.fault = Reason.NO_GPU
    failed = start(core)
    status, body, _ = await refused(
        http, served.by_path(failed), Authorization=f"Bearer {token(failed)}"
    )
    backend.fault = None
    assert (status, body["detail"]) == (410, f"Session '{failed}' is failed (no_gpu)")

    # OVAS_GATEWAY_MAX_CLIENTS=2: a third client of one session is refused until one leaves.
    protocols = viewer_protocols(sid, token(sid))
    async with http.ws_connect(served.by_host(sid), protocols=protocols):
        async with http.ws_connect(served.by_path(sid), protocols=protocols) as second:
            status, body, headers = await refused(
                http, served.by_host(sid), **{"Sec-WebSocket-Protocol": bearer}
            )
            assert status == 429 and headers["Retry-After"]
            # A probe (no upgrade) is answered as an upgrade would be, and never counted.
            async with http.get(served.by_host(sid).replace("ws://", "http://")) as probe:
                assert probe.status == 401
            await second.close()
        async with http.ws_connect(served.by_host(sid), protocols=protocols) as third:
            await third.send_str("room again")
            assert await third.receive_str() == "room again"
    probe_url = served.by_host(sid, f"/sign_in?access_token={token(sid)}")
    async with http.head(probe_url.replace("ws://", "http://")) as probe:
        assert probe.status == 200
    metrics = await (await http.get(f"http://127.0.0.1:{served.port}/metrics")).text()
    for code, times in (("101", 3), ("401", 1), ("403", 4), ("404", 1), ("410", 1), ("429", 1)):
        assert f'ovas_gateway_handshakes_total{{code="{code}"}} {times}.0' in metrics


@pytest.mark.asyncio
async def test_pings_and_close_codes_pass_both_ways(core, served, echo, http):
    sid = start(core)
    protocols = viewer_protocols(sid, token(sid))
    ws = await http.ws_connect(served.by_host(sid), protocols=protocols, autoping=False)
    await ws.ping(b"are you there")
    pong = await ws.receive()
    assert (pong.type, pong.data) == (WSMsgType.PONG, b"are you there")
    await ws.close(code=4000, message=b"viewer leaves")
    await echo.settled(0)
    assert echo.seen[-1].close_code == 4000
    assert ws.close_code == 1000  # the session answered 1000 (aiohttp does), passed back

    ws = await http.ws_connect(served.by_host(sid), protocols=protocols)
    await ws.send_str("close:4001")
    closing = await ws.receive()
    assert (closing.type, closing.data, closing.extra) == (WSMsgType.CLOSE, 4001, "asked")
    await ws.close()
    await echo.settled(0)


@pytest.mark.asyncio
async def test_a_client_that_vanishes_leaves_no_socket_to_the_session(core, served, echo, http):
    sid = start(core)
    ws = await http.ws_connect(served.by_path(sid), protocols=viewer_protocols(sid, token(sid)))
    await ws.send_str("hi")
    assert await ws.receive_str() == "hi"
    assert echo.open == 1
    ws._response.connection.transport.abort()  # the client's machine is gone: no close frame
    await echo.settled(0)
    assert echo.seen[-1].close_code == 1001
    metrics = await (await http.get(f"http://127.0.0.1:{served.port}/metrics")).text()
    assert "ovas_gateway_connections_open 0.0" in metrics
    assert 'ovas_gateway_relayed_bytes_total{direction="to_session"} 2.0' in metrics


@pytest.mark.asyncio
async def test_big_credential_cookies_fit_and_headers_past_the_bound_are_refused(
    core, served, echo, http
):
    sid = start(core)
    jwt_sized = "j" * 12000  # past aiohttp's default 8 KiB, as big JWT cookies are
    cookie = f"id_token={jwt_sized}; {tokens.cookie_name(sid)}={token(sid)}"
    headers = {"Cookie": cookie, "X-Forwarded-For": "203.0.113.9"}
    async with http.ws_connect(
        served.by_host(sid), headers=headers, origin=f"https://viewer.{DOMAIN}"
    ) as ws:
        await ws.send_str("big cookie")
        assert await ws.receive_str() == "big cookie"
    assert echo.seen[-1].headers["Cookie"] == f"id_token={jwt_sized}"
    assert echo.seen[-1].headers["X-Forwarded-For"] == "127.0.0.1"  # not the client's word
    too_big = {"Cookie": "c" * 20000, "Authorization": f"Bearer {token(sid)}"}
    async with http.get(served.by_host(sid).replace("ws://", "http://"), headers=too_big) as got:
        assert got.status in (400, 431)
    assert echo.open == 0


@pytest.mark.asyncio
async def test_a_message_past_the_bound_ends_the_relay_as_an_error(core, served, echo, http):
    served.gateway.max_message = 1024
    sid = start(core)
    ws = await http.ws_connect(served.by_host(sid), protocols=viewer_protocols(sid, token(sid)))
    await ws.send_str("small")
    assert await ws.receive_str() == "small"
    await ws.send_bytes(b"x" * 2048)
    closing = await ws.receive()
    assert (closing.type, closing.data) == (WSMsgType.CLOSE, 1009)  # message too big
    await echo.settled(0)
    assert echo.seen[-1].close_code == 1011
    metrics = await (await http.get(f"http://127.0.0.1:{served.port}/metrics")).text()
    assert "ovas_gateway_relay_errors_total 1.0" in metrics
    assert "ovas_gateway_connections_open 0.0" in metrics


@pytest.mark.asyncio
async def test_client_counts_are_recorded_renewed_and_deleted(
    core, served, echo, http, backend, clock
):
    sid, other = start(core), start(core, "bob")
    ledger = backend.ledger
    first = await http.ws_connect(served.by_host(sid), protocols=viewer_protocols(sid, token(sid)))
    second = await http.ws_connect(served.by_path(sid), protocols=viewer_protocols(sid, token(sid)))
    third = await http.ws_connect(
        served.by_host(other), protocols=viewer_protocols(other, token(other, "bob"))
    )
    await counted(ledger, clock, {sid: 2, other: 1})
    # Renewed while clients stay: still counted after several TTLs have passed.
    for _ in range(3):
        clock.advance(presence.TTL.total_seconds() - 5)
        await renewed(ledger, clock)
        assert presence.read(ledger, clock()) == {sid: 2, other: 1}
    await first.close()
    await counted(ledger, clock, {sid: 1, other: 1})
    await second.close()
    await third.close()
    await counted(ledger, clock, {})
    assert ledger.list(presence.PREFIX) == []  # deleted, not left at 0


@pytest.mark.asyncio
async def test_a_restart_while_clients_hold_they_reconnect_and_the_dead_count_expires(
    core, served, echo, http, backend, clock
):
    sid = start(core)
    ledger = backend.ledger
    protocols = viewer_protocols(sid, token(sid))
    clients = [await http.ws_connect(served.by_host(sid), protocols=protocols) for _ in range(2)]
    await counted(ledger, clock, {sid: 2})
    # The gateway stops while the engine cannot be reached: its count stays behind, as a
    # killed process's would.
    ledger.down = True
    await served.gateway.stop(timeout=0.5)
    for ws in clients:
        closing = await ws.receive()
        assert closing.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
    await echo.settled(0)
    ledger.down = False
    assert presence.read(ledger, clock()) == {sid: 2}

    again = Gateway(core, renew=0.1)
    await again.start("127.0.0.1", served.port)
    try:
        clients = [await http.ws_connect(served.by_host(sid), protocols=protocols) for _ in "ab"]
        for ws in clients:  # the library reconnected
            await ws.send_str("back")
            assert await ws.receive_str() == "back"
        await counted(ledger, clock, {sid: 4})  # the dead replica's 2 until they expire
        clock.advance(presence.TTL.total_seconds() + 1)
        await counted(ledger, clock, {sid: 2})
    finally:
        await again.stop(timeout=1)
    # Only the records that expired are left, for the reaper to delete.
    assert presence.expired(ledger.list(presence.PREFIX), clock()) == ledger.list(presence.PREFIX)
    assert len(ledger.list(presence.PREFIX)) == 1


@pytest.mark.asyncio
async def test_with_auth_none_the_session_id_is_the_key(settings, backend, echo, http):
    core = create_app({**settings, "GATEWAY_AUTH": "none"}, backend=backend)
    gateway = Gateway(core)
    port = await gateway.start("127.0.0.1", 0)
    try:
        sid = start(core)
        url = f"ws://{sid}.{DOMAIN}:{port}{PEER_PATH}"
        async with http.ws_connect(url, protocols=[sid]) as ws:
            await ws.send_str("no token")
            assert await ws.receive_str() == "no token"
        async with http.get(f"http://127.0.0.1:{port}/healthz") as health:
            assert health.status == 200
        async with http.get(f"http://127.0.0.1:{port}/sessions/not-an-id/sign_in") as nothing:
            assert nothing.status == 404 and "<session-id>" in (await nothing.json())["detail"]
    finally:
        await gateway.stop()


@pytest.mark.asyncio
async def test_a_session_whose_socket_is_not_there_is_a_bad_gateway(core, served, http, backend):
    sid = start(core)
    backend.signaling = ("127.0.0.1", 9)  # nothing listens there
    status, body, _ = await refused(http, served.by_host(sid), Authorization=f"Bearer {token(sid)}")
    assert (status, body) == (502, {"detail": f"Session '{sid}' cannot be reached"})
    assert presence.read(backend.ledger, backend.now()) == {}
