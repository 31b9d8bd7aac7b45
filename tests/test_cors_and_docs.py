"""Browsers: CORS preflight; the two services' OpenAPI documents and docs pages."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from ovas import create_app
from ovas.errors import ConfigurationError
from ovas.testing import FakeBackend

PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "content-type",
}
START = {"id": "usd-viewer", "profile": "default"}


@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost:5173",
        "http://127.0.0.1:8000",
        "http://[::1]:3000",
        "https://app.localhost",
    ],
)
def test_the_web_viewer_on_a_loopback_origin_is_allowed_by_default(client, backend, origin):
    preflight = client.options("/streaming/stream", headers={"Origin": origin, **PREFLIGHT})
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == origin
    assert preflight.headers["Vary"] == "Origin"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "content-type" in preflight.headers["Access-Control-Allow-Headers"].lower()
    started = client.post("/streaming/stream", json=START, headers={"Origin": origin})
    assert started.status_code in (200, 202)
    assert started.headers["Access-Control-Allow-Origin"] == origin
    assert len(backend.observe_all()) == 1


@pytest.mark.parametrize(
    "origin",
    [
        "http://viewer.example",
        "null",  # a sandboxed frame or a file:// page
        "http://localhost.evil.example:5173",
        "http://127.0.0.1.evil.example",
        "chrome-extension://abcdef",
    ],
)
def test_without_auth_other_origins_are_refused_and_change_nothing(client, backend, origin):
    for method, path, body in [
        ("options", "/streaming/stream", None),
        ("post", "/streaming/stream", START),
        ("get", "/cfg/apps", None),
    ]:
        headers = {"Origin": origin, **(PREFLIGHT if method == "options" else {})}
        answer = getattr(client, method)(path, json=body, headers=headers)
        assert answer.status_code == 403, (method, answer.json)
        assert "OVAS_CORS_ORIGINS" in answer.json["detail"]
        assert "Access-Control-Allow-Origin" not in answer.headers
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert backend.observe_all() == []


def test_configured_origins_are_allowed_besides_loopback():
    app = create_app(
        {"TESTING": True, "CORS_ORIGINS": "http://good.example, https://Viewer.Example:8443"},
        backend=FakeBackend(),
    )
    client = app.test_client()
    for origin in ("http://good.example", "https://viewer.example:8443", "http://localhost:5173"):
        answer = client.get("/cfg/apps", headers={"Origin": origin})
        assert answer.headers["Access-Control-Allow-Origin"] == origin
    assert client.get("/cfg/apps", headers={"Origin": "http://evil.example"}).status_code == 403


def test_with_authentication_every_origin_is_allowed_by_default(tmp_path):
    keys = tmp_path / "keys.yaml"
    keys.write_text("[]\n")
    app = create_app(
        {"TESTING": True, "AUTH": "apikey", "APIKEYS_FILE": str(keys)}, backend=FakeBackend()
    )
    client = app.test_client()
    preflight = client.options(
        "/streaming/stream", headers={"Origin": "http://viewer.example", **PREFLIGHT}
    )
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    # Without credentials it is a 401, not an origin refusal: the key is what protects it.
    answer = client.get("/cfg/apps", headers={"Origin": "http://viewer.example", "Host": "x.y"})
    assert answer.status_code == 401


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "10.0.0.9", "[fe80::1]"])
def test_without_auth_a_host_that_is_no_name_of_this_server_is_refused(client, backend, host):
    # DNS rebinding: a hostile name resolving to 127.0.0.1 makes its pages same-origin.
    for origin in ({}, {"Origin": f"http://{host}"}):
        answer = client.post("/streaming/stream", json=START, headers={"Host": host, **origin})
        assert answer.status_code == 403
        assert "OVAS_ALLOWED_HOSTS" in answer.json["detail"]
    assert client.get("/health", headers={"Host": host}).status_code == 403
    assert backend.observe_all() == []


@pytest.mark.parametrize("host", ["localhost", "localhost:8080", "127.0.0.1:8080", "[::1]:8080"])
def test_loopback_hosts_are_always_served(client, host):
    assert client.get("/cfg/apps", headers={"Host": host}).status_code == 200


def test_allowed_hosts_add_names_and_their_own_pages_are_same_origin():
    app = create_app(
        {"TESTING": True, "ALLOWED_HOSTS": "ovas.lan, .studio.example"}, backend=FakeBackend()
    )
    client = app.test_client()
    for host in ("ovas.lan:8080", "studio.example", "a.studio.example", "OVAS.LAN."):
        assert client.get("/cfg/apps", headers={"Host": host}).status_code == 200, host
    assert client.get("/cfg/apps", headers={"Host": "evilstudio.example"}).status_code == 403
    # The docs page served from http://ovas.lan:8080 calls the API from that origin.
    same = client.post(
        "/streaming/stream",
        json=START,
        headers={"Host": "ovas.lan:8080", "Origin": "http://ovas.lan:8080"},
    )
    assert same.status_code in (200, 202)
    other = client.get("/cfg/apps", headers={"Host": "ovas.lan", "Origin": "http://studio.example"})
    assert other.status_code == 403


@pytest.mark.parametrize(
    ("bind", "served", "refused"),
    [
        ("192.168.7.5:8080", "192.168.7.5:8080", "evil.example"),
        ("0.0.0.0:8080", "any.name.example", None),
        ("[::]:8080", "any.name.example", None),
    ],
)
def test_the_bind_host_is_one_of_the_default_names(monkeypatch, bind, served, refused):
    monkeypatch.setenv("OVAS_BIND", bind)
    client = create_app({"TESTING": True}, backend=FakeBackend()).test_client()
    assert client.get("/cfg/apps", headers={"Host": served}).status_code == 200
    if refused:
        assert client.get("/cfg/apps", headers={"Host": refused}).status_code == 403


@pytest.mark.parametrize(
    ("setting", "value", "words"),
    [
        ("CORS_ORIGINS", "localhost:5173", "OVAS_CORS_ORIGINS: 'localhost:5173' is not a web"),
        ("CORS_ORIGINS", "http://x.example/app", "is not a web origin"),
        ("ALLOWED_HOSTS", "http://ovas.lan", "OVAS_ALLOWED_HOSTS: 'http://ovas.lan' is not"),
        ("ALLOWED_HOSTS", "ovas.lan:8080", "no scheme or port"),
    ],
)
def test_a_bad_origin_or_host_setting_stops_startup(setting, value, words):
    with pytest.raises(ConfigurationError, match=re.escape(words)):
        create_app({"TESTING": True, setting: value}, backend=FakeBackend())


@pytest.mark.parametrize(
    ("spec", "paths"),
    [
        (
            "/applications/openapi.json",
            {"/cfg/apps", "/cfg/apps/{app_id}/versions/{version}/profiles/{profile_id}"},
        ),
        ("/streaming/openapi.json", {"/streaming/stream", "/streaming/stream/{session_id}"}),
    ],
)
def test_each_service_has_its_own_document_with_summaries_and_errors(client, spec, paths):
    document = client.get(spec).json
    assert paths <= set(document["paths"])
    other = "/streaming" if spec.startswith("/applications") else "/cfg"
    assert not any(p.startswith(other) for p in document["paths"])
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            assert operation.get("summary"), f"{method} {path} has no summary"
            errors = [s for s in operation["responses"] if s.startswith(("4", "5"))]
            assert errors, f"{method} {path} documents no error"


def test_stream_lifecycle_statuses_are_documented(client):
    document = client.get("/streaming/openapi.json").json
    get_one = document["paths"]["/streaming/stream/{session_id}"]["get"]["responses"]
    assert {"200", "202", "404", "410"} <= set(get_one)
    post = document["paths"]["/streaming/stream"]["post"]["responses"]
    assert {"200", "202", "404", "422", "503"} <= set(post)


def test_docs_pages_use_local_assets_only(client):
    for page in ("/applications/docs", "/streaming/docs"):
        html = client.get(page).get_data(as_text=True)
        assert "/docs-assets/swagger-ui/swagger-ui-bundle.js" in html
        assert "http://" not in html and "https://" not in html
    asset = client.get("/docs-assets/swagger-ui/swagger-ui-bundle.js")
    assert asset.status_code == 200
    assert len(asset.data) > 100_000


@pytest.mark.parametrize(
    ("variable", "value", "line"),
    [
        ("OVAS_EDITING_ENABLED", "perhaps", "OVAS_EDITING_ENABLED must be true or false"),
        ("OVAS_SESSION_CAPACITY", "1.5", "OVAS_SESSION_CAPACITY: 1.5 is not a whole number"),
        ("OVAS_SESSION_CAPACITY", "true", "OVAS_SESSION_CAPACITY: True is not a whole number"),
        ("OVAS_LOG_LEVEL", "LOUD", "OVAS_LOG_LEVEL must be one of DEBUG, INFO"),
        ("OVAS_MAX_CONTENT_LENGTH", "big", "OVAS_MAX_CONTENT_LENGTH: 'big' is not a whole number"),
        (
            "OVAS_SESSION_MAX_LIFETIME",
            "999999999999",
            "OVAS_SESSION_MAX_LIFETIME: 999999999999 is more than the largest allowed, 31536000",
        ),
        (
            "OVAS_START_TIMEOUT",
            "999999999999",
            "OVAS_START_TIMEOUT: 999999999999 is more than the largest allowed, 31536000",
        ),
        ("OVAS_CORS_ORIGINS", "localhost:5173", "OVAS_CORS_ORIGINS: 'localhost:5173'"),
    ],
)
def test_a_bad_setting_stops_startup_with_one_clear_line(tmp_path, variable, value, line):
    env = {**os.environ, variable: value, "OVAS_BACKEND": "ovas.testing.fake:FakeBackend"}
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "ovas", "routes"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert line in done.stderr
