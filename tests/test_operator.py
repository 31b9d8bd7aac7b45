"""What an operator uses on the day: `GET /stream` filters for admins, a session's logs (route
and command), the session table of `ovas sessions list`, and the `ovas` command run from
any folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ovas import create_app
from ovas.cli import age, ovas_cli
from ovas.logs import output_lines
from ovas.models import Reason, SessionState, WarmPool
from ovas.testing import FakeBackend, FakeClock, sample_catalog

ADMIN = {"X-Forwarded-User": "root", "X-Forwarded-Roles": "admin"}
ANN = {"X-Forwarded-User": "ann", "X-Forwarded-Roles": "streamer"}
BOB = {"X-Forwarded-User": "bob", "X-Forwarded-Roles": "streamer"}
STREAMS = "/streaming/stream"
OVAS = Path(sys.executable).parent / "ovas"
FLASK = Path(sys.executable).parent / "flask"


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def fake(clock):
    return FakeBackend(now=clock)


@pytest.fixture
def gateway(fake):
    """A client behind a gateway naming users in headers: ann and bob stream, root admins."""
    app = create_app({"TESTING": True, "REAP_INTERVAL": 0, "AUTH": "header"}, backend=fake)
    return app.test_client()


def start(client, headers, app_id="usd-viewer", profile="default"):
    answer = client.post(STREAMS, json={"id": app_id, "profile": profile}, headers=headers)
    assert answer.status_code in (200, 202), answer.text
    return answer.json["id"]


def ids(answer) -> set[str]:
    assert answer.status_code == 200, answer.text
    return {item["id"] for item in answer.json["items"]}


def test_an_admin_filters_sessions_by_state_user_app_and_profile(gateway, fake, clock):
    ann_viewer = start(gateway, ANN)
    clock.advance(1)
    ann_composer = start(gateway, ANN, app_id="usd-composer")
    fake.fault = Reason.NO_GPU
    bob_failed = start(gateway, BOB, profile="viewer-only")
    fake.fault = None

    every = {ann_viewer, ann_composer, bob_failed}
    assert ids(gateway.get(STREAMS, headers=ADMIN)) == every
    assert ids(gateway.get(f"{STREAMS}?state=failed", headers=ADMIN)) == {bob_failed}
    assert ids(gateway.get(f"{STREAMS}?state=ready", headers=ADMIN)) == {ann_viewer, ann_composer}
    assert ids(gateway.get(f"{STREAMS}?app_id=usd-composer", headers=ADMIN)) == {ann_composer}
    assert ids(gateway.get(f"{STREAMS}?profile=viewer-only", headers=ADMIN)) == {bob_failed}
    both = f"{STREAMS}?username=ann&app_id=usd-viewer&state=ready"
    assert ids(gateway.get(both, headers=ADMIN)) == {ann_viewer}
    paged = gateway.get(f"{STREAMS}?state=ready&limit=1&order=ASC", headers=ADMIN)
    assert paged.json["count"] == 1 and ids(paged) == {ann_viewer}

    # A non-admin's filters apply to their own sessions alone.
    assert ids(gateway.get(f"{STREAMS}?state=failed", headers=ANN)) == set()
    assert ids(gateway.get(f"{STREAMS}?state=failed", headers=BOB)) == {bob_failed}
    assert ids(gateway.get(f"{STREAMS}?app_id=usd-viewer&username=bob", headers=ANN)) == set()

    bad = gateway.get(f"{STREAMS}?state=sleeping", headers=ADMIN)
    assert bad.status_code == 422 and bad.json["detail"][0]["loc"] == ["query", "state"]


def test_an_admin_reads_a_sessions_logs_while_it_is_kept(gateway, fake):
    ready = start(gateway, ANN)
    fake.fault = Reason.EXITED
    failed = start(gateway, BOB)
    for session_id in (ready, failed):
        answer = gateway.get(f"{STREAMS}/{session_id}/logs", headers=ADMIN)
        assert answer.status_code == 200, answer.text
        assert answer.json["id"] == session_id
        assert answer.json["lines"][0] == "stand-in Kit app: example/usd-viewer:107.3.2"
    last = gateway.get(f"{STREAMS}/{ready}/logs?tail=1", headers=ADMIN).json["lines"]
    assert last == ["USD_PATH=/app/samples/stage01.usd"]
    # Served on the bare path form too.
    assert gateway.get(f"/stream/{ready}/logs", headers=ADMIN).status_code == 200

    # The owner is not an admin: logs may name what only operators should see.
    refused = gateway.get(f"{STREAMS}/{ready}/logs", headers=ANN)
    assert refused.status_code == 403 and "admin" in refused.json["detail"]
    missing = gateway.get(f"{STREAMS}/1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b/logs", headers=ADMIN)
    assert missing.status_code == 404
    for tail in ("0", "10001", "x"):
        bad = gateway.get(f"{STREAMS}/{ready}/logs?tail={tail}", headers=ADMIN)
        assert bad.status_code == 422, tail

    gateway.delete(f"{STREAMS}/{ready}", headers=ADMIN)
    assert gateway.get(f"{STREAMS}/{ready}/logs", headers=ADMIN).status_code == 404


def test_log_output_is_cut_at_newlines_only_and_a_crlf_is_one_ending():
    assert output_lines("") == [] and output_lines("\n") == [""]
    assert output_lines("a\r\nb\rc\n\nd") == ["a", "b\rc", "", "d"]
    assert output_lines("a\x0bb\u2028c\r\n\r\n") == ["a\x0bb\u2028c", ""]
    assert output_lines("1\n2\n3\n", tail=2) == ["2", "3"]
    assert output_lines("1\n2\n", tail=0) == []


def test_the_logs_route_and_the_filters_are_documented(client):
    document = client.get("/streaming/openapi.json").json
    logs = document["paths"]["/streaming/stream/{session_id}/logs"]["get"]
    assert "admins only" in logs["description"] + logs["summary"]
    assert {"200", "403", "404", "422"} <= set(logs["responses"])
    listing = document["paths"]["/streaming/stream"]["get"]
    params = {p["name"]: p for p in listing["parameters"]}
    assert {"state", "app_id", "profile", "username"} <= set(params)
    assert set(params["state"]["schema"]["enum"]) == {s.value for s in SessionState}


def test_sessions_list_is_a_table_with_a_header(clock):
    fake = FakeBackend(now=clock)
    app = create_app({"TESTING": True, "REAP_INTERVAL": 0}, backend=fake)
    runner = app.test_cli_runner()
    empty = runner.invoke(ovas_cli, ["sessions", "list"])
    assert (empty.exit_code, empty.output) == (0, "no sessions\n")

    service = app.extensions["ovas"].sessions
    ready = service.start("usd-viewer", "default", username="ann")
    clock.advance(125)
    fake.fault = Reason.NO_GPU
    failed = service.start("usd-composer", "default", username="bob")
    fake.fault = None  # the failure is recorded
    clock.advance(5)

    table = runner.invoke(ovas_cli, ["sessions", "list"])
    assert table.exit_code == 0, table.output
    header, first, second = table.output.splitlines()
    assert header.split() == [
        "ID", "STATE", "REASON", "APP", "VERSION", "PROFILE", "USER", "AGE", "ROUTES"
    ]  # fmt: skip
    assert first.split() == [
        ready.id, "ready", "-", "usd-viewer", "107.3.2", "default", "ann", "2m",
        "127.0.0.1:31000/TCP,31001/UDP",
    ]  # fmt: skip
    assert second.split()[:8] == [
        failed.id, "failed", "no_gpu", "usd-composer", "2.1.3-alpha.1", "default", "bob", "5s"
    ]  # fmt: skip
    assert second.split()[8] == "-"

    only = runner.invoke(ovas_cli, ["sessions", "list", "--state", "failed", "--json"])
    (item,) = json.loads(only.output)
    assert item["id"] == failed.id and item["reason"] == "no_gpu"
    assert item["status"]["condition"] == "failed"
    for option, value, expected in (
        ("--user", "ann", ready.id),
        ("--app", "usd-composer", failed.id),
        ("--profile", "default", None),
    ):
        shown = runner.invoke(ovas_cli, ["sessions", "list", option, value, "--json"])
        found = [s["id"] for s in json.loads(shown.output)]
        assert found == ([expected] if expected else [ready.id, failed.id])
    none = runner.invoke(ovas_cli, ["sessions", "list", "--user", "carol"])
    assert none.output == "no sessions\n"

    logs = runner.invoke(ovas_cli, ["sessions", "logs", failed.id, "--tail", "1"])
    assert logs.output == "USD_PATH=/app/samples/stage01.usd\n"
    unknown = runner.invoke(ovas_cli, ["sessions", "logs", "nope"])
    assert unknown.exit_code == 1 and "Session 'nope' not found" in unknown.output


def test_sessions_reap_prints_each_removal_and_leaves_warm_pools_to_the_server(clock):
    fake = FakeBackend(now=clock, ready_after=5)
    fake.catalog.pools["viewers"] = WarmPool("viewers", "usd-viewer", "latest", "default", 2)
    server = create_app({"TESTING": True, "REAP_INTERVAL": 0}, backend=fake).extensions["ovas"]
    server.sessions.reap()
    clock.advance(6)
    server.sessions.reap()
    pooled = {r.id for r in fake.records() if r.pooled}
    assert len(pooled) == 2
    fake.fault = Reason.NO_GPU
    failed = server.sessions.start("usd-composer", "default", username="bob")
    fake.fault = None
    clock.advance(3601)  # past the failed session's retention

    # The command, run with another catalog than the server's: one without its pool.
    fake.catalog = sample_catalog()
    command = create_app({"TESTING": True, "REAP_INTERVAL": 0}, backend=fake)
    reaped = command.test_cli_runner().invoke(ovas_cli, ["sessions", "reap"])
    assert reaped.exit_code == 0, reaped.output
    removal, total = reaped.output.splitlines()
    assert removal.startswith(f"removed {failed.id}: failed (no_gpu) at ")
    assert removal.endswith("kept for its retention of 3600 s") and total == "removed 1"
    assert {r.id for r in fake.records() if r.pooled} == pooled
    again = command.test_cli_runner().invoke(ovas_cli, ["sessions", "reap"])
    assert again.output == "removed 0\n"


def test_ages_read_in_their_largest_unit():
    assert [age(s) for s in (-1, 0, 59, 60, 3599, 3600, 86400 * 3)] == [
        "0s", "0s", "59s", "1m", "59m", "1h", "3d"
    ]  # fmt: skip


def run_ovas(*args, cwd, **env):
    return _run([str(OVAS), *args], cwd, env)


def run_flask_ovas(*args, cwd, **env):
    """`flask ovas ...`: the same commands, through Flask's CLI."""
    return _run([str(FLASK), "--app", "ovas:create_app", "ovas", *args], cwd, env)


def _run(command, cwd, env):
    base = {"PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    if os.environ.get("PYTHONPATH"):  # the checkout under test, where it is not installed
        base["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return subprocess.run(command, cwd=cwd, env={**base, **env}, capture_output=True, text=True)


def test_the_ovas_command_works_from_any_folder(tmp_path):
    checked = run_ovas("catalog", "check", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout == "ok: 3 applications, 4 versions, 3 profiles\n"

    listed = run_ovas("backends", cwd=tmp_path, OVAS_BACKEND="nope")
    assert listed.returncode == 0 and "docker" in listed.stdout

    fake = run_ovas("sessions", "list", cwd=tmp_path, OVAS_BACKEND="ovas.testing:FakeBackend")
    assert (fake.returncode, fake.stdout) == (0, "no sessions\n"), fake.stderr

    gone = run_ovas("catalog", "check", cwd=tmp_path, OVAS_CATALOG_PATH=str(tmp_path / "x"))
    assert gone.returncode == 1
    assert f"OVAS_CATALOG_PATH) does not exist (at {tmp_path / 'x'})" in gone.stderr

    broken = run_ovas("sessions", "list", cwd=tmp_path, OVAS_BACKEND="nope")
    assert broken.returncode == 1 and "Unknown backend 'nope'" in broken.stderr
    assert "Traceback" not in broken.stderr


@pytest.mark.parametrize("run", [run_ovas, run_flask_ovas], ids=["ovas", "flask ovas"])
def test_every_command_prints_what_was_asked(run, tmp_path):
    fake = {"OVAS_BACKEND": "ovas.testing:FakeBackend"}
    listed = run("sessions", "list", cwd=tmp_path, **fake)
    assert (listed.returncode, listed.stdout, listed.stderr) == (0, "no sessions\n", "")
    checked = run("catalog", "check", cwd=tmp_path, **fake)
    assert checked.stderr == "" and checked.stdout.startswith("ok: ")
    reaped = run("sessions", "reap", cwd=tmp_path, **fake)
    assert (reaped.stdout, reaped.stderr) == ("removed 0\n", "")
    gone = run("sessions", "logs", "nosuchsession", cwd=tmp_path, **fake)
    assert (gone.returncode, gone.stdout) == (1, "")
    assert gone.stderr.startswith("Error: ") and gone.stderr.count("\n") == 1
    assert run("backends", cwd=tmp_path, **fake).stderr == ""
    key = run("apikey", "new", "--user", "ann", cwd=tmp_path, **fake)
    assert key.stderr.startswith("key: ") and key.stderr.count("\n") == 1
    # Warnings still reach the operator; --verbose shows the server's log lines too.
    workers = {**fake, "SERVER_SOFTWARE": "gunicorn/23.0.0", "OVAS_WORKERS": "3"}
    warned = run("sessions", "list", cwd=tmp_path, **workers)
    assert warned.stdout == "no sessions\n"
    assert "WARNING" in warned.stderr and " INFO " not in warned.stderr
    verbose = run("--verbose", "sessions", "list", cwd=tmp_path, **fake)
    assert verbose.stdout == "no sessions\n"
    assert " INFO " in verbose.stderr and "backend=fake" in verbose.stderr


def test_serve_prints_its_settings(tmp_path):
    fake = {"OVAS_BACKEND": "ovas.testing:FakeBackend"}

    command = [str(OVAS), "serve", "--port", "0"]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **fake, "OVAS_REAP_INTERVAL": "0"}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    server = subprocess.Popen(
        command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    said = []
    # Bounded: without the line, the server is ended and the loop ends with its output.
    deadline = threading.Timer(30, server.terminate)
    deadline.start()
    try:
        for line in server.stderr:
            said.append(line)
            if "backend=fake" in line:
                break
    finally:
        deadline.cancel()
        server.terminate()
        server.wait(timeout=30)
    assert " INFO " in said[-1] and "backend=fake" in said[-1], said


def test_the_flask_commands_stay_and_the_servers_are_the_consoles_own():
    from ovas.cli import main

    assert set(ovas_cli.commands) == {"backends", "catalog", "sessions", "apikey"}
    assert set(main.commands) == {*ovas_cli.commands, "serve", "gateway"}


def test_ready_states_the_settings_that_matter_and_where_only_to_an_admin(gateway, fake):
    public = gateway.get("/ready").json["settings"]
    assert public == {
        "backend": "fake",
        "sessions": "in this process's memory",
        "catalog": {"applications": 2, "versions": 3, "profiles": 2},
        "auth": "header",
        "capacity": 0,
        "user_capacity": 0,
    }
    assert gateway.get("/ready", headers=ANN).json["settings"] == public


def test_ready_tells_an_admin_where_the_catalog_and_engine_are(tmp_path):
    from ovas.catalog_files import FileCatalog

    (tmp_path / "standin.yaml").write_text(
        (Path(__file__).parents[1] / "config/catalog/standin.yaml").read_text()
    )
    app = create_app(
        {"TESTING": True, "REAP_INTERVAL": 0, "AUTH": "header", "SESSION_CAPACITY": 4},
        backend=FakeBackend(FileCatalog(tmp_path)),
    )
    client = app.test_client()
    public = client.get("/ready").json["settings"]["catalog"]
    assert public == {"applications": 1, "versions": 1, "profiles": 1}
    insider = client.get("/ready", headers=ADMIN).json["settings"]
    assert insider["catalog"] == {**public, "path": str(tmp_path)}
    assert insider["capacity"] == 4
    assert str(tmp_path) not in client.get("/ready").text


def test_the_fake_backend_under_several_gunicorn_workers_warns(tmp_path):
    gunicorn = Path(sys.executable).parent / "gunicorn"
    repo = Path(__file__).parents[1]
    env = {
        "PATH": "/usr/bin:/bin",
        "OVAS_BACKEND": "ovas.testing:FakeBackend",
        "OVAS_BIND": "127.0.0.1:0",
        "OVAS_REAP_INTERVAL": "0",
    }
    command = [str(gunicorn), "-c", str(repo / "config/gunicorn.conf.py"), "-w", "2"]
    server = subprocess.Popen(
        command, cwd=repo, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    warned = []
    # Bounded: without the warning, the server is ended and the loop ends with its output.
    deadline = threading.Timer(30, server.terminate)
    deadline.start()
    try:
        for line in server.stderr:
            if "keeps its sessions in each process's memory" in line:
                warned.append(line)
                break
            assert "Traceback" not in line
    finally:
        deadline.cancel()
        server.terminate()
        server.wait(timeout=30)
    assert warned and "2 gunicorn workers" in warned[0] and "OVAS_WORKERS=1" in warned[0]
