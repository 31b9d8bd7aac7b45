"""The cluster is the only record (the sessions' workloads, and their records in the ledger's
ConfigMaps): restarts and replicas agree; an unreachable API server is a 503 that heals by
itself; stop and collect leave nothing behind."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from support.kube_requests import wait_for
from support.kube_server import EmulatedCluster, catalog_documents, free_port, write_kubeconfig

from backends.kubernetes import KubernetesBackend
from backends.kubernetes import objects as o
from kubernetes_backend.steps import (
    PODS,
    RELEASES,
    leftovers,
    of_session,
    record_of,
    request_for,
    settle,
)
from kubernetes_backend.steps import start as begin
from ovas import registry
from ovas.errors import BackendUnavailable, ConfigurationError, SessionNotFound
from ovas.lifecycle import Mark
from ovas.models import SessionState
from ovas.testing import service_for
from ovas.workloads import SLOT_PREFIX

pytestmark = pytest.mark.kubernetes
READY = {SessionState.READY}
SLOW = {"env": [{"name": "STANDIN_READY_DELAY", "value": "60"}]}


@pytest.mark.parametrize("mode", ["pod", "helmrelease"])
def test_a_restarted_process_and_another_replica_see_the_same_sessions(make_backend, mode):
    before = service_for(make_backend(mode))
    ready = begin(before, request_for(before.backend, username="ann"))
    slow = begin(before, request_for(before.backend, SLOW))
    wait_for(before, ready.id, READY)
    after, replica = service_for(make_backend(mode)), service_for(make_backend(mode))
    by_id = {s.id: s for s in before.all()}

    def seen(sessions) -> dict:
        # A starting pod's message follows the emulated kubelet, which moves on in real time.
        return {s.id: (s.state, s.routes, s.username, s.created_time) for s in sessions}

    assert seen(after.all()) == seen(by_id.values())
    assert seen(replica.all()) == seen(by_id.values())
    assert after.get(ready.id) == by_id[ready.id] == replica.get(ready.id)
    assert by_id[ready.id].username == "ann" and by_id[ready.id].ready
    assert by_id[slow.id].state is SessionState.CREATING
    replica.stop(slow.id)
    with pytest.raises(SessionNotFound):
        before.get(slow.id)


@pytest.mark.parametrize("mode", ["pod", "helmrelease"])
def test_stop_removes_every_object_of_the_session(make_backend, cluster, mode):
    sessions = service_for(make_backend(mode))
    session = begin(sessions, request_for(sessions.backend, capacity=5, user_capacity=5))
    wait_for(sessions, session.id, READY)
    assert len(leftovers(cluster, session.id)) >= 2
    assert record_of(cluster, session.id) is not None
    sessions.stop(session.id)
    with pytest.raises(SessionNotFound):
        sessions.get(session.id)
    assert settle(cluster, session.id) == []
    assert record_of(cluster, session.id) is None
    assert sessions.backend.ledger.list(SLOT_PREFIX) == []


@pytest.mark.parametrize("mode", ["pod", "helmrelease"])
def test_stop_removes_an_ended_session_with_its_outcome(make_backend, cluster, mode):
    sessions = service_for(make_backend(mode))
    exits = {"env": [{"name": "STANDIN_EXIT_CODE", "value": "4"}]}
    session = begin(sessions, request_for(sessions.backend, exits, capacity=5))
    assert wait_for(sessions, session.id, {SessionState.FAILED}).reason is not None
    assert settle(cluster, session.id) == []  # its record alone is left
    assert record_of(cluster, session.id)[0].outcome is not None
    sessions.stop(session.id)
    with pytest.raises(SessionNotFound):
        sessions.get(session.id)
    assert settle(cluster, session.id) == []
    assert record_of(cluster, session.id) is None
    with pytest.raises(SessionNotFound):
        sessions.stop(session.id)


def test_an_unreachable_api_server_is_unavailable_until_it_comes_back(tmp_path):
    port = free_port()
    kubeconfig = write_kubeconfig(tmp_path / "config", f"http://127.0.0.1:{port}")
    backend = KubernetesBackend(namespace="omni-streaming", config_file=str(kubeconfig))
    began = time.monotonic()
    with pytest.raises(BackendUnavailable) as down:
        backend.observe_all()
    assert time.monotonic() - began < 5
    assert down.value.message == "The Kubernetes API server cannot be reached"
    # Only the log and authenticated admins read where it is.
    assert down.value.message_for(True).endswith(f"(at http://127.0.0.1:{port})")
    with pytest.raises(BackendUnavailable):
        backend.check()
    with EmulatedCluster(port=port) as cluster:
        cluster.seed("omni-streaming", catalog_documents())
        backend.check()
        sessions = service_for(backend)
        session = begin(sessions, request_for(backend))
        assert wait_for(sessions, session.id, READY).ready
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
        }
    )
    assert (backend.namespace, backend.mode, backend.public_host) == (
        "streams",
        "helmrelease",
        "streams.example",
    )
    assert backend.slot_grace == 60
    with pytest.raises(ConfigurationError):
        KubernetesBackend.from_settings({"KUBERNETES_SESSION_MODE": "deployment"})


@pytest.mark.parametrize(("public_host", "address"), [(None, "10.0.0."), ("streams.example", "")])
def test_node_port_sessions_are_reached_on_a_node(make_backend, public_host, address):
    sessions = service_for(make_backend(public_host=public_host))
    node_port = {"service": {"type": "NodePort"}}
    started = [begin(sessions, request_for(sessions.backend, node_port)) for _ in range(2)]
    ready = [wait_for(sessions, s.id, READY) for s in started]
    for session in ready:
        assert session.host.startswith(address) if address else session.host == public_host
        assert all(30000 <= r.source_port <= 32767 for r in session.routes)
        assert [r.destination_port for r in session.routes] == [49100, 47998]
    ports = {r.source_port for s in ready for r in s.routes}
    assert len(ports) == 4


@pytest.mark.parametrize("mode", ["pod", "helmrelease"])
def test_collect_removes_objects_of_no_session(make_backend, cluster, clock, mode):
    """Labelled with a session that has no record and holds no place (a start in progress
    holds one from before its workload is made), they belong to none."""
    backend = make_backend(mode)
    sessions = service_for(backend)
    fine = begin(sessions, request_for(backend))
    stray = {"ovas/session": "gone", "app.kubernetes.io/managed-by": "ovas"}
    cluster.seed(
        "omni-streaming",
        [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "ovas-gone", "labels": stray},
            },
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "p1", "labels": stray},
                "spec": {"containers": [{"name": "c", "image": "i"}]},
            },
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "c1", "labels": {**stray, o.OUTCOME: "ended"}},
            },
        ],
    )
    assert backend.collect(clock()) == ["gone"]
    assert settle(cluster, "gone") == []
    assert backend.collect(clock() + timedelta(seconds=61)) == []
    assert [s.id for s in sessions.all()] == [fine.id]
    assert settle(cluster, fine.id) != []


@pytest.mark.parametrize("mode", ["pod", "helmrelease"])
def test_a_ready_session_is_marked_ready_in_its_record(make_backend, cluster, mode):
    sessions = service_for(make_backend(mode))
    session = begin(sessions, request_for(sessions.backend))
    ready = wait_for(sessions, session.id, READY)
    (owner,) = of_session(cluster, RELEASES if mode == "helmrelease" else PODS, session.id)
    # Its objects say whose they are, and nothing of its record.
    assert not [k for k in owner["metadata"].get("annotations") or {} if k.startswith("ovas/")]
    assert owner["metadata"]["labels"][o.FORMAT] == o.WORKLOAD_FORMAT
    # From now on its start deadline no longer applies (a readiness blip is no failure).
    record, _ = record_of(cluster, session.id)
    assert record.marks == {Mark.READY: sessions.backend.now()}
    assert sessions.backend.observe(session.id).record.marks == {Mark.READY: sessions.now()}
    assert ready.ready


@pytest.mark.parametrize("mode", ["pod", "helmrelease"])
def test_one_of_two_replicas_marking_at_once_is_told_it_set_the_mark(make_backend, clock, mode):
    first, second = make_backend(mode), make_backend(mode)
    session = begin(service_for(first), request_for(first, SLOW))
    at = clock()
    assert first.mark(session.id, Mark.READY, at) is True
    assert second.mark(session.id, Mark.READY, at) is False
    assert second.observe(session.id).record.marks == {Mark.READY: at}
    assert second.mark(session.id, Mark.IDLE, None) is False  # not set: nothing to clear
    assert second.mark(session.id, Mark.IDLE, at) is True
    assert first.mark(session.id, Mark.IDLE, None) is True
    assert first.observe(session.id).record.marks == {Mark.READY: at}
    assert first.mark("not-a-session", Mark.READY, at) is False


def test_a_mark_whose_record_changed_meanwhile_is_read_again(make_backend, cluster, clock):
    """A replace carrying a stale resourceVersion is refused (409); the core reads the
    record again and marks it, keeping what the other writer wrote."""
    backend, other = make_backend(), make_backend()
    session = begin(service_for(backend), request_for(backend, SLOW))
    real_replace = backend.ledger.replace
    refused = []

    def replace_after_another(entry, data):
        if not refused:
            assert other.mark(session.id, Mark.IDLE, clock())  # right after this read
        written = real_replace(entry, data)
        refused.append(written is None)
        return written

    backend.ledger.replace = replace_after_another
    assert backend.mark(session.id, Mark.READY, clock()) is True
    assert refused == [True, False]
    assert record_of(cluster, session.id)[0].marks == {Mark.READY: clock(), Mark.IDLE: clock()}
