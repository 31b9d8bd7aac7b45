"""The editing routes: off by default, and when on, written back to the catalog folder."""

from __future__ import annotations

import json
import multiprocessing
import shutil
from pathlib import Path

import pytest
import yaml

from ovas import create_app
from ovas.catalog_files import FileCatalog
from ovas.testing import FakeBackend

SAMPLE = Path(__file__).resolve().parents[1] / "config" / "catalog"


@pytest.fixture
def folder(tmp_path):
    target = tmp_path / "catalog"
    shutil.copytree(SAMPLE, target)
    return target


def snapshot(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.glob("*.y*ml")) if p.is_file()}


def make_client(folder, **config):
    backend = FakeBackend(FileCatalog(folder, reload_interval=0))
    return create_app({"TESTING": True, **config}, backend=backend).test_client()


EDITS = [
    ("post", "/cfg/apps", {"id": "factory", "name": "Factory"}),
    ("put", "/cfg/apps/usd-viewer", {"name": "Renamed"}),
    ("patch", "/cfg/apps/usd-viewer", {"tags": []}),
    ("delete", "/cfg/apps/usd-viewer", None),
    ("post", "/cfg/apps/usd-viewer/versions", {"version": "1.0.0"}),
    ("delete", "/cfg/apps/usd-viewer/versions", {"version": "107.3.2"}),
    ("delete", "/cfg/apps/usd-viewer/versions/107.3.2", None),
]


@pytest.mark.parametrize(("method", "path", "body"), EDITS)
def test_editing_is_off_by_default_and_changes_nothing(folder, method, path, body):
    client = make_client(folder)
    before = snapshot(folder)
    answer = getattr(client, method)(path, json=body)
    assert answer.status_code == 405
    assert "disabled" in answer.json["detail"]
    assert snapshot(folder) == before


def test_ovas_own_variable_turns_editing_on(folder, monkeypatch):
    monkeypatch.setenv("NV.OV.SVC.APPLICATIONS.ENDPOINTS.EDITING.ENABLED", "true")
    client = make_client(folder)
    assert client.post("/cfg/apps", json={"id": "factory"}).status_code == 201


def test_create_update_delete_an_application(folder):
    client = make_client(folder, EDITING_ENABLED=True)
    created = client.post(
        "/applications/cfg/apps",
        json={"id": "factory", "name": "Factory", "description": "A twin", "tags": ["twin"]},
    )
    assert (created.status_code, created.json) == (201, {"id": "factory"})
    assert client.post("/cfg/apps", json={"id": "factory"}).status_code == 409
    on_disk = yaml.safe_load((folder / "factory.yaml").read_text())
    assert on_disk["kind"] == "Application"
    assert on_disk["spec"]["tags"] == ["twin"]

    changed = client.patch("/cfg/apps/factory", json={"description": "Changed"})
    assert changed.json == {
        "id": "factory",
        "name": "Factory",
        "description": "Changed",
        "tags": ["twin"],
    }
    replaced = client.put("/cfg/apps/factory", json={"tags": ["a", "b"]})
    assert replaced.json["tags"] == ["a", "b"]
    assert replaced.json["name"] == "Factory"
    assert client.patch("/cfg/apps/factory", json={"id": "other"}).status_code == 422
    assert client.patch("/cfg/apps/nope", json={"name": "x"}).status_code == 404

    assert client.delete("/cfg/apps/factory").status_code == 204
    assert client.get("/cfg/apps/factory").status_code == 404
    assert not (folder / "factory.yaml").exists()


@pytest.mark.parametrize(
    "app_id", ["1abc", "has space", "../../etc", "a" * 64, "under_score", "x/y"]
)
def test_bad_application_ids_are_422_and_never_escape_the_folder(folder, app_id):
    client = make_client(folder, EDITING_ENABLED=True)
    before = snapshot(folder)
    answer = client.post("/cfg/apps", json={"id": app_id})
    assert answer.status_code == 422
    assert answer.json["detail"][0]["loc"] == ["body", "id"]
    assert snapshot(folder) == before
    assert sorted(p.name for p in folder.parent.iterdir()) == ["catalog"]


def test_versions_are_added_and_removed(folder):
    client = make_client(folder, EDITING_ENABLED=True)
    body = {"version": "108.0.0+build.7", "container": "nvcr.io/x", "container_version": "108"}
    created = client.post("/cfg/apps/usd-viewer/versions", json=body)
    assert (created.status_code, created.json) == (201, {"version": "108.0.0+build.7"})
    listed = client.get("/cfg/apps/usd-viewer/versions").json["items"]
    assert listed[0]["version"] == "108.0.0+build.7"
    assert client.post("/cfg/apps/usd-viewer/versions", json=body).status_code == 409
    assert client.post("/cfg/apps/usd-viewer/versions", json={"version": "v1"}).status_code == 422
    assert client.post("/cfg/apps/nope/versions", json={"version": "1.0.0"}).status_code == 404

    assert client.get("/cfg/apps/usd-viewer/versions/108.0.0+build.7").status_code == 200
    deleted = client.delete("/cfg/apps/usd-viewer/versions", json={"version": "108.0.0+build.7"})
    assert deleted.status_code == 204
    assert client.delete("/cfg/apps/usd-viewer/versions/106.5.0").status_code == 204
    assert client.delete("/cfg/apps/usd-viewer/versions/106.5.0").status_code == 404
    versions = [v["version"] for v in client.get("/cfg/apps/usd-viewer/versions").json["items"]]
    assert versions == ["107.3.2"]
    # A fresh reader of the folder sees the same.
    assert [v.version for v in FileCatalog(folder).versions("usd-viewer")] == ["107.3.2"]


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("container", "UPPER/Case", "is not an image name"),
        ("container", "nvcr.io/x y", "is not an image name"),
        ("container", "nvcr.io/x/", "is not an image name"),
        ("container", "nvcr.io/x:1", "is not an image name"),  # a tag goes in container_version
        ("container_version", "1\nx", "is not an image tag"),
        ("container_version", ".hidden", "is not an image tag"),
        ("container_version", "-rc1", "is not an image tag"),
    ],
)
def test_a_version_naming_no_valid_image_is_422_and_changes_nothing(folder, field, value, words):
    client = make_client(folder, EDITING_ENABLED=True)
    before = snapshot(folder)
    body = {"version": "9.0.0", "container": "nvcr.io/x", "container_version": "9", field: value}
    answer = client.post("/cfg/apps/usd-viewer/versions", json=body)
    assert answer.status_code == 422, answer.json
    (problem,) = answer.json["detail"]
    assert problem["loc"] == ["body", field]
    assert words in problem["msg"]
    assert snapshot(folder) == before
    # The newest version is unchanged, so starts without a version still run.
    started = client.post("/streaming/stream", json={"id": "usd-viewer", "profile": "default"})
    assert started.status_code in (200, 202), started.json
    assert started.json["version"] == "107.3.2"


@pytest.mark.parametrize(
    ("container", "tag"),
    [
        ("localhost:5000/kit", "1.0"),
        ("[::1]:5000/team/kit__viewer", "v1_2-rc.3"),
        ("registry.example.com/a/b/c", "latest"),
        ("nvcr.io/x@sha256:" + "ab" * 32, ""),
    ],
)
def test_every_form_of_the_reference_grammar_is_accepted(folder, container, tag):
    client = make_client(folder, EDITING_ENABLED=True)
    body = {"version": "9.0.0", "container": container, "container_version": tag}
    assert client.post("/cfg/apps/usd-viewer/versions", json=body).status_code == 201


def test_deleting_an_application_removes_its_versions_and_keeps_sessions(folder):
    client = make_client(folder, EDITING_ENABLED=True)
    started = client.post("/streaming/stream", json={"id": "usd-viewer", "profile": "default"})
    assert client.delete("/cfg/apps/usd-viewer").status_code == 204
    # usd-viewer.yaml held only the application and its versions.
    assert not (folder / "usd-viewer.yaml").exists()
    assert FileCatalog(folder).problems == []
    assert client.get(f"/streaming/stream/{started.json['id']}").status_code == 200


def _add_versions(folder: str, worker: int, count: int) -> None:
    catalog = FileCatalog(folder, reload_interval=0)
    from ovas.models import Version

    for i in range(count):
        catalog.create_version(Version("usd-viewer", f"{worker}.{i}.0"))


def test_concurrent_writers_in_several_processes_lose_nothing(folder):
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_add_versions, args=(str(folder), w, 8)) for w in (1, 2, 3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    versions = {v.version for v in FileCatalog(folder).versions("usd-viewer")}
    assert {f"{w}.{i}.0" for w in (1, 2, 3) for i in range(8)} <= versions
    assert not list(folder.glob(".*.tmp"))


def test_a_crash_mid_write_leaves_the_old_file_whole(folder, monkeypatch):
    catalog = FileCatalog(folder, reload_interval=0)
    before = snapshot(folder)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("ovas.catalog_files.os.replace", crash)
    from ovas.models import Version

    with pytest.raises(OSError):
        catalog.create_version(Version("usd-viewer", "9.0.0"))
    assert snapshot(folder) == before
    assert not list(folder.glob(".*.tmp"))


def test_a_file_being_hand_edited_is_never_overwritten(folder):
    client = make_client(folder, EDITING_ENABLED=True)
    broken = "apiVersion: omniverse.nvidia.com/v1\nkind: Application\nmetadata: {name: [\n"
    (folder / "factory.yaml").write_text(broken)
    before = snapshot(folder)
    answer = client.post("/cfg/apps", json={"id": "factory"})
    assert answer.status_code == 409
    assert "factory.yaml cannot be read" in answer.json["detail"]
    assert snapshot(folder) == before


def test_a_folder_where_the_file_would_go_is_409_without_server_paths(folder):
    client = make_client(folder, EDITING_ENABLED=True)
    (folder / "factory.yaml").mkdir()
    before = snapshot(folder)
    answer = client.post("/cfg/apps", json={"id": "factory"})
    assert answer.status_code == 409
    assert answer.json["detail"] == (
        "factory.yaml cannot be read, so ovas will not rewrite it; fix the file first "
        "(Is a directory)"
    )
    assert str(folder.parent) not in answer.get_data(as_text=True)
    assert snapshot(folder) == before
    # Nothing else the catalog answers names where it lives either.
    for path in ("/ready", "/cfg/apps", "/cfg/apps/factory"):
        assert str(folder.parent) not in client.get(path).get_data(as_text=True), path


def test_an_edit_that_would_rewrite_a_json_file_or_a_list_is_409_and_changes_nothing(folder):
    (folder / "usd-viewer.yaml").rename(folder / "usd-viewer.json")
    documents = list(yaml.safe_load_all((folder / "usd-viewer.json").read_text()))
    (folder / "usd-viewer.json").write_text("\n".join(json.dumps(d) for d in documents if d))
    listed = {
        "apiVersion": "v1",
        "kind": "List",
        "items": list(yaml.safe_load_all((folder / "usd-composer.yaml").read_text())),
    }
    (folder / "usd-composer.yaml").write_text(yaml.safe_dump(listed))
    client = make_client(folder, EDITING_ENABLED=True)
    assert client.get("/cfg/apps/usd-viewer").status_code == 200
    assert client.get("/cfg/apps/usd-composer").status_code == 200
    before = {p.name: p.read_text() for p in folder.iterdir() if p.is_file()}
    for method, path, body, words in [
        ("patch", "/cfg/apps/usd-viewer", {"name": "x"}, "usd-viewer.json is a JSON file"),
        ("post", "/cfg/apps/usd-viewer/versions", {"version": "9.0.0"}, "is a JSON file"),
        ("delete", "/cfg/apps/usd-composer", None, "usd-composer.yaml is a list object"),
    ]:
        answer = getattr(client, method)(path, json=body)
        assert answer.status_code == 409, (path, answer.json)
        assert words in answer.json["detail"]
    assert snapshot(folder) == {k: v for k, v in before.items() if k.endswith(".yaml")}
    assert (folder / "usd-viewer.json").read_text() == before["usd-viewer.json"]
    # Edits of plain YAML documents go on as before.
    assert client.post("/cfg/apps", json={"id": "factory"}).status_code == 201
