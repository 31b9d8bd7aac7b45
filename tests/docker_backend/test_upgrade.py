"""An upgrade keeps every session: sessions started by an earlier release (each of
`RELEASES`, run from its own source in a process of its own) on the real Docker daemon are
read by this release as that release left them: ready, starting, ended and failed (their
reason and logs), a warm pool's unclaimed session and one claimed by a user keep their
state, routes, clocks and owner; no container of theirs is removed or replaced, by a read or
by a reaper pass; and a start next to them is admitted counting what they hold, capacity
slots and the host ports they publish. Those releases kept a session's records on its own
containers; this one records each in the core's ledger when it first reads it, with its
places.

Keep a test like this one for every later change of what ovas writes on the engine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import docker
import pytest
import yaml
from support import dockerd
from support.warm_pools import POOL

from backends.docker import containers as c
from backends.docker.ledger import NAME as LEDGER
from ovas.catalog_files import FileCatalog
from ovas.errors import CapacityExceeded
from ovas.models import SessionState
from ovas.testing import FakeClock, service_for, wait_for

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
RELEASES = {
    "070c004": "the release before record formats, port claims and the core's ledger",
    "93837ff": "the release before the core kept every record: formats and port claims",
}
CAPACITY = 5  # four sessions of the release live, and room for one more
# Two TCP ports each (signaling, probe): the range holds the release's four live sessions
# (and, while they all ran, a fifth) and one more.
PORT_COUNT = 10

# Runs under the release's code alone: makes its sessions and prints what it made as JSON.
RELEASE_SCRIPT = r"""
import dataclasses, json, sys, time
from pathlib import Path

given = json.loads(sys.argv[1])
root = Path(given["root"]).resolve()
import backends, ovas
for module in (ovas, backends):
    assert Path(module.__file__).resolve().is_relative_to(root), module.__file__

from backends.docker import DockerBackend
from ovas.catalog_files import FileCatalog
from ovas.lifecycle import Mark, Stage
from ovas.models import SessionState
from ovas.services import CatalogService, SessionService
from ovas.testing.requests import (
    STANDIN_EXIT_AFTER, STANDIN_EXIT_CODE, STANDIN_READY_DELAY, make_request, wait_for,
)

catalog = FileCatalog(given["catalog"])
backend = DockerBackend(
    catalog, docker_host=given["daemon"], port_range=given["ports"], gpus="none", stop_grace=2
)
capacity = given["capacity"]
sessions = SessionService(backend, CatalogService(catalog), capacity=capacity, now=backend.now)


def start(username, env=None):
    request = make_request(
        catalog, app_id="kit-standin", profile_id="standin", username=username, env=env,
        capacity=capacity, start_timeout=900,
    )
    return backend.start(request).record.id


def expect(session_id, state):
    session = wait_for(sessions, session_id, state)
    assert session.state is state, (session_id, session.state, session.message)


def until(check, what):
    deadline = time.monotonic() + 30
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def pooled():
    return [r for r in backend.records() if r.pooled and r.outcome is None]


made = {}
made["ended"] = start("erin", {STANDIN_EXIT_CODE: "0", STANDIN_EXIT_AFTER: "1"})
expect(made["ended"], SessionState.READY)
expect(made["ended"], SessionState.ENDED)
made["failed"] = start("fay", {STANDIN_EXIT_CODE: "3"})
expect(made["failed"], SessionState.FAILED)
made["ready"] = start("ann")
expect(made["ready"], SessionState.READY)
made["starting"] = start("sam", {STANDIN_READY_DELAY: "600"})
until(
    lambda: backend.observe(made["starting"]).seen.stage is Stage.RUNNING,
    "the slow session's container runs",
)
expect(made["starting"], SessionState.CREATING)

def fill():
    sessions.reap()
    return len([r for r in pooled() if Mark.READY in r.marks]) == 2

until(fill, "the warm pool fills")
claimed = sessions.start("kit-standin", "standin", username="carl")
assert claimed.state is SessionState.READY and not claimed.pooled, claimed
made["claimed"] = claimed.id
(made["pooled"],) = [r.id for r in pooled()]


def as_json(value):
    return json.loads(json.dumps(dataclasses.asdict(value), default=str))


print(json.dumps({
    kind: {
        "session": as_json(sessions.get(session_id)),
        "record": as_json(backend.observe(session_id).record),
        "logs": sessions.logs(session_id),
    }
    for kind, session_id in made.items()
}))
backend.close()
"""


def as_json(value) -> dict:
    """A dataclass as the release's script prints one: JSON, times and enums by `str`."""
    return json.loads(json.dumps(dataclasses.asdict(value), default=str))


def settled(session) -> dict:
    """A session as JSON (`as_json`), but for how long a start has taken so far."""
    found = session if isinstance(session, dict) else as_json(session)
    return {**found, "message": re.sub(r"\(\d+ s so far", "(some time so far", found["message"])}


def _unavailable(release: str, reason: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI needs the release {release} to test the upgrade: {reason}", pytrace=False)
    pytest.skip(f"the release {release} is not at hand: {reason}")


def export_release(release: str, into: Path) -> None:
    """The release's ovas, backends and blueprints packages, from the repository's history."""
    git = shutil.which("git")
    if git is None:
        _unavailable(release, "git is not installed")
    found = subprocess.run(
        [git, "-C", str(REPO), "archive", release, "ovas", "backends", "blueprints"],
        capture_output=True,
        check=False,
    )
    if found.returncode != 0:
        _unavailable(release, f"git archive: {found.stderr.decode(errors='replace').strip()}")
    with tarfile.open(fileobj=io.BytesIO(found.stdout)) as archive:
        archive.extractall(into, filter="data")


def run_release(root: Path, **given) -> dict:
    """Run `RELEASE_SCRIPT` with the release's code (and this interpreter's packages), in a
    process that sees nothing of this checkout; what it made."""
    environment = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", RELEASE_SCRIPT, json.dumps({"root": str(root), **given})],
        cwd=root,
        env=environment,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


def containers_of(engine, session_ids) -> dict[str, dict[str, tuple[str, str]]]:
    """Each session's containers on the engine: name -> (container id, state)."""
    found: dict[str, dict[str, tuple[str, str]]] = {sid: {} for sid in session_ids}
    for summary in engine.containers(all=True, filters={"label": c.SESSION}):
        session_id = summary["Labels"][c.SESSION]
        if session_id in found:
            name = summary["Names"][0].lstrip("/")
            found[session_id][name] = (summary["Id"], summary["State"])
    return found


@pytest.fixture
def ledger_tidy(engine):
    """Remove the ledger records written during the test."""
    before = {s["Id"] for s in engine.containers(all=True, filters={"label": LEDGER})}
    yield
    for summary in engine.containers(all=True, filters={"label": LEDGER}):
        if summary["Id"] not in before:
            with contextlib.suppress(docker.errors.NotFound):
                engine.remove_container(summary["Id"], force=True)


@pytest.mark.parametrize("release", list(RELEASES))
def test_sessions_of_an_earlier_release_survive_the_upgrade(
    release, docker_daemon, new_backend, standin_request, engine, tmp_path, ledger_tidy
):
    root = tmp_path / "release"
    root.mkdir()
    export_release(release, root)
    catalog_dir = tmp_path / "catalog"
    catalog_dir.mkdir()
    shutil.copy(REPO / "config/catalog/standin.yaml", catalog_dir)
    (catalog_dir / "pools.yaml").write_text(yaml.safe_dump(POOL))
    ports = dockerd.free_ports(PORT_COUNT)

    made = run_release(
        root,
        daemon=docker_daemon.url,
        catalog=str(catalog_dir),
        ports=ports,
        capacity=CAPACITY,
    )
    ids = {kind: entry["session"]["id"] for kind, entry in made.items()}
    states = {kind: entry["session"]["state"] for kind, entry in made.items()}
    assert states == {
        "ended": "ended",
        "failed": "failed",
        "ready": "ready",
        "starting": "creating",
        "claimed": "ready",
        "pooled": "ready",
    }
    assert made["pooled"]["session"]["pool"] == POOL["metadata"]["name"]
    assert made["claimed"]["session"]["username"] == "carl"
    left = containers_of(engine, ids.values())

    clock = FakeClock(ticking=True)
    backend = new_backend(port_range=ports, now=clock)
    backend.catalog = FileCatalog(catalog_dir)
    sessions = service_for(backend, capacity=CAPACITY)

    def read_as_written():
        for kind, session_id in ids.items():
            written = made[kind]
            record = as_json(backend.observe(session_id).record)
            assert {k: record[k] for k in written["record"]} == written["record"], kind
            session = settled(sessions.get(session_id))
            # `connected` is counted anew at each read.
            same = [k for k in written["session"] if k != "connected"]
            expected = settled(written["session"])
            assert {k: session[k] for k in same} == {k: expected[k] for k in same}, kind
        ended, failed = ids["ended"], ids["failed"]
        assert sessions.logs(ended) == made["ended"]["logs"]
        assert "stand-in Kit app: exiting with code 0 as asked" in sessions.logs(ended)
        assert sessions.logs(failed) == made["failed"]["logs"]
        assert "code 3" in sessions.get(failed).message
        now = containers_of(engine, ids.values())
        for kind, session_id in ids.items():
            # Nothing of theirs is removed or replaced: every container is there, the same.
            assert left[session_id].items() <= now[session_id].items(), kind
            kit = now[session_id][c.container_name(session_id)]
            assert kit[1] == ("exited" if kind in ("ended", "failed") else "running"), kind

    read_as_written()

    # A start is admitted next to them: the release's sessions hold four of the five slots.
    first = backend.start(standin_request(capacity=CAPACITY, username="dora")).record.id
    with pytest.raises(CapacityExceeded, match="session slots"):
        backend.start(standin_request(capacity=CAPACITY))
    # Their host ports are counted: the range is full.
    with pytest.raises(CapacityExceeded, match="OVAS_DOCKER_PORT_RANGE"):
        backend.start(standin_request())
    started = wait_for(sessions, first, SessionState.READY)
    assert started.state is SessionState.READY, started.message

    # A reaper pass a minute on: it removes nothing of theirs. Each is recorded once in the
    # ledger, a live one with its places: a capacity slot, and a place per host port.
    clock.advance(60)
    removed = sessions.reap()
    assert [r for r in removed if any(sid in r for sid in ids.values())] == []
    read_as_written()
    records = {e.name for e in backend.ledger.list("session.")}
    assert {f"session.{sid}" for sid in ids.values()} <= records
    places = backend.ledger.list("slot.")
    for kind, session_id in ids.items():
        held = sorted(p.name.split(".")[1] for p in places if p.data["session"] == session_id)
        user = "pool" if kind == "pooled" else "user"
        live = sorted(["all", user, "port-tcp", "port-tcp", "port-udp"])
        assert held == ([] if kind in ("ended", "failed") else live), kind
