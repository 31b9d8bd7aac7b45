"""The signaling gateway on Kubernetes: signaling stays inside the cluster, where the gateway
reaches the pod; only media is exposed; and the clients the gateway counts drive the
connect and idle clocks, which the cluster alone cannot tell."""

from __future__ import annotations

import pytest
from support.kube_requests import wait_for

from kubernetes_backend.steps import PODS, SERVICES, of_session, request_for
from kubernetes_backend.steps import start as begin
from ovas.gateway import presence
from ovas.gateway.rules import GatewayRules
from ovas.lifecycle import Stage
from ovas.models import Reason, SessionState
from ovas.testing import service_for

pytestmark = pytest.mark.kubernetes
READY = {SessionState.READY}
DOMAIN = "streams.example.com"


def gateway_sessions(make_backend, **kw):
    backend = make_backend(gateway=True, **kw)
    return service_for(backend, gateway=GatewayRules(domain=DOMAIN, secret="s"))


def test_with_the_gateway_only_media_is_exposed_and_signaling_is_reached_at_the_pod(
    make_backend, cluster
):
    sessions = gateway_sessions(make_backend)
    session = wait_for(sessions, begin(sessions, request_for(sessions.backend)).id, READY)
    (service,) = of_session(cluster, SERVICES, session.id)
    assert service["spec"]["type"] == "NodePort"
    ((media_port),) = service["spec"]["ports"]
    assert (media_port["name"], media_port["protocol"]) == ("media", "UDP")
    (pod,) = of_session(cluster, PODS, session.id)
    kit_ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    seen = sessions.backend.observe(session.id).seen
    assert seen.signaling == (pod["status"]["podIP"], kit_ports["signaling"])
    _, upstream = sessions.signaling(session.id)
    assert upstream == seen.signaling
    # Clients are sent to the gateway for signaling, to the node port for media.
    assert session.host == f"{session.id}.{DOMAIN}"
    routes = {r.description: r for r in session.routes}
    assert (routes["signaling"].source_port, routes["signaling"].destination_port) == (
        443,
        kit_ports["signaling"],
    )
    assert (routes["media"].source_port, routes["media"].destination_port) == (
        media_port["nodePort"],
        kit_ports["media"],
    )


def test_a_profile_asking_for_a_load_balancer_gets_one_for_media_only(make_backend, cluster):
    sessions = gateway_sessions(make_backend)
    request = request_for(sessions.backend, {"service": {"type": "LoadBalancer"}})
    session = wait_for(sessions, begin(sessions, request).id, READY)
    (service,) = of_session(cluster, SERVICES, session.id)
    assert service["spec"]["type"] == "LoadBalancer"
    assert [p["name"] for p in service["spec"]["ports"]] == ["media"]


def test_without_the_gateway_the_service_exposes_both_and_the_pod_is_still_known(
    make_backend, cluster
):
    sessions = service_for(make_backend())
    session = wait_for(sessions, begin(sessions, request_for(sessions.backend)).id, READY)
    (service,) = of_session(cluster, SERVICES, session.id)
    assert service["spec"]["type"] == "LoadBalancer"
    assert [p["name"] for p in service["spec"]["ports"]] == ["signaling", "media"]
    (pod,) = of_session(cluster, PODS, session.id)
    assert sessions.backend.observe(session.id).seen.signaling[0] == pod["status"]["podIP"]
    assert session.connected is None  # the cluster alone cannot tell


def arrive(ledger, sid: str, count: int, now) -> None:
    name = presence.record_name(sid, "aaaaaaaaaaaa")
    held = ledger.get(name)
    if held is None:
        ledger.create(name, presence.data(count, now))
    else:
        ledger.replace(held, presence.data(count, now))


def test_the_connect_and_idle_clocks_end_sessions_on_kubernetes(make_backend, cluster, clock):
    sessions = gateway_sessions(make_backend)
    ledger = sessions.backend.ledger
    visited = wait_for(sessions, begin(sessions, request_for(sessions.backend)).id, READY)
    unvisited = wait_for(sessions, begin(sessions, request_for(sessions.backend)).id, READY)
    assert sessions.get(visited.id).connected is False
    arrive(ledger, visited.id, 1, clock())
    seen = sessions.get(visited.id)
    assert (seen.connected, seen.last_connected_time) == (True, clock())
    clock.advance(100)
    arrive(ledger, visited.id, 0, clock())
    left = clock()
    assert sessions.get(visited.id).connected is False
    clock.advance(201)
    sessions.reap_pass(tend_pools=False)
    assert sessions.get(unvisited.id).reason is Reason.CONNECT_TIMEOUT
    assert sessions.get(visited.id).state is SessionState.READY
    clock.advance(100)
    sessions.reap_pass(tend_pools=False)
    ended = sessions.get(visited.id)
    assert (ended.state, ended.reason, ended.last_connected_time) == (
        SessionState.ENDED,
        Reason.IDLE_TIMEOUT,
        left,
    )
    # Both workloads are gone; the gateway's expired record too.
    for sid in (visited.id, unvisited.id):
        assert sessions.backend.observe(sid).seen.stage is Stage.GONE
    assert ledger.list(presence.PREFIX) == []
