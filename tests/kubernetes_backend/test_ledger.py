"""The ledger as ConfigMaps: `LedgerContract` against the emulated API server, raced by four
processes over real HTTP; what an operator sees of it; and the session objects of today's
backend and the ledger's records never touching each other."""

from __future__ import annotations

import functools

import pytest
from support.kube_requests import wait_for
from support.kube_server import free_port, write_kubeconfig

from backends.kubernetes import objects as o
from backends.kubernetes.ledger import KubernetesLedger
from kubernetes_backend.conftest import NAMESPACE
from kubernetes_backend.steps import CONFIG_MAPS, request_for
from kubernetes_backend.steps import start as begin
from ovas.errors import BackendUnavailable
from ovas.ledger import LedgerError
from ovas.models import SessionState
from ovas.testing import LedgerContract, service_for

pytestmark = pytest.mark.kubernetes
EXITS = {"env": [{"name": "STANDIN_EXIT_CODE", "value": "1"}]}


class TestKubernetesLedger(LedgerContract):
    @pytest.fixture
    def ledger(self, cluster):
        ledger = KubernetesLedger(NAMESPACE, config_file=cluster.kubeconfig)
        yield ledger
        ledger.close()

    @pytest.fixture
    def ledger_factory(self, cluster):
        return functools.partial(KubernetesLedger, NAMESPACE, config_file=cluster.kubeconfig)

    @pytest.fixture
    def engine_calls(self, cluster):
        """Requests the API server answered, from its own log."""
        return cluster.calls


def test_a_record_is_a_labelled_configmap_named_after_it(cluster):
    ledger = KubernetesLedger(NAMESPACE, config_file=cluster.kubeconfig)
    made = ledger.create("slot.global-0", {"session": "s1"})
    (config_map,) = cluster.objects(CONFIG_MAPS, NAMESPACE)
    meta = config_map["metadata"]
    assert meta["name"] == "ovas-ledger-slot.global-0"
    assert meta["labels"] == {
        o.MANAGED_BY: "ovas",
        o.FORMAT: "1",
        "ovas/ledger": "record",
    }
    assert config_map["data"] == {"session": "s1"}
    assert made.version == meta["resourceVersion"]
    assert made.created == o.parse_time(meta["creationTimestamp"])
    longest = "x" * 200  # the longest name a ledger takes fits a ConfigMap's name
    assert ledger.create(longest, {}) is not None and ledger.get(longest) is not None


def test_an_unreachable_or_refusing_api_server_makes_the_ledger_unavailable(cluster, tmp_path):
    away = write_kubeconfig(tmp_path / "config", f"http://127.0.0.1:{free_port()}")
    ledger = KubernetesLedger(NAMESPACE, config_file=str(away))  # contacts nothing yet
    for call in (lambda: ledger.create("a", {}), lambda: ledger.list(), lambda: ledger.get("a")):
        with pytest.raises(BackendUnavailable, match="cannot be reached"):
            call()
    refused = KubernetesLedger(NAMESPACE, config_file=cluster.kubeconfig)
    cluster.emulator.forbidden.add(("create", "configmaps"))
    with pytest.raises(BackendUnavailable, match="RBAC"):
        refused.create("a", {"k": "v"})


def test_a_record_the_cluster_refuses_is_a_ledger_error(cluster):
    cluster.emulator.webhooks["no-records"] = lambda plural, obj: (
        "records are not welcome" if plural == "configmaps" else None
    )
    ledger = KubernetesLedger(NAMESPACE, config_file=cluster.kubeconfig)
    with pytest.raises(LedgerError, match="records are not welcome"):
        ledger.create("a", {"k": "v"})
    assert ledger.list() == []


def test_sessions_leave_other_ledger_records_alone(make_backend, cluster, clock):
    """Sessions keep their records and places in the ledger; collecting, reaping, stopping
    and listing them leave every other record alone, long past the grace: names the core
    does not use, and a place and a session record of a format it cannot read."""
    backend = make_backend()
    ledger = backend.ledger
    others = {
        "outcome.s1": {"session": "s1"},
        "ovas-1": {"session": "s1"},
        "slot.all.9": {"kind": "slot", "format": "2", "session": "s1"},
        "session.newer": {"kind": "session", "format": "2", "id": "newer"},
    }
    for name, data in others.items():
        ledger.create(name, data)
    sessions = service_for(backend, retention=60)
    kept = begin(sessions, request_for(backend, capacity=3, user_capacity=2))
    crash = begin(sessions, request_for(backend, EXITS, capacity=3))
    wait_for(sessions, kept.id, {SessionState.READY})
    wait_for(sessions, crash.id, {SessionState.FAILED})
    mine = {f"session.{kept.id}", f"session.{crash.id}"}
    assert mine | set(others) <= {e.name for e in ledger.list()}

    clock.advance(3600)
    backend.collect(clock())
    sessions.reap()
    sessions.stop(kept.id)
    assert [s.id for s in sessions.all()] == []
    assert sorted(e.name for e in ledger.list()) == sorted(others)
    left = {c["metadata"]["name"] for c in cluster.objects(CONFIG_MAPS, NAMESPACE)}
    assert left == {f"ovas-ledger-{name}" for name in others}
