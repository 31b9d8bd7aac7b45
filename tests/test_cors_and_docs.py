"""Browsers: CORS preflight; the two services' OpenAPI documents and docs pages."""

from __future__ import annotations

import pytest

from ovas import create_app
from ovas.testing import FakeBackend


def test_preflight_allows_any_origin_by_default(client):
    answer = client.options(
        "/streaming/stream",
        headers={
            "Origin": "http://viewer.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert answer.status_code == 200
    assert answer.headers["Access-Control-Allow-Origin"] in ("*", "http://viewer.example")
    assert "POST" in answer.headers["Access-Control-Allow-Methods"]
    assert "content-type" in answer.headers["Access-Control-Allow-Headers"].lower()


def test_configured_origins_are_the_only_ones_allowed():
    app = create_app(
        {"TESTING": True, "CORS_ORIGINS": "http://good.example"}, backend=FakeBackend()
    )
    client = app.test_client()
    good = client.get("/cfg/apps", headers={"Origin": "http://good.example"})
    bad = client.get("/cfg/apps", headers={"Origin": "http://evil.example"})
    assert good.headers["Access-Control-Allow-Origin"] == "http://good.example"
    assert "Access-Control-Allow-Origin" not in bad.headers


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
