"""RBAC least privilege, checked by use: what a Role grants, what the backend and the
signaling gateway (which runs under the same ServiceAccount) asked the API server for, and a
run of both that makes every kind of call they can make. The kustomize base's Role
(test_deploy.py) and the chart's (test_helm_install.py) are held to it."""

from __future__ import annotations

import asyncio
from typing import Any

from support.kube_requests import wait_for

from kubernetes_backend.earlier import as_earlier
from kubernetes_backend.steps import request_for
from kubernetes_backend.steps import start as begin
from ovas import create_app
from ovas.auth import STREAMER, Identity
from ovas.gateway import presence
from ovas.gateway.server import Gateway
from ovas.models import Application, Reason, SessionQuery, SessionState, Version
from ovas.services import CatalogService
from ovas.session_records import SLOT_RECORD
from ovas.testing import service_for
from ovas.workloads import SLOT_PREFIX
from tests.support.gateway import DOMAIN, Echo
from tests.support.gateway_process import LoopThread, by_host, sign_in

VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}


def resource(request) -> str:
    """The resource RBAC names: `pods`, or `pods/log` for a pod's log."""
    plural = request.resource.plural
    return f"{plural}/{request.subresource}" if request.subresource else plural


def verb(request) -> str:
    method = request.method.value
    if method == "GET":
        return "get" if request.name else "list"
    if method == "DELETE":
        return "delete" if request.name else "deletecollection"
    return VERBS[method]


def granted(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(API group, resource, verb) for every grant of `role`."""
    return {
        (group, resource, v)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for v in rule["verbs"]
    }


def used(calls) -> set[tuple[str, str, str]]:
    """(API group, resource, verb) of every request in `calls` (the emulator's)."""
    return {(r.resource.group, resource(r), verb(r)) for r in calls}


def exercise(make_backend, cluster, mode: str) -> None:
    """Everything the backend does: start, read, mark, end, read logs, stop, collect,
    check, edit the catalog, keep the core's records, adopt an earlier release's."""
    made = make_backend(mode)
    earlier = begin(service_for(made), request_for(made))
    as_earlier(cluster, mode, earlier.id, "93837ff")
    backend = make_backend(mode)
    sessions = service_for(backend, retention=60)
    backend.check()
    backend.catalog.check()
    ok = begin(sessions, request_for(backend, capacity=5, user_capacity=5))
    exits = {"env": [{"name": "STANDIN_EXIT_CODE", "value": "1"}]}
    crash = begin(sessions, request_for(backend, exits))
    wait_for(sessions, ok.id, {SessionState.READY})
    wait_for(sessions, crash.id, {SessionState.FAILED})
    sessions.all()
    backend.observe_page(SessionQuery(username="tester"))
    backend.logs(ok.id)
    backend.logs(crash.id)
    backend.stop(ok.id)
    assert earlier.id in {r.id for r in backend.records()}  # adopted
    # A start that died midway, holding its place.
    dead = SLOT_RECORD.encode({"session": "dead", "taken": backend.now().isoformat()})
    backend.ledger.create(f"{SLOT_PREFIX}all.8", dead)
    backend.now.advance(3600)
    sessions.reap()
    ledger = backend.ledger  # the core's records
    entry = ledger.create(f"check.{mode}", {"n": "1"})
    ledger.delete(ledger.replace(ledger.get(entry.name), {"n": "2"}))
    ledger.list()
    editor = CatalogService(backend.catalog, editing_enabled=True)
    editor.create_application(Application(f"app-{mode}", "App"))
    editor.update_application(f"app-{mode}", {"name": "Renamed"})
    editor.create_version(Version(f"app-{mode}", "1.0.0", "reg/app", "1.0.0"))
    editor.delete_version(f"app-{mode}", "1.0.0")
    editor.delete_application(f"app-{mode}")
    backend.catalog.profile("standin")


def exercise_gateway(make_backend, cluster) -> None:
    """What the gateway does: find a session, read the stream tokens' secret (the one kept
    in the ledger, made on first use), relay a client to the pod, record it arriving and
    leaving. Every pod is put at 127.0.0.1 for it, where an echo listens."""
    cluster.cluster.pod_ip = "127.0.0.1"
    core = create_app(
        {"TESTING": True, "REAP_INTERVAL": 0, "GATEWAY_DOMAIN": DOMAIN},
        backend=make_backend(gateway=True),
    )
    sessions = core.extensions["ovas"].sessions
    with LoopThread() as loop:
        echo = loop.run(Echo().start())
        gateway = Gateway(core)
        port = loop.run(gateway.start("127.0.0.1", 0))
        try:
            request = request_for(sessions.backend, {"ports": {"signaling": echo.port}})
            session = begin(sessions, request)
            wait_for(sessions, session.id, {SessionState.READY})
            owner = Identity(session.username, frozenset({STREAMER}))
            token = sessions.get(session.id, owner).stream_token  # the API's side of it

            async def visit() -> None:
                http, ws = await sign_in(by_host(session.id, DOMAIN, port), session.id, token)
                await ws.send_str("hello")
                assert (await ws.receive(timeout=5)).data == "hello"
                await ws.close()
                await http.close()

            asyncio.run(visit())
        finally:
            loop.run(gateway.stop())
            loop.run(echo.stop())
    assert sessions.backend.ledger.list(presence.PREFIX) == []


def exercise_lost_node(make_backend, cluster) -> None:
    """A session whose node is deleted: its pod vanishes, and reading it reads the Node."""
    sessions = service_for(make_backend())
    session = begin(sessions, request_for(sessions.backend))
    wait_for(sessions, session.id, {SessionState.READY})
    pod = next(p for p in cluster.objects("v1/pods") if p["metadata"]["name"].endswith(session.id))
    cluster.locked(lambda: cluster.cluster.delete_node(pod["spec"]["nodeName"]))
    assert sessions.get(session.id).reason is Reason.NODE_LOST


def assert_least_privilege(
    role: dict[str, Any], make_backend, cluster, cluster_role: dict[str, Any]
) -> None:
    """Runs the backend in both session modes, and the gateway; every call they made is
    granted by `role` (in the namespace) or `cluster_role` (Nodes), and every grant of
    either was used."""
    for mode in ("pod", "helmrelease"):
        exercise(make_backend, cluster, mode)
    exercise_gateway(make_backend, cluster)
    exercise_lost_node(make_backend, cluster)
    calls = used(cluster.emulator.calls())
    grants = granted(role) | granted(cluster_role)
    assert calls - grants == set(), "calls the Roles do not allow"
    assert grants - calls == set(), "grants nothing uses"
