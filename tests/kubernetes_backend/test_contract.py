"""The contract every backend passes, for both session modes, against the emulated cluster
(and against a real cluster when OVAS_TEST_KUBECONFIG names one)."""

from __future__ import annotations

import os

import pytest

from backends.kubernetes import KubernetesBackend
from ovas.testing import BackendContract, WarmPoolContract

pytestmark = pytest.mark.kubernetes


class TestPodMode(WarmPoolContract):
    mode = "pod"

    @pytest.fixture
    def backend(self, make_backend, clock):
        return make_backend(self.mode, now=clock)

    @pytest.fixture
    def peer(self, make_backend, clock):
        return make_backend(self.mode, now=clock)

    @pytest.fixture
    def ready_timeout(self):
        return 10.0


class TestHelmReleaseMode(TestPodMode):
    mode = "helmrelease"


REAL = os.environ.get("OVAS_TEST_KUBECONFIG")


# Collected only when a real cluster is named, so a normal run reports no skipped tests.
if REAL:

    class TestRealCluster(BackendContract):
        """Needs ovas's CRDs and the sample catalog applied (kubectl apply -k config/deploy) in
        OVAS_TEST_NAMESPACE (default omni-streaming), and the stand-in image on the nodes."""

        def make(self, clock) -> KubernetesBackend:
            return KubernetesBackend(
                namespace=os.environ.get("OVAS_TEST_NAMESPACE", "omni-streaming"),
                mode=os.environ.get("OVAS_TEST_SESSION_MODE", "pod"),
                public_host=os.environ.get("OVAS_TEST_PUBLIC_HOST") or None,
                config_file=REAL,
                now=clock,
            )

        @pytest.fixture
        def backend(self, clock):
            backend = self.make(clock)
            yield backend
            backend.close()

        @pytest.fixture
        def peer(self, clock):
            backend = self.make(clock)
            yield backend
            backend.close()

        @pytest.fixture
        def request_options(self):
            return {"app_id": "kit-standin", "profile_id": "standin"}

        @pytest.fixture
        def ready_timeout(self):
            return 180.0
