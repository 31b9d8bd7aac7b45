"""Strings stay strings everywhere in a profile: every field that reaches an image reference,
an environment value, a label or an annotation is read as the CRD (or Kubernetes, for the
chart values) types it, in `ovas catalog check` and at load. YAML reads `2024.10` as the
number 2024.1; such a value is reported, never run."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ovas import create_app
from ovas.catalog_files import FileCatalog
from ovas.kitspec import STRING_FIELDS
from ovas.testing import FakeBackend

SAMPLE = Path(__file__).resolve().parents[1] / "config" / "catalog"
PROBE = {"httpGet": {"path": "/health", "scheme": "HTTP", "port": 8011}}
# A profile holding a string in every string field ovas reads.
FULL = {
    "apiVersion": "omniverse.nvidia.com/v1",
    "kind": "ApplicationProfile",
    "metadata": {
        "name": "full",
        "labels": {"team": "ops"},
        "annotations": {"ovas/idle-timeout": "60", "note": "kept"},
    },
    "spec": {
        "name": "Full",
        "description": "Every string field",
        "supportedApplications": [{"name": "*", "versions": ["*"]}],
        "chartMappings": {"container": "streamingKit.image.repository"},
        "chartValues": {
            "global": {"imagePullSecrets": [{"name": "ngc"}]},
            "streamingKit": {
                "image": {
                    "repository": "registry.example/kit",
                    "tag": "2024.10",
                    "pullPolicy": "IfNotPresent",
                },
                "env": [{"name": "USD_PATH", "value": "/app/samples/stage01.usd"}],
                "startupProbe": copy.deepcopy(PROBE),
                "readinessProbe": copy.deepcopy(PROBE),
                "labels": {"tier": "gpu"},
                "annotations": {"owner": "ops"},
                "nodeSelector": {"gpu": "l40"},
                "runtimeClassName": "nvidia",
                "service": {"type": "NodePort", "annotations": {"lb": "internal"}},
                "ports": {"signaling": 49100, "media": 47998},
            },
        },
    },
}


def string_leaves(node: Any, path: str = ""):
    """(dotted path, its parent, key) of every string in `node`."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        where = f"{path}[{key}]" if isinstance(node, list) else f"{path}.{key}".lstrip(".")
        if isinstance(value, str):
            yield where, node, key
        elif isinstance(value, dict | list):
            yield from string_leaves(value, where)


def problems_of(folder: Path, document: dict) -> list[str]:
    (folder / "profile.yaml").write_text(yaml.safe_dump(document))
    return FileCatalog(folder).problems


def test_the_full_profile_loads_with_every_string_field_set(tmp_path):
    assert problems_of(tmp_path, FULL) == []
    paths = {p for p, _, _ in string_leaves(FULL["spec"]["chartValues"])}
    for field in STRING_FIELDS:  # the sample sets each field the check knows
        pattern = field.replace("[]", "[0]").replace("*", "")
        assert any(p.startswith(pattern.rstrip(".")) for p in paths), field


@pytest.mark.parametrize("value", [2024.1, 7, True, {"a": "b"}, ["a"]])
def test_every_string_field_of_a_profile_refuses_any_other_type(tmp_path, value):
    leaves = [p for p, _, _ in string_leaves(FULL) if p not in ("apiVersion", "kind")]
    assert len(leaves) >= 20
    for path in leaves:
        document = copy.deepcopy(FULL)
        parent, key = next((n, k) for p, n, k in string_leaves(document) if p == path)
        parent[key] = value
        problems = problems_of(tmp_path, document)
        assert len(problems) == 1, (path, problems)
        field = problems[0].removeprefix("profile.yaml (document 1): ").split(": ")[0]
        assert path.startswith(field) and "." in field, (path, problems[0])


def test_a_float_image_tag_is_reported_by_catalog_check_and_never_run(tmp_path):
    folder = tmp_path / "catalog"
    folder.mkdir()
    (folder / "standin.yaml").write_text((SAMPLE / "standin.yaml").read_text())
    document = copy.deepcopy(FULL)
    document["spec"]["chartValues"]["streamingKit"]["image"]["tag"] = 2024.10
    (folder / "profile.yaml").write_text(yaml.safe_dump(document))
    expected = (
        "profile.yaml (document 1): spec.chartValues.streamingKit.image.tag: must be a "
        "string, not float 2024.1 (quote it)"
    )

    checked = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "ovas", "ovas", "catalog", "check", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 1
    assert f"error: {expected}" in checked.stderr

    backend = FakeBackend(FileCatalog(folder))
    client = create_app({"TESTING": True, "REAP_INTERVAL": 0}, backend=backend).test_client()
    assert expected in client.get("/ready").json["catalog_problems"]
    answer = client.post("/streaming/stream", json={"id": "standin", "profile": "full"})
    assert answer.status_code == 404
    assert backend.workloads == {}
