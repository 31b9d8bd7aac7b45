"""The reaper runs from the moment a serving process starts, not from its first request: on
the real daemon, a fresh gunicorn, `ovas serve` or `flask run` that nobody calls fills its
warm pool, and a restarted ovas ends a session whose connect clock ran out meanwhile."""

from __future__ import annotations

import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from support import dockerd, ovas_process
from support.ovas_process import BIN, REPO, free_port
from support.warm_pools import POOL

from backends.docker import containers as c
from backends.docker.ledger import DockerLedger
from ovas.lifecycle import Mark, Record
from ovas.models import Reason
from ovas.session_records import SESSION_RECORD

pytestmark = pytest.mark.docker


@pytest.fixture
def server_env(docker_daemon, tmp_path) -> dict[str, str]:
    """The environment of an ovas server on the test daemon, with the stand-in catalog and a
    warm pool of one."""
    catalog = ovas_process.standin_catalog(tmp_path / "catalog")
    pool = {**POOL, "spec": {**POOL["spec"], "size": 1}}
    (catalog / "pools.yaml").write_text(yaml.safe_dump(pool))
    from docker_backend.conftest import TEST_PORTS

    return ovas_process.docker_env(
        docker_daemon.url, catalog, TEST_PORTS, home=tmp_path, OVAS_REAP_INTERVAL="1"
    )


@pytest.fixture
def ledger(docker_daemon):
    """The core's ledger on the test daemon, to read the sessions' records behind ovas."""
    found = DockerLedger(docker_daemon.url)
    yield found
    found.close()


def _records(ledger) -> list[Record]:
    return [SESSION_RECORD.decode(e)[0] for e in ledger.list("session.")]


def _pooled_running(engine, ledger) -> list[Record]:
    pooled = {r.id: r for r in _records(ledger) if r.pooled and r.outcome is None}
    running = engine.containers(filters={"label": f"{c.RECORD}={c.CONTAINER}"})
    return [pooled[s["Labels"][c.SESSION]] for s in running if s["Labels"][c.SESSION] in pooled]


def _wait_for(predicate, process: subprocess.Popen, log: Path, timeout: float = 90):
    """Polls the engine (never ovas) until `predicate()` holds, within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        if process.poll() is not None:
            pytest.fail(f"the server exited: {ovas_process.tail(log)}")
        assert time.monotonic() < deadline, "not within the bound"
        time.sleep(0.5)
    return found


SERVERS = {
    "gunicorn": lambda port: ovas_process.gunicorn(port, workers=2),
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
    server, server_env, engine, ledger, leftovers, tmp_path
):
    log = tmp_path / "server.log"
    with ovas_process.serving(SERVERS[server](free_port()), server_env, log) as process:
        (record,) = _wait_for(lambda: _pooled_running(engine, ledger), process, log)
    assert record.pool == POOL["metadata"]["name"]


def test_a_restarted_ovas_nobody_calls_ends_a_session_past_its_connect_clock(
    server_env, new_backend, standin_request, engine, ledger, leftovers, tmp_path
):
    server_env["OVAS_CATALOG_PATH"] = str(REPO / "config/catalog")  # no pool: that session
    backend = new_backend()
    # Started and ready an hour ago, as if ovas had been down since: its connect clock
    # (300 s from readiness) ran out meanwhile.
    started = backend.now() - timedelta(hours=1)
    session_id = backend.start(standin_request(now=started, start_timeout=7200)).record.id
    dockerd.wait_running(engine, c.container_name(session_id))
    assert backend.mark(session_id, Mark.READY, started + timedelta(seconds=10))
    log = tmp_path / "server.log"

    def ended() -> list[Record]:
        return [r for r in _records(ledger) if r.id == session_id and r.outcome is not None]

    with ovas_process.serving(SERVERS["ovas serve"](free_port()), server_env, log) as process:
        (record,) = _wait_for(ended, process, log)
    assert record.outcome.reason is Reason.CONNECT_TIMEOUT
