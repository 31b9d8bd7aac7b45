"""What the signaling gateway keeps from the sessions and from other sites: no identity
taken from a client's own headers, no credential of the API's passed to a session's socket,
no cookie used from another site's page, and a JSON answer when its ledger records cannot
be read. Served for real on 127.0.0.1 in front of a FakeBackend-driven core."""

from __future__ import annotations

import contextlib

import pytest
import pytest_asyncio
from aiohttp import web

from ovas import create_app
from ovas.gateway import tokens
from ovas.gateway.server import Gateway
from ovas.ledger import MemoryLedger
from ovas.testing import FakeBackend
from ovas.testing.clock import FakeClock
from tests.support.gateway import DOMAIN, PEER_PATH, UPGRADE, Echo, client_session

SECRET = "gateway-guards-secret"


@pytest.fixture
def backend():
    clock = FakeClock()
    backend = FakeBackend(now=clock)
    backend.ledger = MemoryLedger(now=clock)
    return backend


@pytest_asyncio.fixture
async def echo(backend):
    echo = await Echo().start()
    backend.signaling = ("127.0.0.1", echo.port)
    yield echo
    await echo.stop()


@pytest_asyncio.fixture
async def http():
    async with client_session() as session:
        yield session


@contextlib.asynccontextmanager
async def gateway_of(backend, **settings):
    """(core, port) of a gateway served on 127.0.0.1 for a core made with `settings`."""
    core = create_app(
        {
            "TESTING": True,
            "REAP_INTERVAL": 0,
            "GATEWAY_DOMAIN": DOMAIN,
            "GATEWAY_SECRET": SECRET,
            **settings,
        },
        backend=backend,
    )
    gateway = Gateway(core)
    port = await gateway.start("127.0.0.1", 0)
    try:
        yield core, port
    finally:
        await gateway.stop(timeout=1)


def start(core, user: str = "alice") -> str:
    return core.extensions["ovas"].sessions.start("usd-viewer", "default", username=user).id


async def status_of(http, url: str, **headers) -> tuple[int, dict, dict]:
    async with http.get(url, headers={**UPGRADE, **headers}) as got:
        return got.status, await got.json(), dict(got.headers)


@pytest.mark.asyncio
async def test_with_header_auth_forged_identity_headers_open_no_session(backend, echo, http):
    """A local TLS terminator's address is trusted by header auth: the client's own
    `X-Forwarded-User` would otherwise name anyone, an admin included."""
    async with gateway_of(backend, AUTH="header") as (core, port):
        sid = start(core)
        url = f"http://{sid}.{DOMAIN}:{port}{PEER_PATH}"
        for user, roles in (("alice", "streamer"), ("mallory", "admin")):
            forged = {
                "X-Forwarded-User": user,
                "X-Forwarded-Roles": roles,
                "Authorization": "Bearer anything",
            }
            status, body, _ = await status_of(http, url, **forged)
            assert status == 403, user
            assert body == {"detail": f"The credential does not open session '{sid}'"}
        good = {"Authorization": f"Bearer {tokens.issue(SECRET, sid, 'alice')}"}
        async with http.ws_connect(url.replace("http://", "ws://"), headers=good) as ws:
            await ws.send_str("token")
            assert await ws.receive_str() == "token"


@pytest.mark.asyncio
async def test_no_credential_of_the_api_reaches_the_sessions_socket(backend, echo, http):
    async with gateway_of(backend, AUTH="header", AUTH_USER_HEADER="X-Remote-User") as (
        core,
        port,
    ):
        sid, other = start(core), start(core)
        mine = tokens.issue(SECRET, sid, "alice")
        headers = {
            "Authorization": "Basic YWxpY2U6c2VjcmV0",
            "X-API-Key": "ovas_key",
            "X-Ovas-Proxy-Secret": "proxy",
            "X-Forwarded-User": "alice",
            "X-Forwarded-Roles": "admin",
            "X-Remote-User": "alice",
            "Cookie": (
                f"theme=dark; {tokens.cookie_name(other)}={tokens.issue(SECRET, other, 'alice')}"
            ),
            "X-Viewer": "kept",
        }
        url = f"ws://{sid}.{DOMAIN}:{port}{PEER_PATH}"
        async with http.ws_connect(
            url, headers=headers, protocols=[sid, f"Authorization-Bearer.{mine}"]
        ) as ws:
            await ws.send_str("hi")
            assert await ws.receive_str() == "hi"
    received = {k.lower(): v for k, v in echo.seen[-1].headers.items()}
    for name in (
        "authorization",
        "x-api-key",
        "x-ovas-proxy-secret",
        "x-forwarded-user",
        "x-forwarded-roles",
        "x-remote-user",
    ):
        assert name not in received
    assert received["cookie"] == "theme=dark"  # no stream token of another session
    assert received["x-viewer"] == "kept"


@pytest.mark.asyncio
async def test_a_cookie_one_sessions_socket_sets_is_never_sent_to_another(backend, http):
    """The gateway's upstream client is shared by every client: it must keep no cookie."""
    heard: list[str | None] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        heard.append(request.headers.get("Cookie"))
        ws = web.WebSocketResponse()
        ws.set_cookie("upstream", "secret")
        await ws.prepare(request)
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    # By name, as on Kubernetes (a cookie jar keeps no cookie of an IP address's).
    backend.signaling = ("localhost", runner.addresses[0][1])
    try:
        async with gateway_of(backend, GATEWAY_AUTH="none") as (core, port):
            for user in ("alice", "bob"):
                sid = start(core, user)
                async with http.ws_connect(f"ws://{sid}.{DOMAIN}:{port}{PEER_PATH}") as ws:
                    await ws.receive()
    finally:
        await runner.cleanup()
    assert heard == [None, None]


@pytest.mark.asyncio
async def test_the_cookie_counts_only_from_the_gateways_own_site(backend, echo, http):
    """A page of another site makes the browser send the cookie too (cross-site WebSocket
    hijacking): refused. Pages of the domain and of OVAS_CORS_ORIGINS are taken."""
    async with gateway_of(backend, CORS_ORIGINS="https://viewer.example.org") as (core, port):
        sid = start(core)
        cookie = {"Cookie": f"{tokens.cookie_name(sid)}={tokens.issue(SECRET, sid, 'alice')}"}
        url = f"http://{sid}.{DOMAIN}:{port}{PEER_PATH}"
        for origin in ("https://evil.example", f"https://{DOMAIN}.evil.example", None):
            sent = {**cookie, **({"Origin": origin} if origin else {})}
            status, body, _ = await status_of(http, url, **sent)
            assert status == 403 and "cookie" in body["detail"], origin
        for origin in (f"https://{DOMAIN}", f"https://app.{DOMAIN}", "https://viewer.example.org"):
            async with http.ws_connect(
                url.replace("http://", "ws://"), headers=cookie, origin=origin
            ) as ws:
                await ws.send_str(origin)
                assert await ws.receive_str() == origin


@pytest.mark.asyncio
async def test_an_unreadable_secret_record_is_a_json_503(backend, echo, http, caplog):
    backend.ledger.create(tokens.SECRET_RECORD, {"format": "99", "kind": "gateway-secret"})
    async with gateway_of(backend, GATEWAY_SECRET="") as (core, port):
        sid = start(core)
        url = f"http://{sid}.{DOMAIN}:{port}{PEER_PATH}"
        status, body, headers = await status_of(http, url, Authorization="Bearer some.token")
    assert status == 503 and headers["Retry-After"] == "5"
    assert body == {"detail": "The gateway cannot read its records in the backend's ledger now"}
    assert "the stream token secret cannot be read" in caplog.text
