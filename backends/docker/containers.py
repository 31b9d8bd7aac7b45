"""Pure builders of what ovas asks Docker to create, and the reading of it back.

A session's workload is its Kit container, `ovas-<id>`, labelled `ovas.session=<id>` (the
one record a workload keeps: whose it is) and with what observing it needs: its image, the
container ports it publishes (Docker picks their host ports from the range), its probe, its
GPUs and a note for the user. Until the Kit container can be made, the workload is:

- `ovas-<id>.pending` while its image is pulled: a never-started container holding the Kit
  container's spec (Docker makes no container of an image it does not hold), from which any
  process carries the start on;
- `ovas-<id>.fault`: the engine's refusal to pull, create or start it, in its words.

Everything else of a session (what was asked, its clocks, marks, outcome, the places it
holds) is the core's record, in the ledger (`backends.docker.ledger`). Earlier releases
kept those here too, as containers labelled `ovas.session` and `ovas.record` (`outcome`,
`mark`, `slot`, `gpu`), and the session's fields on its Kit container: they are read (see
`backends.docker.earlier`), never written.

Every record's labels are written and read through the core's record codec
(`ovas.ledger.RecordCodec`, by `LabelCodec`, one per kind in `RECORDS`): each carries its
format, the current format's reader is the one place that parses them, and a record of a
format this release cannot read raises `UnknownFormat` and is left alone. Format 2 of the
Kit container and the pending record holds the workload alone; format 1 (written by the
releases before it, or none) holds the session's fields too.
Nothing here talks to Docker; nothing from a request reaches a command or shell: the
request's data goes into labels and environment only.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Generic, TypeVar

from backends.docker.gpus import is_cdi_name
from ovas.kitspec import KitSpec, Probe, cpu_to_nano, memory_to_bytes
from ovas.ledger import FORMAT_KEY, Entry, LedgerError, RecordCodec
from ovas.lifecycle import Outcome
from ovas.models import Clocks, Reason, SessionRequest, SessionState

PREFIX = "ovas."
SESSION = "ovas.session"  # every object of ovas carries it; its value is the session id
RECORD = "ovas.record"  # the record's kind (`RecordCodec.kind`, kept under `record`)
APP = "ovas.app"
VERSION = "ovas.version"
PROFILE = "ovas.profile"
USER = "ovas.user"
CREATED = "ovas.created"
DEADLINE = "ovas.deadline"
CLOCKS = "ovas.clocks"  # "connect,idle,max lifetime" in seconds
PORTS = "ovas.ports"  # "signaling:49100/tcp,media:47998/udp,probe:8011/tcp"
GPUS = "ovas.gpus"
PROBE = "ovas.probe"
IMAGE = "ovas.image"
NOTE = "ovas.note"
POOL = "ovas.pool"  # a warm pool's session: the pool's name
RENDERING = "ovas.rendering"  # a warm pool's session: the digest of what it was started from
SPEC = "ovas.spec"  # pending: the Kit container's spec
REASON = "ovas.reason"  # fault, outcome
DETAIL = "ovas.detail"  # fault
STATE = "ovas.state"  # outcome
MESSAGE = "ovas.message"  # outcome
ENDED = "ovas.ended"  # outcome
LOGS = "ovas.logs"  # outcome: the last log lines, one per line
MARK = "ovas.mark"  # mark
AT = "ovas.at"  # mark
CLAIM = "ovas.claim"  # an earlier release's slot and gpu claims
# The format of every record's labels, written on each by its `LabelCodec`. A container of
# ovas's without it was made before formats were written (read as format 1, which it is); one
# of another format is a newer release's, left alone (see `observe.read_summary`).
FORMAT = PREFIX + FORMAT_KEY
CURRENT_FORMAT = "2"  # of the Kit container and the pending record; a fault's is 1

CONTAINER, PENDING, FAULT, OUTCOME, MARK_RECORD, SLOT, GPU = (
    "container",
    "pending",
    "fault",
    "outcome",
    "mark",
    "slot",
    "gpu",
)
SESSION_RECORDS = (CONTAINER, PENDING, OUTCOME)  # any of these describes a session
CLAIMS = (SLOT, GPU)  # an earlier release's claims
RECORD_KINDS = (*SESSION_RECORDS, FAULT, MARK_RECORD, *CLAIMS)
RECORD_IMAGE = "ovas/record:1"
MAX_LABEL = 4000  # characters of a message kept in a label
_PORT = re.compile(r"^(\w+):(\d+)/(tcp|udp)$")
T = TypeVar("T")


@dataclass(frozen=True)
class PortSpec:
    """A container port ovas publishes: Docker picks its host port from the range."""

    name: str  # signaling, media, probe
    protocol: str  # tcp or udp
    container_port: int

    @property
    def key(self) -> str:
        return f"{self.container_port}/{self.protocol}"


@dataclass(frozen=True)
class SessionLabels:
    """What the labels of a Kit container or pending record say (and an earlier release's
    outcome record): the workload's `image`, `ports`, `gpus`, `probe` and `note`; and, in
    `format` 1 alone, the session's fields (empty, and `created_time` None, in format 2)."""

    session_id: str
    record: str
    image: str = ""
    ports: tuple[PortSpec, ...] = ()
    gpus: tuple[str, ...] = ()
    probe: Probe | None = None
    note: str = ""
    format: int = 2
    app_id: str = ""
    version: str = ""
    profile: str = ""
    username: str = ""
    created_time: datetime | None = None
    deadline: datetime | None = None
    clocks: Clocks = field(default_factory=Clocks)
    pool: str = ""
    rendering: str = ""  # none on sessions recorded before ovas kept it

    @property
    def earlier(self) -> bool:
        """Written by an earlier release: the session's fields are here, not in the ledger."""
        return self.format == 1


def container_name(session_id: str, record: str = CONTAINER) -> str:
    """`ovas-<id>` for the Kit container, `ovas-<id>.<record>` for its records."""
    return f"ovas-{session_id}" if record == CONTAINER else f"ovas-{session_id}.{record}"


def ports_needed(kit: KitSpec) -> dict[str, int]:
    """How many host ports of each protocol the session publishes: `{"tcp": 2, "udp": 1}`."""
    return count_protocols(wanted_ports(kit))


def count_protocols(ports: tuple[PortSpec, ...]) -> dict[str, int]:
    """`ports` counted by protocol: `{"tcp": 2, "udp": 1}`."""
    needed: dict[str, int] = {}
    for port in ports:
        needed[port.protocol] = needed.get(port.protocol, 0) + 1
    return needed


def wanted_ports(kit: KitSpec) -> tuple[PortSpec, ...]:
    """Signaling, media, and the probe's port when it is another one, since ovas probes
    through the published port."""
    ports = [
        PortSpec("signaling", "tcp", kit.signaling_port),
        PortSpec("media", "udp", kit.media_port),
    ]
    probe = kit.probe
    if probe is not None and probe.port != kit.signaling_port:
        ports.append(PortSpec("probe", "tcp", probe.port))
    return tuple(ports)


def format_ports(ports: tuple[PortSpec, ...]) -> str:
    return ",".join(f"{p.name}:{p.container_port}/{p.protocol}" for p in ports)


def parse_ports(text: str) -> tuple[PortSpec, ...]:
    ports = []
    for item in filter(None, text.split(",")):
        match = _PORT.match(item)
        if not match:
            raise ValueError(f"bad port {item!r}")
        name, port, protocol = match.groups()
        ports.append(PortSpec(name, protocol, int(port)))
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


def format_clocks(clocks: Clocks) -> str:
    return f"{clocks.connect_timeout:g},{clocks.idle_timeout:g},{clocks.max_lifetime:g}"


def parse_clocks(text: str) -> Clocks:
    if not text:
        return Clocks()
    connect, idle, lifetime = (float(part) for part in text.split(","))
    return Clocks(connect_timeout=connect, idle_timeout=idle, max_lifetime=lifetime)


def workload_labels(
    request: SessionRequest, gpu_ids: list[str] | tuple[str, ...] = (), note: str = ""
) -> dict[str, str]:
    """The labels of a session's workload (Kit container, pending record): whose it is, and
    what observing it needs."""
    kit: KitSpec = request.kit
    return {
        SESSION: request.id,
        IMAGE: kit.image,
        PORTS: format_ports(wanted_ports(kit)),
        GPUS: ",".join(gpu_ids),
        PROBE: format_probe(kit.probe),
        NOTE: note,
    }


def container_spec(
    request: SessionRequest,
    gpu_ids: list[str],
    *,
    bind_address: str = "127.0.0.1",
    signaling_address: str | None = None,
    host_ports: str = "31000-31999",
    cpu_limit: str | None = None,
    note: str = "",
) -> dict[str, Any]:
    """The Kit container of a session, as JSON-able data (a pending record keeps it).

    Image, environment (with USD_PATH), cpu (`cpu_limit`, else the profile's) and memory
    limits, each port published on `bind_address` at a host port Docker picks from
    `host_ports` ("first-last"), but the signaling port on `signaling_address` when given
    (an IP address: with the signaling gateway on, where only ovas and the gateway reach
    it), GPUs by device id (index, UUID or CDI name). No command: the image's entrypoint
    runs.
    """
    kit: KitSpec = request.kit
    cpus = cpu_limit or kit.cpu_limit

    def address(port: PortSpec) -> str:
        if port.name == "signaling" and signaling_address is not None:
            return signaling_address
        return bind_address

    return {
        "image": kit.image,
        "name": container_name(request.id),
        "labels": RECORDS[CONTAINER].encode(workload_labels(request, gpu_ids, note)),
        "environment": dict(kit.env),
        "ports": [
            [p.container_port, p.protocol, address(p), host_ports] for p in wanted_ports(kit)
        ],
        "nano_cpus": cpu_to_nano(cpus) if cpus else None,
        "mem_limit": memory_to_bytes(kit.memory_limit) if kit.memory_limit else None,
        "gpus": list(gpu_ids),
    }


def create_arguments(spec: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Arguments for the SDK's `api.create_container(**create, host_config=
    api.create_host_config(**host))`, from a `container_spec` or `record_spec`."""
    ports = spec.get("ports") or []
    host: dict[str, Any] = {}
    if ports:
        host["port_bindings"] = {f"{c}/{proto}": (ip, str(hp)) for c, proto, ip, hp in ports}
    if spec.get("nano_cpus"):
        host["nano_cpus"] = spec["nano_cpus"]
    if spec.get("mem_limit"):
        host["mem_limit"] = spec["mem_limit"]
    if spec.get("gpus"):
        # Named devices, not a count: the GPU places decided which GPUs this session holds.
        # Indexes and UUIDs leave the driver to Docker, as `docker run --gpus` does; CDI
        # names go to the `cdi` driver, as `docker run --device nvidia.com/gpu=0` sends them.
        named = [d for d in spec["gpus"] if not is_cdi_name(d)]
        cdi = [d for d in spec["gpus"] if is_cdi_name(d)]
        host["device_requests"] = [
            *([{"driver": "", "device_ids": named, "capabilities": [["gpu"]]}] if named else []),
            *([{"driver": "cdi", "device_ids": cdi}] if cdi else []),
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


def record_spec(name: str, labels: Mapping[str, str]) -> dict[str, Any]:
    """A record: a never-started container named `name` carrying `labels` (a `LabelCodec`'s
    encoding, which says its kind and format)."""
    return {"image": RECORD_IMAGE, "name": name, "labels": dict(labels), "command": ["ovas-record"]}


def describing(labels: Mapping[str, str]) -> dict[str, str]:
    """A workload record's labels that describe the workload (not what is particular to
    the record, nor its kind and format, which its own codec writes)."""
    own = (RECORD, SPEC, FORMAT)
    return {k: v for k, v in labels.items() if k.startswith(PREFIX) and k not in own}


def pending_labels(spec: Mapping[str, Any]) -> dict[str, str]:
    return RECORDS[PENDING].encode(
        {**describing(spec["labels"]), SPEC: json.dumps(spec, separators=(",", ":"))}
    )


def fault_labels(session_id: str, reason: Reason, detail: str) -> dict[str, str]:
    fields = {SESSION: session_id, REASON: reason.value, DETAIL: detail[:MAX_LABEL]}
    return RECORDS[FAULT].encode(fields)


class LabelCodec(Generic[T]):
    """A `RecordCodec` over a Docker container's labels, for records of one kind.

    Label `ovas.<key>` is the record's field `<key>`: `ovas.record` holds its kind and
    `ovas.format` its format, both written by `encode`; labels outside `ovas.` (an image's
    own) are no part of it. `readers` maps each readable format to a function reading the
    record's labels (`ovas.` names, without `ovas.record` and `ovas.format`) into `T`;
    `current` is the format `encode` writes. Labels without `ovas.format` (containers of
    the releases before formats were written) are read as format 1."""

    def __init__(
        self,
        kind: str,
        readers: Mapping[int, Callable[[Mapping[str, str]], T]],
        current: int = 1,
    ):
        def labelled(read: Callable[[Mapping[str, str]], T]) -> Callable[[Mapping[str, str]], T]:
            return lambda fields: read({PREFIX + k: v for k, v in fields.items()})

        self.kind = kind
        self.codec: RecordCodec[T] = RecordCodec(
            kind,
            current=current,
            readers={number: labelled(read) for number, read in readers.items()},
            legacy=1,
            kind_key=RECORD.removeprefix(PREFIX),
        )

    def encode(self, labels: Mapping[str, str]) -> dict[str, str]:
        """`labels` (each named `ovas.<key>`) followed by `ovas.record` and `ovas.format`.
        Raises `LedgerError` for a label outside `ovas.` or one the codec writes."""
        fields = {}
        for name, value in labels.items():
            if not name.startswith(PREFIX):
                raise LedgerError(f"label {name!r} of a {self.kind} record is not under {PREFIX}")
            fields[name.removeprefix(PREFIX)] = value
        return {PREFIX + key: value for key, value in self.codec.encode(fields).items()}

    def decode(self, name: str, labels: Mapping[str, str]) -> T:
        """The record `name`'s labels as its format's reader reads them. Raises
        `UnknownFormat` for a format this release has no reader for or a record of another
        kind, and ValueError for labels its reader finds not well formed."""
        fields = {k.removeprefix(PREFIX): v for k, v in labels.items() if k.startswith(PREFIX)}
        return self.codec.decode(Entry(name, fields, ""))


def parse_labels(labels: Mapping[str, str], name: str = "") -> SessionLabels:
    """Read a session record's labels (Kit container, pending; an earlier release's
    outcome), of any format this release reads. Raises ValueError when they are no
    well-formed session record, and `UnknownFormat` when their format is not one this
    release reads."""
    kind = labels.get(RECORD, "")
    if kind not in SESSION_RECORDS:
        raise ValueError(f"malformed ovas labels: {kind!r} is no session record")
    return RECORDS[kind].decode(name or labels.get(SESSION, ""), labels)


def read_record(name: str, labels: Mapping[str, str]) -> Any:
    """Read the record `name` of any kind through its codec: a session record as
    `SessionLabels`, any other as its labels. Raises `UnknownFormat` for a format this
    release cannot read, whatever the kind (a newer release's record, even of a kind this
    release does not know, is left alone), and ValueError for a record not well formed or of
    an unknown kind."""
    kind = labels.get(RECORD, "")
    codec = RECORDS.get(kind)
    if codec is None:
        LabelCodec(kind, {1: dict}).decode(name, labels)  # UnknownFormat unless format 1
        raise ValueError(f"{name}: unknown record kind {kind!r}")
    return codec.decode(name, labels)


def _read_session_v1(record: str, labels: Mapping[str, str]) -> SessionLabels:
    """Format 1 of a session record, `record` (container, pending, outcome), as the releases
    before the core's ledger wrote it: named labels, the session's fields with the workload's,
    the clocks as `format_clocks` writes them, the ports as `format_ports`, the probe as
    `format_probe`. Raises ValueError when they are not well formed."""
    try:
        created = datetime.fromisoformat(labels[CREATED])
        deadline = datetime.fromisoformat(labels[DEADLINE])
        if created.tzinfo is None or deadline.tzinfo is None:
            raise ValueError("times without a time zone")
        return replace(
            _read_workload_v2(record, labels),
            format=1,
            app_id=labels[APP],
            version=labels[VERSION],
            profile=labels[PROFILE],
            username=labels.get(USER, ""),
            created_time=created,
            deadline=deadline,
            clocks=parse_clocks(labels.get(CLOCKS, "")),
            pool=labels.get(POOL, ""),
            rendering=labels.get(RENDERING, ""),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed ovas labels: {exc!r}") from None


def _read_workload_v2(record: str, labels: Mapping[str, str]) -> SessionLabels:
    """Format 2 of a Kit container or pending record: whose workload it is and what
    observing it needs (`workload_labels`). Raises ValueError when not well formed."""
    try:
        return SessionLabels(
            session_id=labels[SESSION],
            record=record,
            image=labels.get(IMAGE, ""),
            ports=parse_ports(labels.get(PORTS, "")),
            gpus=tuple(filter(None, labels.get(GPUS, "").split(","))),
            probe=parse_probe(labels.get(PROBE, "")),
            note=labels.get(NOTE, ""),
        )
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"malformed ovas labels: {exc!r}") from None


# Every kind of record and how each format of it reads: the Kit container and the pending
# record into `SessionLabels` (format 2 written), an earlier release's outcome too; the rest
# as their labels (format 1 is their only shape).
RECORDS: dict[str, LabelCodec[Any]] = {
    **{
        kind: LabelCodec(
            kind,
            {
                1: functools.partial(_read_session_v1, kind),
                2: functools.partial(_read_workload_v2, kind),
            },
            current=2,
        )
        for kind in (CONTAINER, PENDING)
    },
    OUTCOME: LabelCodec(OUTCOME, {1: functools.partial(_read_session_v1, OUTCOME)}),
    **{kind: LabelCodec(kind, {1: dict}) for kind in (FAULT, MARK_RECORD, *CLAIMS)},
}
assert set(RECORDS) == set(RECORD_KINDS)


def parse_outcome(labels: Mapping[str, str]) -> tuple[Outcome, list[str]]:
    """An earlier release's outcome record: its outcome and saved log lines. Raises
    ValueError."""
    try:
        outcome = Outcome(
            state=SessionState(labels[STATE]),
            reason=Reason(labels[REASON]),
            message=labels.get(MESSAGE, ""),
            ended_time=datetime.fromisoformat(labels[ENDED]),
        )
    except (KeyError, ValueError) as exc:
        raise ValueError(f"malformed outcome: {exc!r}") from None
    logs = labels.get(LOGS, "")
    return outcome, logs.split("\n") if logs else []


def spec_from_labels(labels: Mapping[str, str]) -> dict[str, Any]:
    """The Kit container's spec that a pending record holds. Raises ValueError."""
    try:
        spec = json.loads(labels[SPEC])
    except (KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"no readable container spec ({exc!r})") from None
    if not isinstance(spec, dict) or not {"image", "name", "labels"} <= spec.keys():
        raise ValueError("the container spec lacks image, name or labels")
    return spec
