"""Fixtures for the Kubernetes backend: an emulated cluster per test (kmock's emulator with
the API server semantics of `support.kube_emulator`, and a fake kubelet, load balancer and
Flux from `support.kube_cluster`), and backends pointed at it, on a clock the test moves."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from support.kube_server import EmulatedCluster, catalog_documents

from backends.kubernetes import KubernetesBackend
from ovas.testing import FakeClock

NAMESPACE = "omni-streaming"


@pytest.fixture
def cluster() -> Iterator[EmulatedCluster]:
    with EmulatedCluster() as emulated:
        emulated.seed(NAMESPACE, catalog_documents())
        yield emulated


@pytest.fixture
def clock() -> FakeClock:
    """The backends' clock: frozen, so time passes for ovas only when a test says (the
    emulated cluster's own times, a pod's start or exit, are real)."""
    return FakeClock()


@pytest.fixture
def make_backend(cluster, clock) -> Iterator[Callable[..., KubernetesBackend]]:
    """`make_backend(mode="pod", **kw)`: a new backend instance (as another replica or a
    restarted process would be) on the emulated cluster and the test's clock; all are closed
    at the end."""
    made: list[KubernetesBackend] = []

    def make(mode: str = "pod", **kw) -> KubernetesBackend:
        kw.setdefault("namespace", NAMESPACE)
        kw.setdefault("now", clock)
        backend = KubernetesBackend(mode=mode, config_file=cluster.kubeconfig, **kw)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()
