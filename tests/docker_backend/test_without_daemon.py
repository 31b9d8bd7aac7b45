"""ovas on the Docker backend starts without a daemon: the catalog answers, session routes and
/ready answer 503 saying the engine cannot be reached; where it is, only an admin reads."""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import pytest

from backends.docker import DockerBackend
from backends.docker.ledger import DockerLedger
from ovas import create_app
from ovas.errors import BackendUnavailable

REPO = Path(__file__).resolve().parents[2]
NOWHERE = "unix:///nonexistent/ovas-test/docker.sock"


def make_client(tmp_path, monkeypatch, **settings):
    monkeypatch.setenv("DOCKER_HOST", NOWHERE)
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    shutil.copy(REPO / "config/catalog/standin.yaml", catalog)
    settings = {
        "TESTING": True,
        "REAP_INTERVAL": 0,
        "BACKEND": "docker",
        "CATALOG_PATH": str(catalog),
        **settings,
    }
    app = create_app(settings)
    assert isinstance(app.extensions["ovas"].backend, DockerBackend)
    return app.test_client()


@pytest.fixture
def client(tmp_path, monkeypatch):
    return make_client(tmp_path, monkeypatch)


def test_ready_says_the_engine_cannot_be_reached_but_not_where(client, caplog):
    answer = client.get("/ready")
    assert answer.status_code == 503
    assert "The Docker engine cannot be reached" in answer.get_json()["detail"]
    assert NOWHERE not in answer.get_data(as_text=True)
    assert NOWHERE in caplog.text  # the operator reads it in the log


def test_only_an_admin_reads_where_the_engine_is(tmp_path, monkeypatch):
    keys = tmp_path / "keys.yaml"
    entries = {"admin-key": "admin", "streamer-key": "streamer"}
    keys.write_text(
        "".join(
            f"- {{sha256: {hashlib.sha256(k.encode()).hexdigest()}, user: {r}, roles: [{r}]}}\n"
            for k, r in entries.items()
        )
    )
    client = make_client(tmp_path, monkeypatch, AUTH="apikey", APIKEYS_FILE=str(keys))
    as_admin = client.get("/streaming/stream", headers={"X-API-Key": "admin-key"})
    assert as_admin.status_code == 503
    assert NOWHERE in as_admin.get_json()["detail"]
    as_streamer = client.get("/streaming/stream", headers={"X-API-Key": "streamer-key"})
    assert as_streamer.status_code == 503
    assert NOWHERE not in as_streamer.get_data(as_text=True)


def test_session_routes_answer_503_and_the_catalog_still_works(client):
    assert client.get("/cfg/apps/kit-standin").status_code == 200
    listed = client.get("/streaming/stream")
    assert listed.status_code == 503
    assert listed.get_json()["detail"].startswith("The Docker engine cannot be reached")
    assert NOWHERE not in listed.get_data(as_text=True)
    assert listed.headers["Retry-After"]
    body = {"id": "kit-standin", "profile": "standin", "arguments": {}}
    assert client.post("/streaming/stream", json=body).status_code == 503
    # The catalog is checked first: an unknown app is 404 even while the engine is down.
    unknown = {"id": "no-such-app", "profile": "standin", "arguments": {}}
    assert client.post("/streaming/stream", json=unknown).status_code == 404
    session = "0b0c7d1e-5d0a-4c57-9a4e-6a8f3f1b2c3d"
    assert client.get(f"/streaming/stream/{session}").status_code == 503


def test_an_ssh_engine_without_paramiko_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "paramiko", None)  # as where it is not installed
    client = make_client(tmp_path, monkeypatch)
    monkeypatch.setenv("DOCKER_HOST", "ssh://ovas@engine.example:22")
    for path in ("/ready", "/streaming/stream"):
        answer = client.get(path)
        assert answer.status_code == 503, path
        detail = answer.get_json()["detail"]
        assert "paramiko" in detail and "ovas[docker]" in detail, detail
        assert "is the Docker daemon running" not in detail
    assert client.get("/cfg/apps").status_code == 200


def test_the_ledger_is_built_without_a_daemon_and_says_when_it_cannot_reach_one():
    ledger = DockerLedger(NOWHERE)  # builds nothing yet: workers build theirs before a daemon
    for call in (lambda: ledger.list(), lambda: ledger.create("slot-0", {"holder": "s"})):
        with pytest.raises(BackendUnavailable):
            call()
    ledger.close()
