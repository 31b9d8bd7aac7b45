"""The Docker backend passes the contract every backend passes, on a real Docker daemon with
the stand-in Kit image."""

from __future__ import annotations

import pytest

from ovas.testing import WarmPoolContract

pytestmark = pytest.mark.docker


class TestDockerBackend(WarmPoolContract):
    @pytest.fixture
    def backend(self, new_backend, clock):
        return new_backend(now=clock)

    @pytest.fixture
    def peer(self, new_backend, clock):
        return new_backend(now=clock)

    @pytest.fixture
    def request_options(self) -> dict:
        return {"app_id": "kit-standin", "profile_id": "standin"}

    @pytest.fixture
    def ready_timeout(self) -> float:
        return 30.0
