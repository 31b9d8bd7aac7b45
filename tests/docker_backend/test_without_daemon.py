"""ovas on the Docker backend starts without a daemon: the catalog answers, session routes and
/ready answer 503 naming the engine that cannot be reached."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from backends.docker import DockerBackend
from ovas import create_app

REPO = Path(__file__).resolve().parents[2]
NOWHERE = "unix:///nonexistent/ovas-test/docker.sock"


@pytest.fixture
def client(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", NOWHERE)
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    shutil.copy(REPO / "config/catalog/standin.yaml", catalog)
    settings = {
        "TESTING": True,
        "REAP_INTERVAL": 0,
        "BACKEND": "docker",
        "CATALOG_PATH": str(catalog),
    }
    app = create_app(settings)
    assert isinstance(app.extensions["ovas"].backend, DockerBackend)
    return app.test_client()


def test_ready_names_the_unreachable_engine(client):
    answer = client.get("/ready")
    assert answer.status_code == 503
    assert NOWHERE in answer.get_json()["detail"]


def test_session_routes_answer_503_and_the_catalog_still_works(client):
    assert client.get("/cfg/apps/kit-standin").status_code == 200
    listed = client.get("/streaming/stream")
    assert listed.status_code == 503
    assert NOWHERE in listed.get_json()["detail"]
    assert listed.headers["Retry-After"]
    body = {"id": "kit-standin", "profile": "standin", "arguments": {}}
    assert client.post("/streaming/stream", json=body).status_code == 503
    # The catalog is checked first: an unknown app is 404 even while the engine is down.
    unknown = {"id": "no-such-app", "profile": "standin", "arguments": {}}
    assert client.post("/streaming/stream", json=unknown).status_code == 404
    session = "0b0c7d1e-5d0a-4c57-9a4e-6a8f3f1b2c3d"
    assert client.get(f"/streaming/stream/{session}").status_code == 503
