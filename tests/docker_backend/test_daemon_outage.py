"""The Docker daemon going away while ovas serves: session routes and /ready answer 503
naming the engine, the catalog keeps answering, and all recovers when the daemon is back,
without restarting ovas. Runs on a second private daemon (live-restore, so its containers
outlive it), leaving the main one alone."""

from __future__ import annotations

import time

import pytest
import requests
from support import dockerd

from backends.docker import DockerBackend
from ovas import create_app
from ovas.errors import BackendUnavailable

pytestmark = pytest.mark.docker


@pytest.fixture
def disposable_daemon(second_daemon):
    return second_daemon("--live-restore")


def test_the_daemon_going_away_answers_503_and_ovas_recovers(disposable_daemon, catalog, serve):
    backend = DockerBackend(
        catalog,
        docker_host=disposable_daemon.url,
        port_range=dockerd.free_ports(20),
        gpus="none",
    )
    server = serve(create_app({"TESTING": True, "REAP_INTERVAL": 0}, backend=backend))
    http = requests.Session()
    body = {"id": "kit-standin", "profile": "standin", "arguments": {}}
    session_id = http.post(f"{server.url}/streaming/stream", json=body).json()["id"]
    stream = f"{server.url}/streaming/stream/{session_id}"
    deadline = time.monotonic() + 30
    while http.get(stream).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)

    disposable_daemon.stop()
    down = http.get(stream)
    assert down.status_code == 503
    assert down.json()["detail"].startswith("The Docker engine cannot be reached")
    assert disposable_daemon.url not in down.text  # anonymous callers are not told where
    assert http.get(f"{server.url}/streaming/stream").status_code == 503
    assert http.post(f"{server.url}/streaming/stream", json=body).status_code == 503
    assert http.get(f"{server.url}/ready").status_code == 503
    assert http.get(f"{server.url}/cfg/apps/kit-standin").status_code == 200
    with pytest.raises(BackendUnavailable):
        backend.observe_all()

    disposable_daemon.start()
    assert http.get(f"{server.url}/ready").status_code == 200
    back = http.get(stream)
    assert back.status_code == 200, back.text  # the session outlived the daemon's restart
    assert http.delete(stream).status_code == 204
    assert http.get(stream).status_code == 404
