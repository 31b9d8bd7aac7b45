"""Upgrades keep sessions: sessions made by an earlier release on the emulated cluster, then
read by this code, which adopts their records into the ledger. The releases: 070c004 (before
objects carried `ovas/format`, and a warm pool's sessions `ovas/rendering`) and 93837ff
(format 1: records still on the objects, a pod-mode Service keeping one, with the node, past
its pod). Ready, starting, ended, failed, claimed and pooled sessions keep their state,
routes, clocks, marks, owner and logs; no object of theirs is removed or replaced, by a read
or by a reaper pass; and the capacity slots they held still count for a new start.

The old release runs in a subprocess from `git archive` of that commit (`old_release.py`),
against the emulator over HTTP, as a replica of the old release would. Keep such a test for
every later change of what ovas writes in the cluster."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from support.warm_pools import POOL

from backends.kubernetes import objects as o
from kubernetes_backend import steps
from kubernetes_backend.chart import ROOT
from ovas.errors import CapacityExceeded
from ovas.models import Clocks
from ovas.testing import service_for

pytestmark = pytest.mark.kubernetes

NAMESPACE = "omni-streaming"
# Main before records carried their format; main before records moved to the ledger.
RELEASES = ("070c004", "93837ff")
CLOCKS = {"connect_timeout": 600, "idle_timeout": 900, "max_lifetime": 7200}
CAPACITY = 6
POOL_NAME = POOL["metadata"]["name"]
ROLES = ("ready", "starting", "ended", "failed", "claimed", "pooled")
STATES = {
    "ready": "ready",
    "starting": "creating",
    "ended": "ended",
    "failed": "failed",
    "claimed": "ready",
    "pooled": "ready",
}


def _missing(release: str, reason: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI needs the release {release} from git: {reason}", pytrace=False)
    pytest.skip(f"no release {release}: {reason}")


@pytest.fixture(scope="module", params=RELEASES)
def old_release(request, tmp_path_factory) -> Path:
    """The release's `ovas`, `backends` and `blueprints`, with `old_release.py` beside them."""
    release = request.param
    root = tmp_path_factory.mktemp(f"ovas-{release}")
    command = ["git", "-C", str(ROOT), "archive", release, "ovas", "backends", "blueprints"]
    try:
        archive = subprocess.run(command, capture_output=True, timeout=60)
    except FileNotFoundError:
        _missing(release, "git is not installed")
    if archive.returncode != 0:
        _missing(release, archive.stderr.decode(errors="replace").strip())
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(root, filter="data")
    shutil.copy(Path(__file__).with_name("old_release.py"), root)
    (root / "RELEASE").write_text(release)
    return root


def made_by_old_release(old_release: Path, cluster, mode: str, now: str) -> dict[str, dict]:
    args = {
        "root": str(old_release),
        "kubeconfig": str(cluster.kubeconfig),
        "namespace": NAMESPACE,
        "mode": mode,
        "now": now,
        "capacity": CAPACITY,
        "clocks": CLOCKS,
    }
    env = {**os.environ, "PYTHONPATH": str(old_release)}
    done = subprocess.run(
        [sys.executable, "old_release.py", json.dumps(args)],
        cwd=old_release,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def backend_records(cluster) -> set[str]:
    """The sessions with a record in the ledger."""
    prefix = "ovas-ledger-session."
    return {
        c["metadata"]["name"].removeprefix(prefix)
        for c in cluster.objects(steps.CONFIG_MAPS)
        if c["metadata"]["name"].startswith(prefix)
    }


def objects_of(cluster, session_id: str) -> dict[str, dict]:
    """`kind/name` -> the object, for every object of the session."""
    return {
        f"{kind.rsplit('/', 1)[1]}/{obj['metadata']['name']}": obj
        for kind in steps.KINDS
        for obj in steps.of_session(cluster, kind, session_id)
    }


def uids(cluster, session_id: str) -> dict[str, str]:
    return {name: obj["metadata"]["uid"] for name, obj in objects_of(cluster, session_id).items()}


def as_seen(session, record, logs: list[str]) -> dict:
    """The fields `old_release.py` reports, as this code reads them."""
    return {
        "id": session.id,
        "state": session.state.value,
        "reason": session.reason.value if session.reason else None,
        "message": session.message,
        "username": session.username,
        "pool": session.pool,
        "host": session.host,
        "routes": [
            [r.description, r.protocol, r.source_port, r.destination_port] for r in session.routes
        ],
        "created_time": session.created_time.isoformat(),
        "expires_time": session.expires_time.isoformat() if session.expires_time else None,
        "ended_time": session.ended_time.isoformat() if session.ended_time else None,
        "clocks": [
            record.clocks.connect_timeout,
            record.clocks.idle_timeout,
            record.clocks.max_lifetime,
        ],
        "marks": {m.value: at.isoformat() for m, at in record.marks.items()},
        "logs": logs,
    }


@pytest.mark.parametrize("mode", ["pod", "helmrelease"])
def test_sessions_of_an_earlier_release_survive_the_upgrade(
    old_release, cluster, make_backend, clock, mode
):
    release = (old_release / "RELEASE").read_text()
    cluster.seed(NAMESPACE, [{**POOL, "spec": {**POOL["spec"], "size": 1}}])
    old = made_by_old_release(old_release, cluster, mode, clock().isoformat())
    assert {role: old[role]["state"] for role in ROLES} == STATES
    assert old["ended"]["reason"] == "app_exited" and old["failed"]["reason"] == "exited"
    assert any("stand-in Kit app" in line for line in old["ended"]["logs"])
    assert old["claimed"]["username"] == "carol" and old["pooled"]["pool"] == POOL_NAME
    ids = {role: old[role]["id"] for role in ROLES}
    before = {role: uids(cluster, ids[role]) for role in ROLES}
    for role in ROLES:
        for name, obj in objects_of(cluster, ids[role]).items():
            written = obj["metadata"].get("labels", {}).get(o.FORMAT)
            assert written == {"070c004": None, "93837ff": "1"}[release], name
            if release == "070c004":
                assert o.RENDERING not in (obj["metadata"].get("annotations") or {}), name
    assert backend_records(cluster) == set()
    live = ("ready", "starting", "claimed", "pooled")
    assert all(any(n.startswith("pods/") for n in before[r]) for r in live), before

    backend = make_backend(mode)
    sessions = service_for(backend, capacity=CAPACITY, clocks=Clocks(**CLOCKS))

    def read() -> dict[str, dict]:
        records = {r.id: r for r in backend.records()}
        found = {}
        for role in ROLES:
            session = sessions.get(ids[role])
            logs = sessions.logs(ids[role]) if session.state.final else []
            found[role] = as_seen(session, records[ids[role]], logs)
        return found

    assert read() == old
    assert {role: uids(cluster, ids[role]) for role in ROLES} == before
    # Their records are the ledger's now; their objects say so, and are read no more.
    assert set(ids.values()) <= backend_records(cluster)
    holders = {"pod": ("pods", "services"), "helmrelease": ("helmreleases",)}[mode]
    for role in ROLES:
        for name, obj in objects_of(cluster, ids[role]).items():
            kind, _, object_name = name.partition("/")
            if kind in (*holders, "configmaps") and object_name == o.object_name(ids[role]):
                assert obj["metadata"]["labels"][o.FORMAT] == o.WORKLOAD_FORMAT, name

    def later() -> dict[str, dict]:
        """As `read()`, the starting session's message aside (it counts the seconds)."""
        found = read()
        assert found["starting"].pop("message").startswith("Starting the Kit application")
        return found

    expected = {role: {k: v for k, v in old[role].items() if k != "message"} for role in ROLES}
    for role in ROLES:
        if role != "starting":
            expected[role]["message"] = old[role]["message"]

    # A pass of the reaper a little later: every clock still runs, nothing is taken away.
    clock.advance(5)
    removed = sessions.reap()
    assert not set(removed) & set(ids.values()), removed
    assert not [name for role in ROLES for name in before[role] if name in removed], removed
    assert later() == expected
    assert {role: uids(cluster, ids[role]) for role in ROLES} == before

    # Starts are admitted against the old sessions' slots: room for one more, then none.
    holding = [r for r in backend.records() if r.outcome is None]
    assert {ids[r] for r in live} <= {r.id for r in holding}
    # A pooled session recorded before renderings were is never handed out: the pass
    # started its replacement, of the catalog's rendering now, and keeps it until that is ready.
    replacements = [r for r in holding if r.id not in ids.values()]
    replaced = [(POOL_NAME, True, "")] if release == "070c004" else []
    assert [(r.pool, bool(r.rendering), r.username) for r in replacements] == replaced
    room = CAPACITY - len(holding)
    assert room >= 1, holding
    for n in range(room):
        started = steps.start(
            sessions, steps.request_for(backend, username=f"new{n}", capacity=CAPACITY)
        )
        assert started.state.value == "creating"
    with pytest.raises(CapacityExceeded):
        steps.start(sessions, steps.request_for(backend, username="late", capacity=CAPACITY))
    assert later() == expected
    assert {role: uids(cluster, ids[role]) for role in ROLES} == before
