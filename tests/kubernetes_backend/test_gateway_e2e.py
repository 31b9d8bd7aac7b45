"""Through the real gateway process on the emulated cluster: ovas (the API, on the test's
clock) and `ovas gateway`, a process of its own built from an environment written here (the
Kubernetes backend, API keys, the gateway's domain and secret; not the chart's), both
against the emulator; the session's pod at 127.0.0.1, its Kit container's signaling port a real
WebSocket echo. The order of events of the Docker test (tests/docker_backend/
test_gateway_e2e.py): a viewer signs in by name and by path, `connected` follows it (which
the cluster alone cannot tell), the idle clock ends the session after it left, every
refusal, and a gateway killed under a client leaves no session connected."""

from __future__ import annotations

import asyncio

import pytest
from support.kube_requests import wait_for

from kubernetes_backend.steps import request_for
from kubernetes_backend.steps import start as begin
from ovas import create_app
from ovas.models import Reason, SessionState
from tests.support.gateway import DOMAIN, Echo
from tests.support.gateway_process import (
    LoopThread,
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

pytestmark = pytest.mark.kubernetes
NAMESPACE = "omni-streaming"
IDLE = 300
READY = {SessionState.READY}


@pytest.fixture
def stack(make_backend, cluster, tmp_path):
    """(API test client, echo, gateway process not yet started), every pod at 127.0.0.1."""
    cluster.cluster.pod_ip = "127.0.0.1"
    keys = write_keys(tmp_path / "keys.yaml")
    engine = {
        "OVAS_BACKEND": "kubernetes",
        "KUBECONFIG": cluster.kubeconfig,
        "OVAS_KUBERNETES_NAMESPACE": NAMESPACE,
    }
    gateway, settings = gateway_and_api(engine, keys, tmp_path / "gateway.log")
    settings["SESSION_IDLE_TIMEOUT"] = IDLE
    app = create_app(settings, backend=make_backend(gateway=True))
    with LoopThread() as loop:
        echo = loop.run(Echo().start())
        try:
            yield app.test_client(), echo, gateway
        finally:
            gateway.close()
            loop.run(echo.stop())


def started(api, echo, user: str = "alice") -> dict:
    """A ready session of `user`'s whose signaling port is the echo's, as GET /stream/{id}
    answers it to them."""
    sessions = api.application.extensions["ovas"].sessions
    request = request_for(sessions.backend, {"ports": {"signaling": echo.port}}, username=user)
    sid = begin(sessions, request).id
    wait_for(sessions, sid, READY)
    return api.get(f"/stream/{sid}", **as_user(user)).get_json()


def test_a_viewer_signs_in_through_the_gateway_and_the_idle_clock_follows_it(stack, clock):
    api, echo, gateway = stack
    gateway.start()
    body = started(api, echo)
    sid, token = body["id"], body["stream_token"]
    ((key, route),) = body["routes"].items()
    signaling = next(r for r in route["routes"] if r["description"] == "signaling")
    assert (key, signaling["source_port"]) == (f"{sid}.{DOMAIN}", gateway.port)
    assert connected(api, sid) is False  # known on a cluster, with the gateway

    async def visit(url: str, text: str) -> str:
        http, ws = await sign_in(url, sid, token)
        try:
            assert ws.protocol == sid  # the echo's choice, never the token
            heard = await echoed(ws, text)
            assert await asyncio.to_thread(until, lambda: connected(api, sid)) is True
            return heard
        finally:
            await ws.close()
            await http.close()

    host = by_host(sid, DOMAIN, gateway.port)
    assert asyncio.run(visit(host, '{"peer_msg": {"id": 1}}')) == '{"peer_msg": {"id": 1}}'
    assert until(lambda: connected(api, sid) is False)
    assert asyncio.run(visit(by_path(sid, gateway.port), "by path")) == "by path"
    assert until(lambda: connected(api, sid) is False)
    # What the pod's socket saw: the library's path and query, the session id offered, no
    # credential.
    assert [s.path for s in echo.seen] == ["/sign_in?peer_id=peer-0123456789&version=2"] * 2
    assert all(s.offered == [sid] and "Authorization" not in s.headers for s in echo.seen)
    sessions = api.application.extensions["ovas"].sessions
    clock.advance(IDLE - 10)
    sessions.reap_pass(tend_pools=False)
    assert sessions.get(sid).state is SessionState.READY
    clock.advance(20)
    sessions.reap_pass(tend_pools=False)
    ended = sessions.get(sid)
    assert (ended.state, ended.reason) == (SessionState.ENDED, Reason.IDLE_TIMEOUT)
    assert asyncio.run(refused(host, sid, token)) == 410


def test_every_refusal_is_answered_before_the_upgrade(stack, cluster):
    api, echo, gateway = stack
    gateway.start()
    body = started(api, echo)
    sid = body["id"]
    bobs = started(api, echo, "bob")["stream_token"]
    sessions = api.application.extensions["ovas"].sessions
    cluster.cluster.running = False  # no kubelet: the next pod stays pending
    waiting = begin(sessions, request_for(sessions.backend, username="alice")).id
    host = by_host(sid, DOMAIN, gateway.port)
    unknown = "0c5e7a9e-0a55-4a70-9c39-8a1d5d3b7f10"
    owner = {"headers": {"Authorization": "Bearer key-alice"}}

    async def answers() -> dict[str, int]:
        return {
            "no credential": await refused(host, sid, None),
            "another session's token": await refused(host, sid, bobs),
            "another user's key": await refused(
                host, sid, None, headers={"Authorization": "Bearer key-bob"}
            ),
            "unknown": await refused(by_host(unknown, DOMAIN, gateway.port), unknown, bobs),
            "starting": await refused(by_path(waiting, gateway.port), waiting, None, **owner),
        }

    assert asyncio.run(answers()) == {
        "no credential": 401,
        "another session's token": 403,
        "another user's key": 403,
        "unknown": 404,
        "starting": 503,
    }
    cluster.cluster.running = True
    assert echo.seen == []  # nothing refused reached the pod
    assert connected(api, sid) is False


def test_a_gateway_that_dies_under_a_client_leaves_no_session_connected(stack, clock):
    api, echo, gateway = stack
    gateway.start()
    body = started(api, echo)
    a_gateway_dies_under_a_client(api, gateway, clock, body["id"], body["stream_token"])
