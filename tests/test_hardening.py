"""Limits, input checks, security headers, request ids, audit and JSON logs."""

from __future__ import annotations

import json
import logging

import pytest

from ovas import create_app
from ovas.catalog_files import FileCatalog
from ovas.logs import configure
from ovas.testing import FakeBackend

START = {"id": "usd-viewer", "profile": "default"}


def make_client(**config):
    return create_app({"TESTING": True, **config}, backend=FakeBackend()).test_client()


def test_start_rate_limit_is_reached_and_released(time_machine):
    time_machine.move_to("2026-06-01T12:00:00Z", tick=False)
    client = make_client(START_RATE_LIMIT="2/second")
    assert client.post("/stream", json=START).status_code in (200, 202)
    assert client.post("/stream", json=START).status_code in (200, 202)
    refused = client.post("/stream", json=START)
    assert refused.status_code == 429
    assert refused.is_json and refused.json["detail"]
    assert int(refused.headers["Retry-After"]) >= 0
    # Reads are never rate limited.
    assert client.get("/stream").json["count"] == 2
    time_machine.shift(1.1)  # the window has moved on
    assert client.post("/stream", json=START).status_code in (200, 202)


def test_rate_limit_can_be_turned_off():
    client = make_client(START_RATE_LIMIT="")
    assert all(client.post("/stream", json=START).status_code < 300 for _ in range(40))


@pytest.mark.parametrize(
    "uri",
    [
        "omniverse://nucleus.example/Projects/stage.usd",
        "https://example.com/stage.usd",
        "s3://bucket/stage.usd",
        "/app/samples/stage02.usd",
        "",
    ],
)
def test_allowed_stage_uris_reach_usd_path(uri):
    backend = FakeBackend()
    client = create_app({"TESTING": True}, backend=backend).test_client()
    answer = client.post("/stream", json={**START, "arguments": {"usd_stage_uri": uri}})
    assert answer.status_code in (200, 202)
    (record,) = backend.workloads.values()
    expected = uri or "/app/samples/stage01.usd"
    assert record.env["USD_PATH"] == expected


@pytest.mark.parametrize(
    "uri",
    [
        "file:///etc/passwd",
        "/etc/passwd",
        "/app/samples/../../etc/passwd",
        "stage.usd; rm -rf /",
        "$(reboot)",
        "omniverse://x/" + "a" * 2100,
        "https://x/a b",
        "omniverse://",
    ],
)
def test_other_stage_uris_are_422_and_start_nothing(uri):
    client = make_client()
    answer = client.post("/stream", json={**START, "arguments": {"usd_stage_uri": uri}})
    assert answer.status_code == 422
    assert answer.json["detail"][0]["loc"] == ["body", "arguments", "usd_stage_uri"]
    assert client.get("/stream").json["count"] == 0


@pytest.mark.parametrize(
    "uri",
    [
        "/app/samples/%2e%2e/%2e%2e/etc/passwd",
        "/app/samples/%2E%2E/%2E%2E/etc/passwd",
        "/app/samples/..%2f..%2fetc/passwd",
        "/app/samples/..%2F..%2Fetc%2Fpasswd",
        "/app/samples/.%2e/.%2e/etc/passwd",
        "/app/samples%2f..%2f..%2fetc/passwd",
        "/app/samples/%252e%252e/%252e%252e/etc/passwd",  # encoded twice
        "/app/samples/%25252e%25252e/%25252e%25252e/etc/passwd",  # three times
        "/app/samples/%2525252e.usd",  # more times than any path needs
        "/app/samples/stage%00.usd",
        "/app/samples/stage%0a.usd",
    ],
)
def test_percent_encoded_traversal_is_422_and_reaches_no_kit(uri):
    backend = FakeBackend()
    client = create_app({"TESTING": True}, backend=backend).test_client()
    answer = client.post("/stream", json={**START, "arguments": {"usd_stage_uri": uri}})
    assert answer.status_code == 422, answer.json
    assert answer.json["detail"][0]["loc"] == ["body", "arguments", "usd_stage_uri"]
    assert backend.workloads == {}


def test_a_percent_encoded_path_under_a_root_is_allowed_as_written():
    backend = FakeBackend()
    client = create_app({"TESTING": True}, backend=backend).test_client()
    uri = "/app/samples/city%2dblock/stage%2e01.usd"
    answer = client.post("/stream", json={**START, "arguments": {"usd_stage_uri": uri}})
    assert answer.status_code in (200, 202)
    (record,) = backend.workloads.values()
    assert record.env["USD_PATH"] == uri


def test_configured_roots_allow_their_paths():
    client = make_client(USD_PATH_ROOTS="/data/stages,/mnt/usd")
    body = {**START, "arguments": {"usd_stage_uri": "/mnt/usd/city.usd"}}
    assert client.post("/stream", json=body).status_code in (200, 202)
    body = {**START, "arguments": {"usd_stage_uri": "/app/samples/stage01.usd"}}
    assert client.post("/stream", json=body).status_code == 422


def test_security_headers_on_every_response(client):
    for path in ("/cfg/apps", "/nothing", "/streaming/docs", "/health"):
        answer = client.get(path)
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]
    assert client.get("/cfg/apps").headers["Cache-Control"] == "no-store"


def test_request_id_is_taken_or_made_and_echoed(client):
    assert (
        client.get("/cfg/apps", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"]
        == "abc-123"
    )
    made = client.get("/cfg/apps").headers["X-Request-ID"]
    assert len(made) == 32
    forged = client.get("/cfg/apps", headers={"X-Request-ID": "bad value <script>" + "x" * 200})
    assert forged.headers["X-Request-ID"] != "bad value <script>" + "x" * 200


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_json_logs_carry_the_request_id_and_audit_every_start_and_stop(capsys):
    client = make_client(LOG_FORMAT="json")
    started = client.post("/stream", json=START, headers={"X-Request-ID": "req-1"})
    client.delete(f"/stream/{started.json['id']}", headers={"X-Request-ID": "req-2"})
    client.post("/stream", json={**START, "id": "nope"}, headers={"X-Request-ID": "req-3"})
    lines = json_lines(capsys.readouterr().err)
    audits = [line for line in lines if line.get("audit")]
    assert [(a["audit"], a["outcome"], a["request_id"]) for a in audits] == [
        ("session.start", "ok", "req-1"),
        ("session.stop", "ok", "req-2"),
        ("session.start", "error", "req-3"),
    ]
    first = audits[0]
    assert first["user"] == "anonymous"
    assert first["session"] == started.json["id"]
    assert first["app"] == "usd-viewer"
    # START names no version: the line says the one it resolved to.
    assert "version" not in START and first["version"] == started.json["version"] == "107.3.2"
    assert first["time"].startswith("20")
    assert audits[2]["status"] == 404


def test_catalog_edits_are_audited(tmp_path, capsys):
    import shutil
    from pathlib import Path

    from ovas.catalog_files import FileCatalog

    folder = tmp_path / "c"
    shutil.copytree(Path(__file__).resolve().parents[1] / "config" / "catalog", folder)
    config = {"TESTING": True, "LOG_FORMAT": "json", "EDITING_ENABLED": True}
    client = create_app(config, backend=FakeBackend(FileCatalog(folder))).test_client()
    client.post("/cfg/apps", json={"id": "factory"})
    client.post("/cfg/apps", json={"id": "factory"})
    client.delete("/cfg/apps/factory")
    audits = [a for a in json_lines(capsys.readouterr().err) if a.get("audit")]
    assert [(a["audit"], a["outcome"], a.get("status")) for a in audits] == [
        ("application.create", "ok", None),
        ("application.create", "error", 409),
        ("application.delete", "ok", None),
    ]


@pytest.mark.parametrize("field", ["id", "profile", "version"])
def test_a_control_character_in_a_name_is_422_and_forges_no_log_line(field, capsys):
    client = make_client()
    body = {**START, "version": "107.3.2", field: "default\n2026-01-01 INFO forged line"}
    answer = client.post("/stream", json=body)
    assert answer.status_code == 422
    assert answer.json["detail"][0]["loc"] == ["body", field]
    err = capsys.readouterr().err
    assert not any(line.lstrip().startswith("2026-01-01 INFO forged") for line in err.splitlines())


def test_plain_log_lines_escape_control_characters(capsys):
    configure("plain")
    logging.getLogger("ovas").warning("user said %s", "hi\nFAKE ERROR line\x1b[31m")
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "user said" in x]
    assert line.endswith("user said hi\\nFAKE ERROR line\\x1b[31m")


def test_ready_names_no_server_path_when_the_catalog_folder_is_missing(tmp_path):
    missing = tmp_path / "nowhere"
    app = create_app({"TESTING": True}, backend=FakeBackend(catalog=FileCatalog(missing)))
    answer = app.test_client().get("/ready")
    assert answer.status_code == 503
    assert "the catalog folder (OVAS_CATALOG_PATH) does not exist" in answer.json["detail"]
    assert str(tmp_path) not in answer.get_data(as_text=True)
