"""OVAS custom resources (`omniverse.nvidia.com/v1`), and ovas's own (`ovas.io/v1alpha1`:
`WarmPool`), to and from ovas models.

The same documents live in a folder (`ovas.catalog_files`) or in a cluster (the Kubernetes
backend's catalog). Readers raise `ValueError("field: what is wrong")`.
"""

from __future__ import annotations

import re
from typing import Any

from ovas.kitspec import check_strings, parse_kit, quote_hint, render_values
from ovas.lifecycle import DURATION_ANNOTATIONS, parse_seconds
from ovas.models import Application, Profile, SupportedApplication, Version, WarmPool
from ovas.names import APP_ID_PATTERN, VERSION_IMAGE_FIELDS, image_problem, is_semver

API_VERSION = "omniverse.nvidia.com/v1"
GROUP, API = API_VERSION.split("/")
APPLICATION = "Application"
VERSION = "ApplicationVersion"
PROFILE = "ApplicationProfile"
KINDS = (APPLICATION, VERSION, PROFILE)
PLURALS = {
    APPLICATION: "applications",
    VERSION: "applicationversions",
    PROFILE: "applicationprofiles",
}

POOL_API_VERSION = "ovas.io/v1alpha1"
POOL_GROUP, POOL_API = POOL_API_VERSION.split("/")
WARM_POOL = "WarmPool"
POOL_PLURAL = "warmpools"
MAX_POOL_SIZE = 100

_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$")


def is_label_value(value: str) -> bool:
    return bool(_LABEL_VALUE.match(value))


def resource_name(text: str) -> str:
    """A valid object name made from `text` (lowercase; `+` and other marks become `-`)."""
    name = re.sub(r"[^a-z0-9.-]+", "-", text.lower()).strip("-.")
    return name[:253].rstrip("-.") or "x"


def _meta(doc: dict[str, Any]) -> tuple[str, dict[str, str]]:
    metadata = doc.get("metadata")
    if not isinstance(metadata, dict):
        raise ValueError("metadata: must be a mapping")
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("metadata.name: is required")
    labels = metadata.get("labels") or {}
    if not isinstance(labels, dict):
        raise ValueError("metadata.labels: must be a mapping")
    for key, value in labels.items():
        # Kubernetes label values are strings; `kubectl apply` refuses `version: 1.0`.
        if value is not None and not isinstance(value, str):
            raise ValueError(f"metadata.labels.{key}: must be a string{quote_hint(value)}")
    return name, {str(k): v or "" for k, v in labels.items()}


def _spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc.get("spec")
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise ValueError("spec: must be a mapping")
    return spec


def _text(spec: dict[str, Any], key: str, default: str = "") -> str:
    """`spec.key`, which the CRD schema (config/deploy/crds.yaml) types as a string. Any other
    YAML type is an error, never converted: YAML reads `1.10` as the number 1.1, and
    Kubernetes refuses the document."""
    value = spec.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ValueError(f"spec.{key}: must be a string{quote_hint(value)}")
    return value


def application_from_resource(doc: dict[str, Any]) -> Application:
    name, labels = _meta(doc)
    spec = _spec(doc)
    tags = spec.get("tags")
    if tags is None:
        tags = [k for k, v in labels.items() if v.lower() == "true"]
    elif not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ValueError("spec.tags: must be a list of strings")
    return Application(
        id=name,
        name=_text(spec, "name", name),
        description=_text(spec, "description"),
        tags=tuple(tags),
    )


def version_from_resource(doc: dict[str, Any]) -> Version:
    _name, labels = _meta(doc)
    spec = _spec(doc)
    app_id = labels.get("app") or labels.get("applicationName")
    if not app_id:
        raise ValueError("metadata.labels.app: is required (the application's id)")
    version = _text(spec, "version") or labels.get("version", "")
    if not version:
        raise ValueError("metadata.labels.version: is required (or spec.version)")
    if not is_semver(version):
        raise ValueError(f"metadata.labels.version: '{version}' is not a semantic version")
    container, tag = _text(spec, "container"), _text(spec, "container_version")
    problem = image_problem(container, tag)
    if problem:
        raise ValueError(f"spec.{VERSION_IMAGE_FIELDS[problem[0]]}: {problem[1]}")
    return Version(
        app_id=app_id,
        version=version,
        container=container,
        container_version=tag,
        helm_chart=_text(spec, "helm_chart"),
        helm_chart_version=_text(spec, "helm_chart_version"),
    )


def warm_pool_from_resource(doc: dict[str, Any]) -> WarmPool:
    """A `WarmPool`: `spec: {application, version, profile, size}`; `version` a semver or
    "latest", `size` a whole number 0-100. Types are checked as the CRD's schema has them,
    never coerced."""
    name, _labels = _meta(doc)
    spec = _spec(doc)
    values = {}
    for key in ("application", "version", "profile"):
        value = spec.get(key)
        if not isinstance(value, str) or not value:
            raise ValueError(f"spec.{key}: is required, a string")
        values[key] = value
    if not APP_ID_PATTERN.match(values["application"]):
        raise ValueError(f"spec.application: '{values['application']}' is not an application id")
    if values["version"] != "latest" and not is_semver(values["version"]):
        raise ValueError(f"spec.version: '{values['version']}' is neither a semver nor latest")
    size = spec.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_POOL_SIZE:
        raise ValueError(f"spec.size: must be a whole number from 0 to {MAX_POOL_SIZE}")
    return WarmPool(name=name, size=size, **values)


def profile_from_resource(doc: dict[str, Any]) -> Profile:
    name, _labels = _meta(doc)
    spec = _spec(doc)
    entries = spec.get("supportedApplications") or []
    if not isinstance(entries, list):
        raise ValueError("spec.supportedApplications: must be a list")
    supported = []
    for i, entry in enumerate(entries):
        where = f"spec.supportedApplications[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ValueError(f"{where}.name: must be a string glob")
        versions = entry.get("versions", ["*"])
        if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
            raise ValueError(f"{where}.versions: must be a list of string globs")
        supported.append(SupportedApplication(entry["name"], tuple(versions)))
    mappings = spec.get("chartMappings") or {}
    if not isinstance(mappings, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in mappings.items()
    ):
        raise ValueError("spec.chartMappings: must map field names to dotted value paths")
    values = spec.get("chartValues") or {}
    if not isinstance(values, dict):
        raise ValueError("spec.chartValues: must be a mapping")
    profile = Profile(
        id=name,
        name=_text(spec, "name", name),
        description=_text(spec, "description"),
        supported_applications=tuple(supported),
        chart_mappings=dict(mappings),
        chart_values=values,
        annotations=_annotations(doc),
    )
    _check_values(profile)
    return profile


def _annotations(doc: dict[str, Any]) -> dict[str, str]:
    """`metadata.annotations`, with every duration (`ovas/idle-timeout`, `ovas/max-pending`...)
    checked against its range (`ovas.bounds`)."""
    raw = doc["metadata"].get("annotations") or {}
    if not isinstance(raw, dict):
        raise ValueError("metadata.annotations: must be a mapping")
    annotations = {}
    for key, value in raw.items():
        if not isinstance(value, str):
            # Kubernetes refuses annotation values that are not strings; so does ovas.
            raise ValueError(f"metadata.annotations.{key}: must be a string (quote it)")
        annotations[str(key)] = value
    for key in DURATION_ANNOTATIONS:
        if key in annotations:
            parse_seconds(annotations[key], f"metadata.annotations.{key}")
    return annotations


def _check_values(profile: Profile) -> None:
    """Render the profile for a placeholder version, so a broken profile is reported when it
    is loaded rather than when a user asks for a stream."""
    probe_app = Application("app", "app")
    probe_version = Version("app", "1.0.0", "registry.example/app", "1.0.0", "chart", "1.0.0")
    try:
        # The profile's own values too: a number that a version field is mapped over is
        # harmless today, and wrong (the chart reads a string) once the mapping goes.
        check_strings(profile.chart_values)
        parse_kit(render_values(profile, probe_app, probe_version, "session"))
    except ValueError as exc:
        raise ValueError(f"spec.chartValues.{exc}") from None


def application_to_resource(app: Application) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": APPLICATION,
        "metadata": {"name": app.id},
        "spec": {"name": app.name, "description": app.description, "tags": list(app.tags)},
    }


def version_to_resource(version: Version) -> dict[str, Any]:
    labels = {"app": version.app_id, "applicationName": version.app_id}
    spec: dict[str, Any] = {
        "container": version.container,
        "container_version": version.container_version,
        "helm_chart": version.helm_chart,
        "helm_chart_version": version.helm_chart_version,
    }
    if is_label_value(version.version):
        labels["version"] = version.version
    else:
        spec["version"] = version.version
    return {
        "apiVersion": API_VERSION,
        "kind": VERSION,
        "metadata": {
            "name": resource_name(f"{version.app_id}-{version.version}"),
            "labels": labels,
        },
        "spec": spec,
    }
