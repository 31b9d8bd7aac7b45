"""Through the real gateway on the real Docker daemon: ovas (the API, on the test's clock)
and `ovas gateway` (a process of its own) on one engine, whose ledger they share; the
stand-in's signaling WebSocket behind it; a client that signs in as NVIDIA's web viewer's
library does, by the session's name and by path. What the user sees: the echo, `connected`
while the client holds, the idle clock after it leaves, every refusal, and a gateway that
dies while a client is connected leaving no session connected."""

from __future__ import annotations

import asyncio
import time

import pytest

from ovas import create_app
from ovas.models import Reason, SessionState
from ovas.testing import FakeClock
from ovas.testing.requests import STANDIN_NEVER_READY
from tests.support.gateway import DOMAIN
from tests.support.gateway_process import (
    a_gateway_dies_under_a_client,
    as_user,
    by_host,
    by_path,
    connected,
    echoed,
    gateway_and_api,
    refused,
    sign_in,
    until,
    write_keys,
)

pytestmark = pytest.mark.docker
START = {"id": "kit-standin", "profile": "standin", "version": "1.0.0"}
IDLE = 300


@pytest.fixture
def keys(tmp_path):
    return write_keys(tmp_path / "keys.yaml")


@pytest.fixture
def stack(new_backend, docker_daemon, catalog_dir, keys, tmp_path):
    """(API test client, the test's clock, a gateway process not yet started): the API on
    the test's clock, the gateway built from the environment as `ovas gateway` is, both
    with the same settings on the same engine."""
    clock = FakeClock()
    engine = {
        "OVAS_BACKEND": "docker",
        "DOCKER_HOST": docker_daemon.url,
        "OVAS_CATALOG_PATH": str(catalog_dir),
        "OVAS_DOCKER_GPUS": "none",
    }
    gateway, settings = gateway_and_api(engine, keys, tmp_path / "gateway.log")
    settings["SESSION_IDLE_TIMEOUT"] = IDLE
    app = create_app(settings, backend=new_backend(gateway=True, now=clock))
    yield app.test_client(), clock, gateway
    gateway.close()


def started(api) -> dict:
    """A ready session of alice's, as GET /stream/{id} answers it to her."""
    answer = api.post("/stream", json=START, **as_user("alice"))
    assert answer.status_code in (200, 202), answer.text
    sid = answer.get_json()["id"]
    deadline = time.monotonic() + 30
    while (answer := api.get(f"/stream/{sid}", **as_user("alice"))).status_code == 202:
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.1)
    body = answer.get_json()
    assert body["status"]["condition"] == "ready", body
    return body


def test_a_viewer_signs_in_through_the_gateway_and_the_idle_clock_follows_it(stack):
    api, clock, gateway = stack
    gateway.start()
    body = started(api)
    sid, token = body["id"], body["stream_token"]
    # The answer names the gateway: the client builds its URL from it, unchanged.
    ((key, route),) = body["routes"].items()
    signaling = next(r for r in route["routes"] if r["description"] == "signaling")
    assert (key, signaling["source_port"]) == (f"{sid}.{DOMAIN}", gateway.port)
    assert connected(api, sid) is False

    async def visit(url: str, text: str) -> str:
        http, ws = await sign_in(url, sid, token)
        try:
            assert ws.protocol is None  # the stand-in chooses none; never the token
            heard = await echoed(ws, text)
            held = await asyncio.to_thread(until, lambda: connected(api, sid))
            assert held is True
            return heard
        finally:
            await ws.close()
            await http.close()

    host = by_host(sid, DOMAIN, gateway.port)
    assert asyncio.run(visit(host, '{"peer_msg": {"id": 1}}')) == '{"peer_msg": {"id": 1}}'
    assert until(lambda: connected(api, sid) is False)
    assert asyncio.run(visit(by_path(sid, gateway.port), "by path")) == "by path"
    assert until(lambda: connected(api, sid) is False)
    left = api.get(f"/stream/{sid}", **as_user("alice")).get_json()["last_connected_time"]
    assert left is not None
    # The idle clock runs from the client's departure: moved, not waited for.
    clock.advance(IDLE - 10)
    api.application.extensions["ovas"].sessions.reap_pass(tend_pools=False)
    assert api.get(f"/stream/{sid}", **as_user("alice")).get_json()["status"]["condition"] == (
        "ready"
    )
    clock.advance(20)
    api.application.extensions["ovas"].sessions.reap_pass(tend_pools=False)
    sessions = api.application.extensions["ovas"].sessions
    ended = sessions.get(sid)
    assert (ended.state, ended.reason) == (SessionState.ENDED, Reason.IDLE_TIMEOUT)
    # An ended session is answered 410 before any upgrade.
    assert asyncio.run(refused(host, sid, token)) == 410


def test_every_refusal_is_answered_before_the_upgrade(stack, standin_request):
    api, _, gateway = stack
    gateway.start()
    body = started(api)
    sid, token = body["id"], body["stream_token"]
    other = api.post("/stream", json=START, **as_user("bob")).get_json()["id"]
    bobs = api.get(f"/stream/{other}", **as_user("bob")).get_json()["stream_token"]
    sessions = api.application.extensions["ovas"].sessions
    waiting = sessions.backend.start(
        standin_request(username="alice", env={STANDIN_NEVER_READY: "1"})
    ).record.id
    host = by_host(sid, DOMAIN, gateway.port)
    unknown = "0c5e7a9e-0a55-4a70-9c39-8a1d5d3b7f10"

    async def answers() -> dict[str, int]:
        return {
            "no credential": await refused(host, sid, None),
            "another session's token": await refused(host, sid, bobs),
            "another user's key": await refused(
                host, sid, None, headers={"Authorization": "Bearer key-bob"}
            ),
            "the owner's key": await refused(
                host, sid, None, headers={"Authorization": "Bearer key-alice"}
            ),
            "unknown": await refused(by_host(unknown, DOMAIN, gateway.port), unknown, token),
            "starting": await refused(
                by_path(waiting, gateway.port),
                waiting,
                None,
                headers={"Authorization": "Bearer key-alice"},
            ),
        }

    assert asyncio.run(answers()) == {
        "no credential": 401,
        "another session's token": 403,
        "another user's key": 403,
        "the owner's key": 0,  # the API's own credentials open it too
        "unknown": 404,
        "starting": 503,
    }
    assert until(lambda: connected(api, sid) is False)  # the owner's visit has ended


def test_a_gateway_that_dies_under_a_client_leaves_no_session_connected(stack):
    api, clock, gateway = stack
    gateway.start()
    body = started(api)
    a_gateway_dies_under_a_client(api, gateway, clock, body["id"], body["stream_token"])
