"""The file catalog: OVAS custom resources read from a folder, every problem reported."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ovas.catalog_files import FileCatalog
from ovas.errors import CatalogError

SAMPLE = Path(__file__).resolve().parents[1] / "config" / "catalog"
FLASK = [sys.executable, "-m", "flask", "--app", "ovas"]


def write(folder: Path, name: str, text: str) -> None:
    (folder / name).write_text(textwrap.dedent(text))


def test_sample_catalog_is_valid_and_complete():
    catalog = FileCatalog(SAMPLE)
    assert catalog.problems == []
    ids = {a.id for a in catalog.applications()}
    assert {"usd-viewer", "usd-composer"} <= ids
    assert {"default", "high-mem"} <= {p.id for p in catalog.profiles()}
    viewer = catalog.version("usd-viewer", "107.3.2")
    assert viewer.container == "nvcr.io/nvidia/omniverse/usd-viewer"


def test_labels_give_tags_and_spec_version_holds_build_metadata(tmp_path):
    write(
        tmp_path,
        "a.yml",
        """
        apiVersion: omniverse.nvidia.com/v1
        kind: Application
        metadata: {name: twin, labels: {USD: "true", viewer: "true", team: ops}}
        spec: {name: Twin}
        ---
        apiVersion: omniverse.nvidia.com/v1
        kind: ApplicationVersion
        metadata: {name: twin-1, labels: {app: twin, version: 1.0.0}}
        spec: {version: 1.0.0+build.5, container: c, container_version: "1"}
        """,
    )
    catalog = FileCatalog(tmp_path)
    assert catalog.problems == []
    assert catalog.application("twin").tags == ("USD", "viewer")
    assert [v.version for v in catalog.versions("twin")] == ["1.0.0+build.5"]


BROKEN = {
    "bad-yaml.yaml": ("key: [unclosed", "bad-yaml.yaml: cannot be read"),
    "no-name.yaml": (
        "apiVersion: omniverse.nvidia.com/v1\nkind: Application\nmetadata: {}\n",
        "no-name.yaml (document 1): metadata.name: is required",
    ),
    "kind.yaml": (
        "apiVersion: omniverse.nvidia.com/v1\nkind: Gadget\nmetadata: {name: g}\n",
        "kind.yaml (document 1): kind: must be one of",
    ),
    "semver.yaml": (
        "apiVersion: omniverse.nvidia.com/v1\nkind: ApplicationVersion\n"
        "metadata: {name: v, labels: {app: usd-viewer, version: one}}\n",
        "semver.yaml (document 1): metadata.labels.version: 'one' is not a semantic version",
    ),
    "orphan.yaml": (
        "apiVersion: omniverse.nvidia.com/v1\nkind: ApplicationVersion\n"
        "metadata: {name: v, labels: {app: ghost, version: 1.0.0}}\n",
        "orphan.yaml (document 1): metadata.labels.app: no Application 'ghost'",
    ),
    "profile.yaml": (
        "---\n---\napiVersion: omniverse.nvidia.com/v1\nkind: ApplicationProfile\n"
        "metadata: {name: p}\nspec:\n  chartValues:\n    streamingKit:\n"
        "      image: {repository: r}\n      ports: {signaling: 99999}\n",
        "profile.yaml (document 2): spec.chartValues.streamingKit.ports.signaling: 99999",
    ),
    "image.yaml": (
        "apiVersion: omniverse.nvidia.com/v1\nkind: ApplicationVersion\n"
        "metadata: {name: v, labels: {app: usd-viewer, version: 1.0.0}}\n"
        "spec: {container: UPPER/Case, container_version: '1'}\n",
        "image.yaml (document 1): spec.container: 'UPPER/Case' is not an image name",
    ),
    "tag.yaml": (
        "apiVersion: omniverse.nvidia.com/v1\nkind: ApplicationVersion\n"
        "metadata: {name: v, labels: {app: usd-viewer, version: 1.0.1}}\n"
        'spec: {container: nvcr.io/x, container_version: "1\\nx"}\n',
        "tag.yaml (document 1): spec.container_version: '1\\nx' is not an image tag",
    ),
    "float.yaml": (
        "apiVersion: omniverse.nvidia.com/v1\nkind: ApplicationVersion\n"
        "metadata: {name: v, labels: {app: usd-viewer, version: 1.0.2}}\n"
        "spec: {container: nvcr.io/x, container_version: 1.10}\n",
        "float.yaml (document 1): spec.container_version: must be a string, not float 1.1 "
        "(quote it)",
    ),
    "label.yaml": (
        "apiVersion: omniverse.nvidia.com/v1\nkind: ApplicationVersion\n"
        "metadata: {name: v, labels: {app: usd-viewer, version: 2.0}}\n",
        "label.yaml (document 1): metadata.labels.version: must be a string, not float 2.0",
    ),
    "name.yaml": (
        "apiVersion: omniverse.nvidia.com/v1\nkind: Application\n"
        "metadata: {name: dated}\nspec: {name: 2024-01-01, tags: [a]}\n",
        "name.yaml (document 1): spec.name: must be a string, not date",
    ),
    "repository.yaml": (
        "apiVersion: omniverse.nvidia.com/v1\nkind: ApplicationProfile\n"
        "metadata: {name: hardcoded}\nspec:\n  chartValues:\n    streamingKit:\n"
        "      image: {repository: Kit/Viewer, tag: '1'}\n",
        "repository.yaml (document 1): spec.chartValues.streamingKit.image.repository: "
        "'Kit/Viewer' is not an image name",
    ),
    "dup.yaml": (
        "apiVersion: omniverse.nvidia.com/v1\nkind: Application\nmetadata: {name: usd-viewer}\n",
        "duplicates Application 'usd-viewer'",
    ),
}


@pytest.fixture
def broken(tmp_path):
    folder = tmp_path / "catalog"
    shutil.copytree(SAMPLE, folder)
    for name, (text, _) in BROKEN.items():
        (folder / name).write_text(text)
    return folder


def test_every_invalid_document_is_reported_with_file_and_field(broken):
    catalog = FileCatalog(broken)
    problems = "\n".join(catalog.problems)
    for name, (_, expected) in BROKEN.items():
        assert expected in problems, name
    assert len(catalog.problems) == len(BROKEN)
    # The valid documents are still served.
    assert {"usd-viewer", "usd-composer"} <= {a.id for a in catalog.applications()}
    catalog.check()  # readable: the bad documents alone do not make the catalog unusable
    with pytest.raises(CatalogError, match="does not exist"):
        FileCatalog(broken / "missing").check()


def test_cli_check_lists_problems_and_fails(broken):
    result = subprocess.run(
        [*FLASK, "ovas", "catalog", "check", str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    for _, expected in BROKEN.values():
        assert expected in result.stderr


def test_cli_check_passes_on_the_sample():
    result = subprocess.run(
        [*FLASK, "ovas", "catalog", "check", str(SAMPLE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: ")


def test_problems_reach_the_log_and_ready_without_making_it_fail(broken, caplog):
    from ovas import create_app
    from ovas.testing import FakeBackend

    app = create_app({"TESTING": True}, backend=FakeBackend(FileCatalog(broken)))
    client = app.test_client()
    with caplog.at_level("ERROR", logger="ovas"):
        answer = client.get("/ready")
    assert answer.status_code == 200
    assert any(
        "no-name.yaml (document 1): metadata.name" in p for p in answer.json["catalog_problems"]
    )
    assert any("no-name.yaml" in r.getMessage() for r in caplog.records)


def test_edits_made_elsewhere_are_seen(tmp_path):
    shutil.copytree(SAMPLE, tmp_path / "c")
    catalog = FileCatalog(tmp_path / "c", reload_interval=0)
    assert "twin" not in {a.id for a in catalog.applications()}
    write(
        tmp_path / "c",
        "twin.yaml",
        "apiVersion: omniverse.nvidia.com/v1\nkind: Application\nmetadata: {name: twin}\n",
    )
    assert "twin" in {a.id for a in catalog.applications()}


def test_warm_pools_are_read_and_checked_as_their_crd_says(tmp_path):
    shutil.copy(SAMPLE / "usd-viewer.yaml", tmp_path)
    shutil.copy(SAMPLE / "profiles.yaml", tmp_path)
    write(
        tmp_path,
        "pools.yaml",
        """
        apiVersion: ovas.io/v1alpha1
        kind: WarmPool
        metadata: {name: viewers}
        spec: {application: usd-viewer, version: latest, profile: default, size: 2}
        ---
        apiVersion: ovas.io/v1alpha1
        kind: WarmPool
        metadata: {name: quoted-size}
        spec: {application: usd-viewer, version: latest, profile: default, size: "2"}
        ---
        apiVersion: ovas.io/v1alpha1
        kind: WarmPool
        metadata: {name: no-such-app}
        spec: {application: nope, version: 1.0.0, profile: default, size: 1}
        ---
        apiVersion: ovas.io/v1alpha1
        kind: WarmPool
        metadata: {name: bad-version}
        spec: {application: usd-viewer, version: newest, profile: default, size: 1}
        ---
        apiVersion: omniverse.nvidia.com/v1
        kind: WarmPool
        metadata: {name: wrong-group}
        spec: {application: usd-viewer, version: latest, profile: default, size: 1}
        """,
    )
    catalog = FileCatalog(tmp_path)
    (pool,) = catalog.warm_pools()
    assert (pool.name, pool.application, pool.version, pool.profile, pool.size) == (
        "viewers",
        "usd-viewer",
        "latest",
        "default",
        2,
    )
    problems = "\n".join(catalog.problems)
    assert "pools.yaml (document 2): spec.size: must be a whole number" in problems
    assert "pools.yaml (document 3): spec.application: no Application 'nope'" in problems
    assert "pools.yaml (document 4): spec.version: 'newest' is neither" in problems
    assert "pools.yaml (document 5): apiVersion: must be ovas.io/v1alpha1" in problems


def test_every_form_kubectl_apply_reads_is_served(tmp_path):
    app = {"apiVersion": "omniverse.nvidia.com/v1", "kind": "Application"}
    version = {"apiVersion": "omniverse.nvidia.com/v1", "kind": "ApplicationVersion"}
    write(
        tmp_path,
        "list.yaml",
        """
        apiVersion: v1
        kind: List
        items:
          - {apiVersion: omniverse.nvidia.com/v1, kind: Application, metadata: {name: listed}}
          - apiVersion: omniverse.nvidia.com/v1
            kind: ApplicationVersion
            metadata: {name: listed-1, labels: {app: listed, version: 1.0.0}}
            spec: {container: nvcr.io/x/listed, container_version: "1.0"}
        """,
    )
    write(
        tmp_path,
        "typed.yml",
        """
        apiVersion: omniverse.nvidia.com/v1
        kind: ApplicationProfileList
        items:
          - apiVersion: omniverse.nvidia.com/v1
            kind: ApplicationProfile
            metadata: {name: typed}
            spec:
              supportedApplications: [{name: "*"}]
              chartMappings: {container: streamingKit.image.repository}
              chartValues: {streamingKit: {image: {repository: ""}}}
        """,
    )
    (tmp_path / "one.json").write_text(json.dumps({**app, "metadata": {"name": "jsonapp"}}))
    labels = {"app": "jsonapp", "version": "2.0.0"}
    (tmp_path / "stream.json").write_text(
        json.dumps({**app, "metadata": {"name": "second"}})
        + "\n"
        + json.dumps({**version, "metadata": {"name": "j-2", "labels": labels}})
    )
    catalog = FileCatalog(tmp_path)
    assert catalog.problems == []
    assert {a.id for a in catalog.applications()} == {"listed", "jsonapp", "second"}
    assert catalog.version("listed", "1.0.0").container_version == "1.0"
    assert [v.version for v in catalog.versions("jsonapp")] == ["2.0.0"]
    assert [p.id for p in catalog.profiles()] == ["typed"]


def test_problems_in_lists_and_json_name_file_item_and_field(tmp_path):
    write(
        tmp_path,
        "list.yaml",
        """
        apiVersion: v1
        kind: List
        items:
          - {apiVersion: omniverse.nvidia.com/v1, kind: Application, metadata: {name: ok}}
          - {apiVersion: omniverse.nvidia.com/v1, kind: Application, metadata: {name: n},
             spec: {name: 7}}
        """,
    )
    (tmp_path / "broken.json").write_text('{"apiVersion": "omniverse.nvidia.com/v1",')
    (tmp_path / "tags.json").write_text(
        json.dumps(
            {
                "apiVersion": "omniverse.nvidia.com/v1",
                "kind": "Application",
                "metadata": {"name": "t"},
                "spec": {"tags": "USD"},
            }
        )
    )
    problems = FileCatalog(tmp_path).problems
    assert problems == [
        "broken.json: cannot be read: Expecting property name enclosed in double quotes: "
        "line 1 column 42 (char 41)",
        "list.yaml (document 1, items[1]): spec.name: must be a string, not int 7 (quote it)",
        "tags.json (document 1): spec.tags: must be a list of strings",
    ]
    result = subprocess.run(
        [*FLASK, "ovas", "catalog", "check", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert all(f"error: {p}" in result.stderr for p in problems)


# Files no parser or reader can take, each as a user met it; all are reported and skipped.
UNREADABLE_FILES = {
    "deep.yaml": ("a: " + "[" * 500 + "]" * 500 + "\n", "deep.yaml: cannot be read: it is nested"),
    "deep.json": ("[" * 1000 + "]" * 1000, "deep.json: cannot be read: it is nested deeper"),
    "loop.yaml": (None, "loop.yaml: cannot be read: Too many levels of symbolic links"),
    "dangling.yaml": (None, "dangling.yaml: cannot be read: No such file or directory"),
}


@pytest.fixture
def unreadable(tmp_path):
    folder = tmp_path / "catalog"
    shutil.copytree(SAMPLE, folder)
    for name, (text, _) in UNREADABLE_FILES.items():
        if text is not None:
            (folder / name).write_text(text)
    (folder / "loop.yaml").symlink_to(folder / "loop-back")
    (folder / "loop-back").symlink_to(folder / "loop.yaml")
    (folder / "dangling.yaml").symlink_to(folder / "gone")
    return folder


def test_files_that_cannot_be_read_are_named_and_skipped_never_a_500(unreadable):
    from ovas import create_app
    from ovas.testing import FakeBackend

    client = create_app(
        {"TESTING": True, "REAP_INTERVAL": 0}, backend=FakeBackend(FileCatalog(unreadable))
    ).test_client()
    assert {a["id"] for a in client.get("/cfg/apps").json["items"]} >= {"usd-viewer"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    problems = "\n".join(ready.json["catalog_problems"])
    for name, (_, expected) in UNREADABLE_FILES.items():
        assert expected in problems, name
    assert str(unreadable) not in ready.get_data(as_text=True)
    started = client.post("/streaming/stream", json={"id": "usd-viewer", "profile": "default"})
    assert started.status_code in (200, 202)

    checked = subprocess.run(
        [*FLASK, "ovas", "catalog", "check", str(unreadable)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 1
    for _, expected in UNREADABLE_FILES.values():
        assert f"error: {expected}" in checked.stderr
    assert "Traceback" not in checked.stderr


def test_a_catalog_path_that_is_a_symlink_loop_is_named_never_a_traceback(tmp_path):
    from ovas import create_app
    from ovas.testing import FakeBackend

    loop = tmp_path / "catalog"
    loop.symlink_to(tmp_path / "again")
    (tmp_path / "again").symlink_to(loop)
    why = "the catalog folder (OVAS_CATALOG_PATH) cannot be read: Too many levels of symbolic"

    client = create_app(
        {"TESTING": True, "REAP_INTERVAL": 0}, backend=FakeBackend(FileCatalog(loop))
    ).test_client()
    ready = client.get("/ready")
    assert ready.status_code == 503 and why in ready.json["detail"]
    assert client.get("/cfg/apps").status_code < 500

    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYTHONPATH": str(SAMPLE.parents[1]),  # this checkout's ovas, wherever it is installed
        "OVAS_CATALOG_PATH": str(loop),
    }
    for args in (["catalog", "check"], ["catalog", "check", str(loop)]):
        checked = subprocess.run(
            [str(Path(sys.executable).parent / "ovas"), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert checked.returncode == 1, checked.stderr
        assert f"error: {why}" in checked.stderr
        assert "Traceback" not in checked.stderr
