"""The reaper runs from the moment a serving process starts, not from its first request: on
the real daemon, a fresh gunicorn, `ovas serve` or `flask run` that nobody calls fills its
warm pool, and a restarted ovas ends a session whose connect clock ran out meanwhile."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import docker
import pytest
import yaml
from support.warm_pools import POOL

from backends.docker import containers as c
from ovas.lifecycle import Mark

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server_env(docker_daemon, tmp_path) -> dict[str, str]:
    """The environment of an ovas server on the test daemon, with the stand-in catalog and a
    warm pool of one."""
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    shutil.copy(REPO / "config/catalog/standin.yaml", catalog)
    pool = {**POOL, "spec": {**POOL["spec"], "size": 1}}
    (catalog / "pools.yaml").write_text(yaml.safe_dump(pool))
    from docker_backend.conftest import TEST_PORTS

    return {
        "PATH": f"{BIN}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        "DOCKER_HOST": docker_daemon.url,
        "OVAS_BACKEND": "docker",
        "OVAS_CATALOG_PATH": str(catalog),
        "OVAS_DOCKER_PORT_RANGE": TEST_PORTS,
        "OVAS_DOCKER_GPUS": "none",
        "OVAS_REAP_INTERVAL": "1",
    }


@pytest.fixture
def leftovers(engine):
    """Removes every session container made during the test."""
    before = {s["Id"] for s in engine.containers(all=True, filters={"label": c.SESSION})}
    yield
    for summary in engine.containers(all=True, filters={"label": c.SESSION}):
        if summary["Id"] not in before:
            with contextlib.suppress(docker.errors.NotFound):
                engine.remove_container(summary["Id"], force=True)


@contextlib.contextmanager
def running(command: list[str], env: dict[str, str], cwd: Path):
    """A server process, ended (and its children) when the block ends."""
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _pooled_running(engine) -> list[dict]:
    return [
        s
        for s in engine.containers(filters={"label": [c.POOL, f"{c.RECORD}={c.CONTAINER}"]})
        if s["State"] == "running"
    ]


def _wait_for(predicate, process: subprocess.Popen, timeout: float = 90):
    """Polls the engine (never ovas) until `predicate()` holds, within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        if process.poll() is not None:
            pytest.fail(f"the server exited: {process.stderr.read()[-2000:]}")
        assert time.monotonic() < deadline, "not within the bound"
        time.sleep(0.5)
    return found


SERVERS = {
    "gunicorn": lambda port: [
        str(BIN / "gunicorn"),
        "-c",
        str(REPO / "config/gunicorn.conf.py"),
        "-w",
        "2",
        "-b",
        f"127.0.0.1:{port}",
    ],
    "ovas serve": lambda port: [str(BIN / "ovas"), "serve", "--port", str(port)],
    "flask run": lambda port: [
        str(BIN / "flask"),
        "--app",
        "ovas:create_app",
        "run",
        "-p",
        str(port),
    ],
}


@pytest.mark.parametrize("server", list(SERVERS))
def test_a_fresh_server_nobody_calls_fills_its_warm_pool(
    server, server_env, engine, leftovers, tmp_path
):
    with running(SERVERS[server](_free_port()), server_env, REPO) as process:
        (summary,) = _wait_for(lambda: _pooled_running(engine), process)
    assert summary["Labels"][c.POOL] == POOL["metadata"]["name"]


def test_a_restarted_ovas_nobody_calls_ends_a_session_past_its_connect_clock(
    server_env, new_backend, standin_request, engine, leftovers
):
    server_env["OVAS_CATALOG_PATH"] = str(REPO / "config/catalog")  # no pool: that session
    backend = new_backend()
    # Started and ready an hour ago, as if ovas had been down since: its connect clock
    # (300 s from readiness) ran out meanwhile.
    started = backend.now() - timedelta(hours=1)
    session_id = backend.start(standin_request(now=started, start_timeout=7200)).record.id
    deadline = time.monotonic() + 60
    while not any(
        s["State"] == "running"
        for s in engine.containers(filters={"name": c.container_name(session_id)})
    ):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert backend.mark(session_id, Mark.READY, started + timedelta(seconds=10))
    outcome = c.container_name(session_id, c.OUTCOME)
    port = _free_port()
    with running(SERVERS["ovas serve"](port), server_env, REPO) as process:
        (record,) = _wait_for(
            lambda: engine.containers(all=True, filters={"name": outcome}), process
        )
    assert record["Labels"][c.REASON] == "connect_timeout"
