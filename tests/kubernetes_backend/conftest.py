"""Fixtures for the Kubernetes backend: an emulated cluster per test (kmock's emulator with
the API server semantics of `support.kube_emulator`, and a fake kubelet, load balancer and
Flux from `support.kube_cluster`), and backends pointed at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from support.kube_server import EmulatedCluster, catalog_documents

from backends.kubernetes import KubernetesBackend

NAMESPACE = "omni-streaming"


@pytest.fixture
def cluster() -> Iterator[EmulatedCluster]:
    with EmulatedCluster() as emulated:
        emulated.seed(NAMESPACE, catalog_documents())
        yield emulated


@pytest.fixture
def make_backend(cluster) -> Iterator[Callable[..., KubernetesBackend]]:
    """`make_backend(mode="pod", **kw)`: a new backend instance (as another replica or a
    restarted process would be) on the emulated cluster; all are closed at the end."""
    made: list[KubernetesBackend] = []

    def make(mode: str = "pod", **kw) -> KubernetesBackend:
        kw.setdefault("namespace", NAMESPACE)
        backend = KubernetesBackend(mode=mode, config_file=cluster.kubeconfig, **kw)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()
