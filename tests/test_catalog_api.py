"""The Application & Profile service's read routes, as clients call them."""

from __future__ import annotations

import pytest

from ovas.models import Application, Profile, SupportedApplication, Version
from ovas.testing import FakeBackend, InMemoryCatalog


@pytest.fixture
def backend():
    values = {"streamingKit": {"image": {"repository": "r", "tag": "t"}}}
    return FakeBackend(
        InMemoryCatalog(
            applications=[
                Application("usd-viewer", "USD Viewer", "Views", ("USD", "viewer")),
                Application("usd-composer", "USD Composer", "Composes", ("USD",)),
                Application("factory", "Factory twin", "", ("twin",)),
            ],
            versions=[
                Version("usd-viewer", "1.10.0"),
                Version("usd-viewer", "1.9.3"),
                Version("usd-viewer", "2.1.3-alpha.1"),
                Version("usd-viewer", "2.1.3"),
                Version("usd-viewer", "4.3.5-rc.1+build.123"),
                Version("usd-composer", "107.3.2"),
            ],
            profiles=[
                Profile("any", "Any", "", (SupportedApplication("*", ("*",)),), {}, values),
                Profile("v2", "V2", "", (SupportedApplication("usd-*", ("2.*",)),), {}, values),
                Profile("Case", "C", "", (SupportedApplication("USD-*", ("*",)),), {}, values),
            ],
        )
    )


def items(response):
    assert response.status_code == 200, response.json
    body = response.json
    assert body["count"] == len(body["items"])
    assert body["offset"] == 0
    return body["items"]


def test_lists_applications_with_their_shape(client):
    apps = items(client.get("/cfg/apps"))
    assert apps[0] == {"id": "factory", "name": "Factory twin", "description": "", "tags": ["twin"]}
    assert [a["id"] for a in apps] == ["factory", "usd-composer", "usd-viewer"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("?tags=USD", {"usd-viewer", "usd-composer"}),
        ("?tags=USD&tags=viewer", {"usd-viewer"}),
        ("?tags=USD,viewer", {"usd-viewer"}),
        ("?tags=nothing", set()),
        ("", {"usd-viewer", "usd-composer", "factory"}),
    ],
)
def test_tags_filter_keeps_apps_carrying_every_tag(client, query, expected):
    assert {a["id"] for a in items(client.get(f"/cfg/apps{query}"))} == expected


def test_one_application_and_unknown(client):
    assert client.get("/applications/cfg/apps/usd-viewer").json["name"] == "USD Viewer"
    missing = client.get("/cfg/apps/nope")
    assert missing.status_code == 404
    assert missing.json == {"detail": "Application 'nope' not found"}


def test_versions_newest_semver_first(client):
    versions = [v["version"] for v in items(client.get("/cfg/apps/usd-viewer/versions"))]
    assert versions == ["4.3.5-rc.1+build.123", "2.1.3", "2.1.3-alpha.1", "1.10.0", "1.9.3"]
    assert set(items(client.get("/cfg/apps/usd-viewer/versions"))[0]) == {
        "version",
        "container",
        "container_version",
        "helm_chart",
        "helm_chart_version",
    }
    assert client.get("/cfg/apps/nope/versions").status_code == 404


def test_version_with_build_metadata_is_taken_raw_from_the_path(client):
    answer = client.get("/cfg/apps/usd-viewer/versions/4.3.5-rc.1+build.123")
    assert answer.status_code == 200
    assert answer.json["version"] == "4.3.5-rc.1+build.123"
    assert client.get("/cfg/apps/usd-viewer/versions/9.9.9").status_code == 404


@pytest.mark.parametrize(
    ("app_id", "version", "expected"),
    [
        ("usd-viewer", "2.1.3", {"any", "v2"}),
        ("usd-viewer", "1.9.3", {"any"}),
        ("factory", "*", {"any"}),
        ("*", "*", {"any", "v2", "Case"}),
        ("*", "2.1.3", {"any", "v2", "Case"}),
        ("usd-viewer", "*", {"any", "v2"}),
    ],
)
def test_profiles_match_by_case_sensitive_globs(client, app_id, version, expected):
    found = {p["id"] for p in items(client.get(f"/cfg/apps/{app_id}/versions/{version}/profiles"))}
    assert found == expected


def test_profiles_of_unknown_app_or_version_are_404_and_no_match_is_empty(client):
    assert client.get("/cfg/apps/nope/versions/1.0.0/profiles").status_code == 404
    assert client.get("/cfg/apps/usd-viewer/versions/0.0.1/profiles").status_code == 404
    assert client.get("/cfg/apps/*/versions/0.0.1/profiles").status_code == 404
    assert items(client.get("/cfg/apps/factory/versions/*/profiles")) == [
        {"id": "any", "name": "Any", "description": ""}
    ]


def test_one_profile(client):
    ok = client.get("/cfg/apps/usd-viewer/versions/2.1.3/profiles/v2")
    assert ok.json == {"id": "v2", "name": "V2", "description": ""}
    assert client.get("/cfg/apps/usd-viewer/versions/1.9.3/profiles/v2").status_code == 404
    assert client.get("/cfg/apps/usd-viewer/versions/1.9.3/profiles/none").status_code == 404


def test_catalog_answers_while_the_engine_is_down(client, backend):
    backend.unavailable = True
    assert client.get("/cfg/apps").status_code == 200
    assert client.get("/cfg/apps/usd-viewer/versions/2.1.3/profiles").status_code == 200
