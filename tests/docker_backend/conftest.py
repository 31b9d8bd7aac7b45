"""Fixtures for the Docker backend's tests: a real Docker daemon with the stand-in Kit image,
the stand-in catalog, and backends on that daemon that clean up after themselves.

The daemon is the one DOCKER_HOST (or the default socket) names, else a private dockerd
started as root for the session. Without either the daemon tests are skipped, saying why;
under CI=true they fail instead, since CI must run them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import docker
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support import dockerd

from backends.docker import DockerBackend
from backends.docker import containers as c
from backends.docker.ledger import NAME as LEDGER
from ovas.catalog_files import FileCatalog
from ovas.idempotency import PREFIX as KEYS
from ovas.models import SessionRequest
from ovas.queueing import LISTED as LINE_RECORDS
from ovas.testing import make_request

REPO = Path(__file__).resolve().parents[2]


TEST_PORTS = dockerd.free_ports(100)


def _no_daemon(reason: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI needs a Docker daemon: {reason}", pytrace=False)
    pytest.skip(f"no Docker daemon: {reason}")


@pytest.fixture(scope="session")
def docker_daemon() -> Iterator[dockerd.Daemon]:
    """A Docker daemon holding the stand-in image, for the whole test session."""
    try:
        daemon = dockerd.find_or_start("ovastest")
    except dockerd.NoDaemon as exc:
        _no_daemon(str(exc))
    try:
        dockerd.build_standin(daemon)
    except dockerd.NoDaemon as exc:
        daemon.close()
        _no_daemon(str(exc))
    yield daemon
    daemon.close()


@pytest.fixture
def second_daemon() -> Iterator[Callable[..., dockerd.Daemon]]:
    """`second_daemon(*options)`: a private dockerd of the test's own (`options` are dockerd's,
    such as `--live-restore`), holding the stand-in image, for a test that stops and starts
    it; the session's daemon is left alone. Removed at the end. The test is skipped when no
    private daemon can be started here."""
    made: list[dockerd.Daemon] = []

    def start(*options: str) -> dockerd.Daemon:
        try:
            daemon = dockerd.start_private("ovasout", options=list(options))
            made.append(daemon)
            dockerd.build_standin(daemon)
        except dockerd.NoDaemon as exc:
            pytest.skip(f"a second, private Docker daemon is needed: {exc}")
        return daemon

    yield start
    for daemon in made:
        daemon.close()


@pytest.fixture(scope="session")
def engine(docker_daemon) -> Iterator[docker.APIClient]:
    """A plain SDK client on the test daemon, for looking behind the backend's back."""
    client = docker.APIClient(base_url=docker_daemon.url, version="auto")
    yield client
    client.close()


@pytest.fixture(scope="session")
def catalog_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("catalog")
    shutil.copy(REPO / "config/catalog/standin.yaml", folder)
    return folder


@pytest.fixture(scope="session")
def catalog(catalog_dir) -> FileCatalog:
    return FileCatalog(catalog_dir)


@pytest.fixture
def new_backend(docker_daemon, catalog, engine) -> Iterator[Callable[..., DockerBackend]]:
    """`new_backend(**options)`: a DockerBackend on the test daemon, as a freshly started ovas
    process would build it. At the end, every session made during the test is removed, with
    the records the core kept of it in the ledger (its record, its places)."""
    before = _session_containers(engine)
    records_before = _ledger_containers(engine)
    made: list[DockerBackend] = []

    def build(**options) -> DockerBackend:
        settings = {
            "docker_host": docker_daemon.url,
            "port_range": TEST_PORTS,
            "gpus": "none",
            **options,
        }
        backend = DockerBackend(catalog, **settings)
        made.append(backend)
        return backend

    yield build
    for backend in made:
        backend.close()  # its background starts end first, so none recreates a record
    if made:
        # The line of queued starts and the idempotency keys are shared by every process on
        # the daemon: a test's would put the next test's starts behind them.
        ledger = made[0].ledger
        for entry in [*ledger.list(LINE_RECORDS), *ledger.list(KEYS)]:
            ledger.delete(entry.name)
    _remove_session_containers(engine, but=before)
    # The sessions' records and the places they held, as a test's would hold the next's.
    for container_id in _ledger_containers(engine, SESSION_RECORDS) - records_before:
        with contextlib.suppress(docker.errors.APIError):
            engine.remove_container(container_id, force=True)


@pytest.fixture
def leftovers(engine) -> Iterator[None]:
    """Removes every session container made during the test (by a server process of its own,
    say, which no `new_backend` cleans up after), and the records the core kept of them."""
    before = _session_containers(engine)
    records_before = _ledger_containers(engine)
    yield
    _remove_session_containers(engine, but=before)
    for container_id in _ledger_containers(engine) - records_before:
        with contextlib.suppress(docker.errors.APIError):
            engine.remove_container(container_id, force=True)


# The ledger records the core keeps of sessions: theirs, their places, their removals.
SESSION_RECORDS = ("session.", "slot.", "removal.")


def _ledger_containers(engine, prefixes=SESSION_RECORDS) -> set[str]:
    """The IDs of the ledger's containers holding records named `prefixes`..."""
    found = engine.containers(all=True, filters={"label": LEDGER})
    return {s["Id"] for s in found if s["Labels"].get(LEDGER, "").startswith(tuple(prefixes))}


def _session_containers(engine) -> set[str]:
    """The IDs of the containers on the daemon carrying ovas's session label."""
    return {s["Id"] for s in engine.containers(all=True, filters={"label": c.SESSION})}


def _remove_session_containers(engine, but: set[str]) -> None:
    """Removes (forced) the containers carrying ovas's session label whose IDs are not in `but`."""
    for container_id in _session_containers(engine) - but:
        with contextlib.suppress(docker.errors.APIError):
            engine.remove_container(container_id, force=True)


@pytest.fixture
def backend(new_backend) -> DockerBackend:
    return new_backend()


@pytest.fixture
def standin_request(catalog) -> Callable[..., SessionRequest]:
    """`standin_request(env=..., image=..., pull_policy=..., gpus=..., **make_request_kw)`."""

    def build(*, image=None, pull_policy=None, gpus=None, **kw) -> SessionRequest:
        request = make_request(catalog, app_id="kit-standin", profile_id="standin", **kw)
        changes = {
            k: v
            for k, v in (("image", image), ("pull_policy", pull_policy), ("gpus", gpus))
            if v is not None
        }
        return replace(request, kit=replace(request.kit, **changes)) if changes else request

    return build


@pytest.fixture
def ours(engine) -> Callable[[str | None], list[dict]]:
    """`ours(session_id=None)`: the containers on the daemon carrying ovas's labels (of one
    session, or all)."""

    def find(session_id: str | None = None) -> list[dict]:
        label = f"{c.SESSION}={session_id}" if session_id else c.SESSION
        return engine.containers(all=True, filters={"label": label})

    return find
