"""Chart values: the profile's `chartValues` with the version mapped in, and the Kit container
spec that both built-in backends read from `streamingKit`.

Pure functions; no I/O. `parse_kit` raises `ValueError` naming the offending field.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from ovas.bounds import FRACTIONAL_SECONDS, TRIES
from ovas.models import Application, Profile, Version
from ovas.names import image_problem

DEFAULT_SIGNALING_PORT = 49100
DEFAULT_MEDIA_PORT = 47998
GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class Probe:
    """A startup or readiness probe, `httpGet` or `tcpSocket`, against a container port."""

    kind: str  # "http" or "tcp"
    port: int
    path: str = "/"
    scheme: str = "HTTP"
    initial_delay_seconds: float = 0
    period_seconds: float = 10
    timeout_seconds: float = 1
    failure_threshold: int = 3


@dataclass(frozen=True)
class KitSpec:
    """What a backend needs to run one Kit container."""

    image: str
    pull_policy: str = "IfNotPresent"
    env: tuple[tuple[str, str], ...] = ()
    cpu_limit: str | None = None
    memory_limit: str | None = None
    gpus: int = 0
    signaling_port: int = DEFAULT_SIGNALING_PORT
    media_port: int = DEFAULT_MEDIA_PORT
    startup_probe: Probe | None = None
    readiness_probe: Probe | None = None

    @property
    def probe(self) -> Probe | None:
        """The probe that decides readiness: the startup probe, else the readiness probe."""
        return self.startup_probe or self.readiness_probe

    @property
    def env_dict(self) -> dict[str, str]:
        return dict(self.env)


def mapping_sources(app: Application, version: Version, session_id: str) -> dict[str, str]:
    """The values a `chartMappings` key may name: the version's fields, `name` (the session's
    unique name), `app` and `version`."""
    return {
        "container": version.container,
        "container_version": version.container_version,
        "helm_chart": version.helm_chart,
        "helm_chart_version": version.helm_chart_version,
        "name": session_id,
        "app": app.id,
        "version": version.version,
    }


def set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in nested dicts, creating the dicts on the way."""
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[keys[-1]] = value


def render_values(
    profile: Profile,
    app: Application,
    version: Version,
    session_id: str,
    usd_stage_uri: str | None = None,
) -> dict[str, Any]:
    """The profile's chart values with `chartMappings` applied and `USD_PATH` overridden.

    Never changes the profile. An empty or missing `usd_stage_uri` keeps the profile's
    `USD_PATH`.
    """
    values = copy.deepcopy(profile.chart_values)
    sources = mapping_sources(app, version, session_id)
    for source, target in profile.chart_mappings.items():
        if source in sources:
            set_path(values, target, sources[source])
    if usd_stage_uri:
        kit = values.setdefault("streamingKit", {})
        env = [e for e in kit.get("env") or [] if not _is_env(e, "USD_PATH")]
        env.append({"name": "USD_PATH", "value": usd_stage_uri})
        kit["env"] = env
    return values


def _is_env(entry: Any, name: str) -> bool:
    return isinstance(entry, dict) and entry.get("name") == name


# Every chart value ovas reads that reaches an image reference, an environment value, a
# label or an annotation, or another field Kubernetes types as a string: `[]` is each item
# of a list, `*` each value of a mapping. YAML reads `tag: 2024.10` as the number 2024.1, so
# any other type is refused, never converted (`check_strings`).
STRING_FIELDS = (
    "streamingKit.image.repository",
    "streamingKit.image.tag",
    "streamingKit.image.pullPolicy",
    "streamingKit.env[].name",
    "streamingKit.env[].value",
    "streamingKit.startupProbe.httpGet.path",
    "streamingKit.startupProbe.httpGet.scheme",
    "streamingKit.readinessProbe.httpGet.path",
    "streamingKit.readinessProbe.httpGet.scheme",
    "streamingKit.labels.*",
    "streamingKit.annotations.*",
    "streamingKit.nodeSelector.*",
    "streamingKit.runtimeClassName",
    "streamingKit.service.type",
    "streamingKit.service.annotations.*",
    "global.imagePullSecrets[].name",
)


def check_strings(values: dict[str, Any]) -> None:
    """Raise ValueError naming the first of `STRING_FIELDS` in `values` that holds anything
    but a string (an unset one, or null, is left to its default)."""
    for field in STRING_FIELDS:
        for where, value in _at(values, field.split("."), ""):
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{where}: must be a string{quote_hint(value)}")


def _at(node: Any, keys: list[str], where: str):
    """(path, value) for each value `keys` reach in `node`; none where a step is missing or
    not the container it names (that is the reader's to report)."""
    if not keys:
        yield where, node
        return
    key, rest = keys[0], keys[1:]
    if key == "*":
        if isinstance(node, dict):
            for name, child in node.items():
                yield from _at(child, rest, f"{where}.{name}")
        return
    listed = key.endswith("[]")
    key = key.removesuffix("[]")
    child = node.get(key) if isinstance(node, dict) else None
    path = f"{where}.{key}" if where else key
    if not listed:
        if child is not None or not rest:
            yield from _at(child, rest, path)
    elif isinstance(child, list):
        for index, item in enumerate(child):
            yield from _at(item, rest, f"{path}[{index}]")


def quote_hint(value: Any) -> str:
    """What a value that should have been a string is, for an error message."""
    if isinstance(value, dict | list):
        return f", not a {'mapping' if isinstance(value, dict) else 'list'}"
    return f", not {type(value).__name__} {value!r} (quote it)"


def parse_kit(values: dict[str, Any]) -> KitSpec:
    """Read `streamingKit` out of rendered chart values. Raises ValueError naming the field."""
    kit = values.get("streamingKit")
    if not isinstance(kit, dict):
        raise ValueError("streamingKit: must be a mapping")
    check_strings(values)
    image = _mapping(kit, "image")
    repository = _str(image, "repository", "streamingKit.image")
    tag = _str(image, "tag", "streamingKit.image")
    if not repository:
        raise ValueError("streamingKit.image.repository: is empty (map `container` to it)")
    if problem := image_problem(repository, tag):
        raise ValueError(f"streamingKit.image.{problem[0]}: {problem[1]}")
    pull_policy = _str(image, "pullPolicy", "streamingKit.image") or "IfNotPresent"
    if pull_policy not in ("Always", "IfNotPresent", "Never"):
        raise ValueError(
            f"streamingKit.image.pullPolicy: {pull_policy!r} is not Always, IfNotPresent or Never"
        )
    ports = _mapping(kit, "ports")
    limits = _mapping(_mapping(kit, "resources"), "limits", "streamingKit.resources")
    return KitSpec(
        image=f"{repository}:{tag}" if tag else repository,
        pull_policy=pull_policy,
        env=_env(kit.get("env")),
        cpu_limit=_quantity(limits.get("cpu"), "cpu"),
        memory_limit=_quantity(limits.get("memory"), "memory"),
        gpus=_gpus(limits.get(GPU_RESOURCE)),
        signaling_port=_port(ports.get("signaling", DEFAULT_SIGNALING_PORT), "signaling"),
        media_port=_port(ports.get("media", DEFAULT_MEDIA_PORT), "media"),
        startup_probe=_probe(kit.get("startupProbe"), "startupProbe"),
        readiness_probe=_probe(kit.get("readinessProbe"), "readinessProbe"),
    )


def _mapping(parent: dict[str, Any], key: str, where: str = "streamingKit") -> dict[str, Any]:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where}.{key}: must be a mapping")
    return value


def _str(parent: dict[str, Any], key: str, where: str) -> str:
    value = parent.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{where}.{key}: must be a string{quote_hint(value)}")
    return value


def _env(entries: Any) -> tuple[tuple[str, str], ...]:
    if entries is None:
        return ()
    if not isinstance(entries, list):
        raise ValueError("streamingKit.env: must be a list of {name, value}")
    env: dict[str, str] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ValueError(f"streamingKit.env[{i}]: must be a mapping with a string `name`")
        value = entry.get("value", "")
        if value is not None and not isinstance(value, str):
            raise ValueError(f"streamingKit.env[{i}].value: must be a string{quote_hint(value)}")
        env[entry["name"]] = value or ""
    return tuple(env.items())


_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


def _quantity(value: Any, name: str) -> str | None:
    if value is None:
        return None
    text = str(value)
    if isinstance(value, bool) or not _QUANTITY.match(text):
        raise ValueError(f"streamingKit.resources.limits.{name}: {text!r} is not a quantity")
    return text


def _gpus(value: Any) -> int:
    if value is None:
        return 0
    try:
        count = int(str(value))
    except ValueError:
        raise ValueError(
            f"streamingKit.resources.limits.{GPU_RESOURCE}: {value!r} is not a whole number"
        ) from None
    if count < 0:
        raise ValueError(f"streamingKit.resources.limits.{GPU_RESOURCE}: must not be negative")
    return count


def _port(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"streamingKit.ports.{name}: {value!r} is not a port number")
    return value


# A probe's timings, as Kubernetes' Probe names them: (Probe field, key, default, range).
_TIMINGS = (
    ("initial_delay_seconds", "initialDelaySeconds", 0, FRACTIONAL_SECONDS),
    ("period_seconds", "periodSeconds", 10, FRACTIONAL_SECONDS),
    ("timeout_seconds", "timeoutSeconds", 1, FRACTIONAL_SECONDS),
    ("failure_threshold", "failureThreshold", 3, TRIES),
)


def _probe(spec: Any, name: str) -> Probe | None:
    if spec is None:
        return None
    where = f"streamingKit.{name}"
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: must be a mapping")
    timing = {
        field: bounds.read(spec.get(key, default), f"{where}.{key}")
        for field, key, default, bounds in _TIMINGS
    }
    if "httpGet" in spec:
        http = _mapping(spec, "httpGet", where)
        return Probe(
            kind="http",
            port=_port(http.get("port"), f"{name}.httpGet.port"),
            path=str(http.get("path") or "/"),
            scheme=str(http.get("scheme") or "HTTP").upper(),
            **timing,
        )
    if "tcpSocket" in spec:
        tcp = _mapping(spec, "tcpSocket", where)
        return Probe(kind="tcp", port=_port(tcp.get("port"), f"{name}.tcpSocket.port"), **timing)
    raise ValueError(f"{where}: needs httpGet or tcpSocket")


_UNITS = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def cpu_to_nano(quantity: str) -> int:
    """`"8"` -> 8e9, `"500m"` -> 5e8 (Docker's NanoCpus)."""
    if quantity.endswith("m"):
        return int(float(quantity[:-1]) * 10**6)
    return int(float(quantity) * 10**9)


def memory_to_bytes(quantity: str) -> int:
    """`"32Gi"` -> 34359738368; `"500M"` -> 500000000."""
    match = re.match(r"^([0-9.]+)([A-Za-z]*)$", quantity)
    if not match or match.group(2) not in _UNITS:
        raise ValueError(f"{quantity!r} is not a memory quantity")
    return int(float(match.group(1)) * _UNITS[match.group(2)])
