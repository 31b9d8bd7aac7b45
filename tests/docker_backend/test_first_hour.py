"""What a new user meets first, on a real Docker daemon and a host without a GPU: the stand-in
builds quietly, the README's first session start works, a GPU profile is refused as no retry,
and a failed session's logs stay readable while it is kept."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import requests
from support import dockerd
from support.log_lines import ODD

from backends.docker import DockerBackend
from backends.docker import containers as c
from ovas import create_app
from ovas.catalog_files import FileCatalog
from ovas.cli import ovas_cli
from ovas.models import SessionState
from ovas.testing import service_for, wait_for
from ovas.testing.requests import STANDIN_EXIT_CODE

pytestmark = pytest.mark.docker
REPO = Path(__file__).resolve().parents[2]


def test_the_standin_builds_printing_only_its_result(docker_daemon):
    built = dockerd.build_standin(docker_daemon)
    assert built.stderr == ""
    assert built.stdout == "build.sh: built ovas/kit-standin:1.0.0 and ovas/kit-standin:latest\n"


def first_post_body() -> dict:
    """The body of the README's first `POST /streaming/stream` example."""
    readme = (REPO / "README.md").read_text()
    match = re.search(r"-XPOST \S+/streaming/stream .*?-d '(\{.*?\})'", readme, re.S)
    assert match, "the README has no POST example"
    return json.loads(match.group(1))


@pytest.fixture
def sample_server(docker_daemon, serve):
    """ovas on the test daemon with the sample catalog, on a host without a GPU."""
    backend = DockerBackend(
        FileCatalog(REPO / "config/catalog"),
        docker_host=docker_daemon.url,
        port_range=dockerd.free_ports(10),
        gpus="none",
    )
    yield serve(create_app({"TESTING": True, "REAP_INTERVAL": 0}, backend=backend))
    backend.close()


def test_the_readmes_first_start_works_without_a_gpu(sample_server):
    http = requests.Session()
    started = http.post(f"{sample_server.url}/streaming/stream", json=first_post_body())
    assert started.status_code == 202, started.text
    stream = f"{sample_server.url}/streaming/stream/{started.json()['id']}"
    deadline = time.monotonic() + 30
    while (answer := http.get(stream)).status_code != 200:
        assert answer.status_code == 202 and time.monotonic() < deadline, answer.text
        time.sleep(0.1)
    assert http.delete(stream).status_code == 204


def test_a_gpu_profile_without_a_gpu_is_refused_naming_the_standin(sample_server):
    body = {"id": "usd-viewer", "profile": "default"}
    refused = requests.post(f"{sample_server.url}/streaming/stream", json=body)
    assert refused.status_code == 422, refused.text
    assert "Retry-After" not in refused.headers
    (problem,) = refused.json()["detail"]
    assert problem["loc"] == ["body", "profile"]
    assert "asks for 1 GPU, and this host has none" in problem["msg"]
    assert "OVAS_DOCKER_GPUS=none" in problem["msg"] and '"kit-standin"' in problem["msg"]
    listed = requests.get(f"{sample_server.url}/streaming/stream").json()
    assert listed["count"] == 0  # nothing was left behind


def test_a_failed_sessions_logs_are_served_while_it_is_kept(
    backend, standin_request, serve, engine
):
    sessions = service_for(backend, retention=600)
    session = backend.start(standin_request(env={STANDIN_EXIT_CODE: "3"}))
    failed = wait_for(sessions, session.record.id, SessionState.FAILED)
    server = serve(create_app({"TESTING": True, "REAP_INTERVAL": 0}, backend=backend))
    logs = f"{server.url}/streaming/stream/{failed.id}/logs"
    lines = requests.get(logs).json()["lines"]
    assert any("exiting with code 3 as asked" in line for line in lines)
    assert any("USD_PATH=" in line for line in lines)

    # With its stopped container gone too, the lines kept with its outcome are served.
    kit = engine.containers(all=True, filters={"label": [f"{c.SESSION}={failed.id}"]})
    for container in kit:
        if container["Labels"].get(c.RECORD) == c.CONTAINER:
            engine.remove_container(container["Id"], force=True)
    assert requests.get(logs).json()["lines"] == lines
    assert requests.get(f"{logs}?tail=1").json()["lines"] == lines[-1:]


def test_a_log_line_is_cut_at_newlines_only(backend, standin_request, serve, engine):
    sessions = service_for(backend, retention=600)
    session = backend.start(standin_request(env={"USD_PATH": ODD, STANDIN_EXIT_CODE: "3"}))
    failed = wait_for(sessions, session.record.id, SessionState.FAILED)
    written = [
        f"stand-in Kit app: USD_PATH={ODD}",
        "stand-in Kit app: exiting with code 3 as asked",
    ]
    app = create_app({"TESTING": True, "REAP_INTERVAL": 0}, backend=backend)
    logs = f"{serve(app).url}/streaming/stream/{failed.id}/logs"
    # The two lines go to stdout and stderr, which Docker may give in either order.
    assert sorted(requests.get(f"{logs}?tail=2").json()["lines"]) == sorted(written)
    (last,) = requests.get(f"{logs}?tail=1").json()["lines"]
    assert last in written
    shown = app.test_cli_runner().invoke(ovas_cli, ["sessions", "logs", failed.id, "--tail", "2"])
    assert sorted(shown.output.split("\n")[:-1]) == sorted(written)

    # The lines kept with its outcome, once its container is gone, are the same.
    kit = engine.containers(all=True, filters={"label": [f"{c.SESSION}={failed.id}"]})
    for container in kit:
        if container["Labels"].get(c.RECORD) == c.CONTAINER:
            engine.remove_container(container["Id"], force=True)
    assert sorted(requests.get(f"{logs}?tail=2").json()["lines"]) == sorted(written)


def test_startup_names_the_engine_port_range_and_gpus(docker_daemon, new_backend):
    backend = new_backend(gpus="none", port_range="32100-32199")
    app = create_app({"TESTING": True, "REAP_INTERVAL": 0}, backend=backend)
    facts = app.extensions["ovas"].describe(insider=True)
    assert facts["engine"] == docker_daemon.url
    assert facts["port_range"] == "32100-32199"
    assert facts["gpus"] == [] and facts["gpu_source"] == "OVAS_DOCKER_GPUS=none"
    assert app.extensions["ovas"].describe(insider=False)["gpus"] == 0
    # An engine address never carries its credentials out.
    other = DockerBackend(backend.catalog, docker_host="ssh://ops:secret@gpu-box:22")
    assert other.describe(True)["engine"] == "ssh://gpu-box:22"
