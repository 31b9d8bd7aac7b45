"""Fixtures for the Kubernetes backend: an emulated cluster per test (kmock's emulator with
the API server semantics of `support.kube_emulator`, and a fake kubelet, load balancer and
Flux from `support.kube_cluster`), and backends pointed at it, on a clock the test moves;
Helm (from config/tools/helm.sh) rendering the chart."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator

import pytest
import yaml
from support.kube_server import EmulatedCluster, catalog_documents

from backends.kubernetes import KubernetesBackend
from kubernetes_backend.chart import CHART, ROOT
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


@pytest.fixture(scope="session")
def helm() -> str:
    """The path of Helm; a test needing it fails under CI=true when it cannot be had (as
    the Docker tests do without a daemon), else is skipped."""
    fetched = subprocess.run(
        ["bash", str(ROOT / "config" / "tools" / "helm.sh")], capture_output=True, text=True
    )
    if fetched.returncode != 0:
        reason = fetched.stderr.strip()
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI needs Helm: {reason}", pytrace=False)
        pytest.skip(f"no Helm: {reason}")
    return fetched.stdout.strip()


@pytest.fixture
def render(helm, tmp_path):
    """`render(values, *flags)`: the chart's objects as `helm template` renders them for a
    release `ovas` in omni-streaming with the values file `values`; `check=False` returns the
    finished process instead (a refusal)."""

    def run(values: dict | None = None, *flags: str, check: bool = True):
        file = tmp_path / f"values-{len(list(tmp_path.iterdir()))}.yaml"
        file.write_text(yaml.safe_dump(values or {}))
        command = [helm, "template", "ovas", str(CHART), "-n", NAMESPACE, "-f", str(file)]
        done = subprocess.run([*command, *flags], capture_output=True, text=True, timeout=60)
        if not check:
            return done
        assert done.returncode == 0, done.stderr
        return [d for d in yaml.safe_load_all(done.stdout) if d]

    return run
