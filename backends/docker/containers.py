"""Pure builders of what ovas asks Docker to create, and the reading of it back.

A session is recorded only as labelled Docker containers (no database, no memory):

- the Kit container, named `ovas-<session id>`;
- while its image is pulled, a *pending record*: a container that is never started, named
  `ovas-<id>.pending`, made from a tiny empty image, holding the Kit container's spec;
- once a start failed, a *failed record* `ovas-<id>.failed` holding the reason.

All carry the same labels (session id, app, version, profile, user, times, host ports,
GPUs, probe), so one `containers.list` filtered on `ovas.session` tells every process
everything about every session. Nothing here talks to Docker; nothing from a request
reaches a command or shell: the request's data goes into labels and environment only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ovas.kitspec import KitSpec, Probe, cpu_to_nano, memory_to_bytes
from ovas.models import SessionRequest

PREFIX = "ovas."
SESSION = "ovas.session"  # every object of ovas carries it; its value is the session id
RECORD = "ovas.record"  # container | pending | failed
APP = "ovas.app"
VERSION = "ovas.version"
PROFILE = "ovas.profile"
USER = "ovas.user"
CREATED = "ovas.created"
DEADLINE = "ovas.deadline"
PORTS = "ovas.ports"
GPUS = "ovas.gpus"
PROBE = "ovas.probe"
IMAGE = "ovas.image"
MESSAGE = "ovas.message"
SPEC = "ovas.spec"

CONTAINER, PENDING, FAILED = "container", "pending", "failed"
RECORD_IMAGE = "ovas/record:1"
_PORT = re.compile(r"^(\w+):(\d+)->(\d+)/(tcp|udp)$")


@dataclass(frozen=True)
class PortMapping:
    """A container port published on a host port."""

    name: str  # signaling, media, probe
    protocol: str  # tcp or udp
    host_port: int
    container_port: int

    @property
    def key(self) -> str:
        return f"{self.container_port}/{self.protocol}"


@dataclass(frozen=True)
class SessionLabels:
    """What one record's labels say about its session."""

    session_id: str
    record: str
    app_id: str
    version: str
    profile: str
    username: str
    created_time: datetime
    deadline: datetime
    image: str
    ports: tuple[PortMapping, ...] = ()
    gpus: tuple[str, ...] = ()
    probe: Probe | None = None
    message: str = ""
    spec: str = ""


def container_name(session_id: str, record: str = CONTAINER) -> str:
    """`ovas-<id>` for the Kit container, `ovas-<id>.pending` / `.failed` for records."""
    return f"ovas-{session_id}" if record == CONTAINER else f"ovas-{session_id}.{record}"


def wanted_ports(kit: KitSpec) -> list[tuple[str, str, int]]:
    """(name, protocol, container port) of each port to publish: signaling, media, and the
    probe's port when it is another one, since ovas probes through the published port."""
    ports = [("signaling", "tcp", kit.signaling_port), ("media", "udp", kit.media_port)]
    probe = kit.probe
    if probe is not None and probe.port != kit.signaling_port:
        ports.append(("probe", "tcp", probe.port))
    return ports


def map_ports(kit: KitSpec, host_ports: list[int]) -> tuple[PortMapping, ...]:
    """Pair `wanted_ports(kit)` with host ports, in order."""
    wanted = wanted_ports(kit)
    if len(host_ports) != len(wanted):
        raise ValueError(f"needs {len(wanted)} host ports, got {len(host_ports)}")
    return tuple(PortMapping(n, p, h, c) for (n, p, c), h in zip(wanted, host_ports, strict=True))


def format_ports(ports: tuple[PortMapping, ...]) -> str:
    return ",".join(f"{p.name}:{p.host_port}->{p.container_port}/{p.protocol}" for p in ports)


def parse_ports(text: str) -> tuple[PortMapping, ...]:
    ports = []
    for item in filter(None, text.split(",")):
        match = _PORT.match(item)
        if not match:
            raise ValueError(f"bad port mapping {item!r}")
        name, host, container, protocol = match.groups()
        ports.append(PortMapping(name, protocol, int(host), int(container)))
    return tuple(ports)


def format_probe(probe: Probe | None) -> str:
    if probe is None:
        return ""
    fields = {"kind": probe.kind, "port": probe.port, "path": probe.path, "scheme": probe.scheme}
    return json.dumps(fields, separators=(",", ":"))


def parse_probe(text: str) -> Probe | None:
    if not text:
        return None
    fields = json.loads(text)
    if fields.get("kind") not in ("http", "tcp"):
        raise ValueError(f"bad probe {text!r}")
    return Probe(
        kind=fields["kind"],
        port=int(fields["port"]),
        path=str(fields.get("path") or "/"),
        scheme=str(fields.get("scheme") or "HTTP"),
    )


def session_labels(
    request: SessionRequest, ports: tuple[PortMapping, ...], gpu_ids: list[str]
) -> dict[str, str]:
    """The labels every record of the session carries (record kind excluded)."""
    kit: KitSpec = request.kit
    return {
        SESSION: request.id,
        APP: request.app.id,
        VERSION: request.version.version,
        PROFILE: request.profile.id,
        USER: request.username,
        CREATED: request.created_time.isoformat(),
        DEADLINE: request.deadline.isoformat(),
        IMAGE: kit.image,
        PORTS: format_ports(ports),
        GPUS: ",".join(gpu_ids),
        PROBE: format_probe(kit.probe),
    }


def container_spec(
    request: SessionRequest,
    ports: tuple[PortMapping, ...],
    gpu_ids: list[str],
    bind_address: str = "127.0.0.1",
) -> dict[str, Any]:
    """The Kit container of a session, as JSON-able data (a pending record keeps it).

    Image, environment (with USD_PATH), cpu and memory limits, published ports bound to
    `bind_address`, GPUs by device id. No command: the image's entrypoint runs Kit."""
    kit: KitSpec = request.kit
    labels = {**session_labels(request, ports, gpu_ids), RECORD: CONTAINER}
    return {
        "image": kit.image,
        "name": container_name(request.id),
        "labels": labels,
        "environment": dict(kit.env),
        "ports": [[p.container_port, p.protocol, bind_address, p.host_port] for p in ports],
        "nano_cpus": cpu_to_nano(kit.cpu_limit) if kit.cpu_limit else None,
        "mem_limit": memory_to_bytes(kit.memory_limit) if kit.memory_limit else None,
        "gpus": list(gpu_ids),
    }


def create_arguments(spec: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Arguments for the SDK's `api.create_container(**create, host_config=
    api.create_host_config(**host))`, from a `container_spec` or `record_spec`."""
    ports = spec.get("ports") or []
    host: dict[str, Any] = {}
    if ports:
        host["port_bindings"] = {f"{c}/{proto}": (ip, hp) for c, proto, ip, hp in ports}
    if spec.get("nano_cpus"):
        host["nano_cpus"] = spec["nano_cpus"]
    if spec.get("mem_limit"):
        host["mem_limit"] = spec["mem_limit"]
    if spec.get("gpus"):
        # Named devices, not a count: the ledger decided which GPUs this session holds. The
        # driver is left to Docker, as `docker run --gpus` does.
        host["device_requests"] = [
            {"driver": "", "device_ids": list(spec["gpus"]), "capabilities": [["gpu"]]}
        ]
    create: dict[str, Any] = {
        "image": spec["image"],
        "name": spec["name"],
        "labels": dict(spec["labels"]),
        "environment": dict(spec.get("environment") or {}),
        "ports": [(int(c), proto) for c, proto, _, _ in ports],
        "detach": True,
    }
    if spec.get("command"):
        create["command"] = list(spec["command"])
    return create, host


def record_spec(
    labels: Mapping[str, str], record: str, *, message: str = "", spec: Mapping | None = None
) -> dict[str, Any]:
    """A pending or failed record of a session: a never-started container carrying the
    session's labels, and the Kit container's spec (pending) or the reason (failed)."""
    extra = {RECORD: record, MESSAGE: message[:4000]}
    if spec is not None:
        extra[SPEC] = json.dumps(spec, separators=(",", ":"))
    return {
        "image": RECORD_IMAGE,
        "name": container_name(labels[SESSION], record),
        "labels": {**{k: v for k, v in labels.items() if k not in (RECORD, SPEC)}, **extra},
        "command": ["ovas-record"],
    }


def parse_labels(labels: Mapping[str, str]) -> SessionLabels:
    """Read a record's labels. Raises ValueError when they are not a well-formed session."""
    try:
        record = labels.get(RECORD, "")
        if record not in (CONTAINER, PENDING, FAILED):
            raise ValueError(f"unknown record kind {record!r}")
        created = datetime.fromisoformat(labels[CREATED])
        deadline = datetime.fromisoformat(labels[DEADLINE])
        if created.tzinfo is None or deadline.tzinfo is None:
            raise ValueError("times without a time zone")
        return SessionLabels(
            session_id=labels[SESSION],
            record=record,
            app_id=labels[APP],
            version=labels[VERSION],
            profile=labels[PROFILE],
            username=labels.get(USER, ""),
            created_time=created,
            deadline=deadline,
            image=labels.get(IMAGE, ""),
            ports=parse_ports(labels.get(PORTS, "")),
            gpus=tuple(filter(None, labels.get(GPUS, "").split(","))),
            probe=parse_probe(labels.get(PROBE, "")),
            message=labels.get(MESSAGE, ""),
            spec=labels.get(SPEC, ""),
        )
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"malformed ovas labels: {exc!r}") from None


def base_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """A record's session labels, without what is particular to that record."""
    own = (RECORD, SPEC, MESSAGE)
    return {k: v for k, v in labels.items() if k.startswith(PREFIX) and k not in own}


def spec_from_labels(labels: Mapping[str, str]) -> dict[str, Any]:
    """The Kit container's spec that a pending record holds. Raises ValueError."""
    try:
        spec = json.loads(labels[SPEC])
    except (KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"no readable container spec ({exc!r})") from None
    if not isinstance(spec, dict) or not {"image", "name", "labels"} <= spec.keys():
        raise ValueError("the container spec lacks image, name or labels")
    return spec
