"""The cluster is the only record: restarts and replicas agree; an unreachable API server is
a 503 that heals by itself; stop and the reaper leave nothing behind."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from support.kube_requests import request_for, wait_for
from support.kube_server import EmulatedCluster, catalog_documents, free_port, write_kubeconfig

from backends.kubernetes import KubernetesBackend
from backends.kubernetes import objects as o
from ovas import registry
from ovas.errors import BackendUnavailable, ConfigurationError, SessionNotFound
from ovas.models import SessionState

pytestmark = pytest.mark.kubernetes
READY = {SessionState.READY}
KINDS = ("v1/pods", "v1/services", "v1/configmaps", "helm.toolkit.fluxcd.io/v2/helmreleases")


def leftovers(cluster, session_id: str) -> list[str]:
    return [
        f"{kind}/{obj['metadata']['name']}"
        for kind in KINDS
        for obj in cluster.objects(kind)
        if (obj["metadata"].get("labels") or {}).get(o.SESSION) == session_id
    ]


def settle(cluster, session_id: str) -> list[str]:
    """What is left of a session once the kubelet has ended its terminating pods."""
    deadline = time.monotonic() + 5
    while leftovers(cluster, session_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    return leftovers(cluster, session_id)


@pytest.mark.parametrize("mode", ["pod", "helmrelease"])
def test_a_restarted_process_and_another_replica_see_the_same_sessions(make_backend, mode):
    before = make_backend(mode)
    ready = before.start(request_for(before, username="ann"))
    slow = before.start(
        request_for(before, {"env": [{"name": "STANDIN_READY_DELAY", "value": "60"}]})
    )
    wait_for(before, ready.id, READY)
    after, replica = make_backend(mode), make_backend(mode)
    by_id = {s.id: s for s in before.list()}
    assert {s.id: s for s in after.list()} == by_id
    assert {s.id: s for s in replica.list()} == by_id
    assert after.get(ready.id) == by_id[ready.id] == replica.get(ready.id)
    assert by_id[ready.id].username == "ann" and by_id[ready.id].ready
    assert by_id[slow.id].state is SessionState.CREATING
    replica.stop(slow.id)
    with pytest.raises(SessionNotFound):
        before.get(slow.id)


@pytest.mark.parametrize("mode", ["pod", "helmrelease"])
def test_stop_removes_every_object_of_the_session(make_backend, cluster, mode):
    backend = make_backend(mode)
    session = backend.start(request_for(backend, capacity=5, user_capacity=5))
    wait_for(backend, session.id, READY)
    assert len(leftovers(cluster, session.id)) >= 4
    backend.stop(session.id)
    with pytest.raises(SessionNotFound):
        backend.get(session.id)
    assert settle(cluster, session.id) == []


def test_an_unreachable_api_server_is_unavailable_until_it_comes_back(tmp_path):
    port = free_port()
    kubeconfig = write_kubeconfig(tmp_path / "config", f"http://127.0.0.1:{port}")
    backend = KubernetesBackend(namespace="omni-streaming", config_file=str(kubeconfig))
    began = time.monotonic()
    with pytest.raises(BackendUnavailable) as down:
        backend.list()
    assert time.monotonic() - began < 5
    assert f"The Kubernetes API server at http://127.0.0.1:{port} cannot be reached" in (
        down.value.message
    )
    with pytest.raises(BackendUnavailable):
        backend.check()
    with EmulatedCluster(port=port) as cluster:
        cluster.seed("omni-streaming", catalog_documents())
        backend.check()
        session = backend.start(request_for(backend))
        assert wait_for(backend, session.id, READY).ready
    backend.close()


def test_no_configuration_is_unavailable_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    backend = KubernetesBackend(config_file=str(tmp_path / "missing"))
    with pytest.raises(BackendUnavailable) as down:
        backend.check()
    assert "no usable Kubernetes configuration" in down.value.message
    assert down.value.http_status == 503


def test_helmrelease_mode_without_flux_says_so(tmp_path):
    with EmulatedCluster(flux=False) as cluster:
        backend = KubernetesBackend(mode="helmrelease", config_file=cluster.kubeconfig)
        with pytest.raises(BackendUnavailable) as down:
            backend.check()
        assert "is Flux installed?" in down.value.message


def test_settings_and_registration(monkeypatch):
    assert registry.load("kubernetes") is KubernetesBackend
    backend = KubernetesBackend.from_settings(
        {
            "KUBERNETES_NAMESPACE": "streams",
            "KUBERNETES_SESSION_MODE": "HelmRelease",
            "KUBERNETES_PUBLIC_HOST": "streams.example",
            "REAP_GRACE": 5,
        }
    )
    assert (backend.namespace, backend.mode, backend.public_host) == (
        "streams",
        "helmrelease",
        "streams.example",
    )
    assert backend.reap_grace == timedelta(seconds=5)
    with pytest.raises(ConfigurationError):
        KubernetesBackend.from_settings({"KUBERNETES_SESSION_MODE": "deployment"})


@pytest.mark.parametrize(("public_host", "address"), [(None, "10.0.0."), ("streams.example", "")])
def test_node_port_sessions_are_reached_on_a_node(make_backend, public_host, address):
    backend = make_backend(public_host=public_host)
    node_port = {"service": {"type": "NodePort"}}
    sessions = [backend.start(request_for(backend, node_port)) for _ in range(2)]
    ready = [wait_for(backend, s.id, READY) for s in sessions]
    for session in ready:
        assert session.host.startswith(address) if address else session.host == public_host
        assert all(30000 <= r.source_port <= 32767 for r in session.routes)
        assert [r.destination_port for r in session.routes] == [49100, 47998]
    ports = {r.source_port for s in ready for r in s.routes}
    assert len(ports) == 4


@pytest.mark.parametrize("mode", ["pod", "helmrelease"])
def test_the_reaper_removes_failed_and_late_sessions_after_the_grace(make_backend, cluster, mode):
    backend = make_backend(mode, reap_grace=30)
    crash = backend.start(
        request_for(backend, {"env": [{"name": "STANDIN_EXIT_CODE", "value": "2"}]})
    )
    late = backend.start(
        request_for(
            backend, {"env": [{"name": "STANDIN_NEVER_READY", "value": "1"}]}, start_timeout=1
        )
    )
    fine = backend.start(request_for(backend))
    wait_for(backend, crash.id, {SessionState.FAILED})
    wait_for(backend, late.id, {SessionState.FAILED})
    wait_for(backend, fine.id, READY)
    assert backend.reap(datetime.now(UTC)) == []
    removed = backend.reap(datetime.now(UTC) + timedelta(seconds=31))
    assert sorted(removed) == sorted([crash.id, late.id])
    assert [s.id for s in backend.list()] == [fine.id]
    assert settle(cluster, crash.id) == settle(cluster, late.id) == []


def test_the_reaper_removes_objects_of_no_session(make_backend, cluster):
    backend = make_backend()
    fine = backend.start(request_for(backend))
    stray = {"ovas/session": "gone", "app.kubernetes.io/managed-by": "ovas"}
    cluster.seed(
        "omni-streaming",
        [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s1", "labels": stray}},
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "p1", "labels": stray},
                "spec": {"containers": [{"name": "c", "image": "i"}]},
            },
        ],
    )
    assert backend.reap(datetime.now(UTC)) == []
    removed = backend.reap(datetime.now(UTC) + timedelta(seconds=61))
    assert sorted(removed) == ["pod/p1", "service/s1"]
    assert [s.id for s in backend.list()] == [fine.id]


def test_a_ready_session_is_marked_ready_on_its_pod(make_backend, cluster):
    backend = make_backend()
    session = backend.start(request_for(backend))
    wait_for(backend, session.id, READY)
    (pod,) = [
        obj
        for obj in cluster.objects(KINDS[0])
        if (obj["metadata"].get("labels") or {}).get(o.SESSION) == session.id
    ]
    # From now on its start deadline no longer applies (a readiness blip is no failure).
    assert o.READY_AT in (pod["metadata"].get("annotations") or {})
