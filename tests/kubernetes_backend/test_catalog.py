"""The catalog on the OVAS custom resources: read from the cluster, edited in it."""

from __future__ import annotations

import pytest

from ovas.errors import ApplicationNotFound, Conflict, VersionNotFound
from ovas.models import Application, Version
from ovas.services import CatalogService

pytestmark = pytest.mark.kubernetes
NS = "omni-streaming"
GROUP = "omniverse.nvidia.com/v1"


def test_reads_the_sample_catalog(make_backend):
    catalog = make_backend().catalog
    assert sorted(a.id for a in catalog.applications()) == [
        "kit-standin",
        "usd-composer",
        "usd-viewer",
    ]
    assert catalog.application("usd-viewer").tags == ("USD", "viewer")
    assert sorted(v.version for v in catalog.versions("usd-viewer")) == ["106.5.0", "107.3.2"]
    assert (
        catalog.version("usd-viewer", "107.3.2").container == "nvcr.io/nvidia/omniverse/usd-viewer"
    )
    assert {p.id for p in catalog.profiles()} >= {"default", "standin"}
    assert catalog.profile("default").chart_values["streamingKit"]["ports"]["signaling"] == 49100
    with pytest.raises(ApplicationNotFound):
        catalog.versions("nope")


def test_tags_from_labels_and_versions_from_the_spec(make_backend, cluster):
    cluster.seed(
        NS,
        [
            {
                "apiVersion": GROUP,
                "kind": "Application",
                "metadata": {"name": "labelled", "labels": {"USD": "true", "beta": "false"}},
                "spec": {"name": "Labelled"},
            },
            {
                "apiVersion": GROUP,
                "kind": "ApplicationVersion",
                "metadata": {"name": "labelled-1", "labels": {"applicationName": "labelled"}},
                "spec": {"version": "1.0.0+build.5", "container": "c", "container_version": "1"},
            },
        ],
    )
    catalog = make_backend().catalog
    assert catalog.application("labelled").tags == ("USD",)
    assert [v.version for v in catalog.versions("labelled")] == ["1.0.0+build.5"]


def test_an_invalid_object_is_reported_not_served(make_backend, cluster):
    cluster.seed(
        NS,
        [
            {
                "apiVersion": GROUP,
                "kind": "ApplicationVersion",
                "metadata": {"name": "broken", "labels": {"app": "usd-viewer", "version": "x"}},
                "spec": {},
            }
        ],
    )
    catalog = make_backend().catalog
    assert len(catalog.versions("usd-viewer")) == 2
    catalog.check()  # one bad object must not make every replica unready
    assert "ApplicationVersion omni-streaming/broken: metadata.labels.version" in str(
        catalog.problems
    )


def test_edits_write_the_custom_resources_and_every_replica_sees_them(make_backend, cluster):
    editor = CatalogService(make_backend().catalog, editing_enabled=True)
    other = make_backend().catalog
    editor.create_application(Application("my-app", "Mine", "An app", ("a",)))
    with pytest.raises(Conflict):
        editor.create_application(Application("my-app", "Mine again"))
    editor.create_version(Version("my-app", "1.2.3+exp.sha.5114f85", "reg/my-app", "1.2.3"))
    editor.create_version(Version("my-app", "1.0.0", "reg/my-app", "1.0.0"))
    with pytest.raises(Conflict):
        editor.create_version(Version("my-app", "1.0.0", "reg/my-app", "1.0.0"))
    assert other.application("my-app").name == "Mine"
    assert sorted(v.version for v in other.versions("my-app")) == [
        "1.0.0",
        "1.2.3+exp.sha.5114f85",
    ]
    stored = {
        obj["metadata"]["name"]: obj
        for obj in cluster.objects(f"{GROUP}/applicationversions", NS)
        if obj["metadata"]["labels"].get("app") == "my-app"
    }
    assert stored["my-app-1.2.3-exp.sha.5114f85"]["spec"]["version"] == "1.2.3+exp.sha.5114f85"

    updated = editor.update_application("my-app", {"description": "Changed", "tags": ["b"]})
    assert (updated.name, updated.description, updated.tags) == ("Mine", "Changed", ("b",))
    assert other.application("my-app") == updated

    editor.delete_version("my-app", "1.0.0")
    with pytest.raises(VersionNotFound):
        editor.delete_version("my-app", "1.0.0")
    editor.delete_application("my-app")
    with pytest.raises(ApplicationNotFound):
        other.application("my-app")
    assert not [
        obj
        for obj in cluster.objects(f"{GROUP}/applicationversions", NS)
        if obj["metadata"]["labels"].get("app") == "my-app"
    ]


def test_an_update_racing_another_is_not_lost(make_backend, cluster):
    catalog = make_backend().catalog
    real_replace = catalog.kube.replace
    raced = []

    def replace_after_someone_else(kind, name, body):
        if not raced:
            raced.append(True)  # another replica edits between our read and our write
            other = make_backend().catalog
            other.update_application(Application("usd-viewer", "Renamed elsewhere", "x", ("z",)))
        return real_replace(kind, name, body)

    catalog.kube.replace = replace_after_someone_else
    catalog.update_application(Application("usd-viewer", "USD Viewer", "Mine", ("USD",)))
    assert raced
    assert catalog.application("usd-viewer").description == "Mine"
    versions = [c["metadata"]["resourceVersion"] for c in cluster.objects(f"{GROUP}/applications")]
    assert len(set(versions)) == len(versions)
