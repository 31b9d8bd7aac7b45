"""Pure builders of what ovas asks Docker to create, and the reading of it back.

The engine is the record and the lock: a session is nothing but labelled containers, and
every decision that must hold across processes is the creation of a container whose name is
unique (Docker refuses a second one, 409). All carry `ovas.session=<id>` and `ovas.record`:

- `container`: the Kit container, `ovas-<id>`; Docker picks its host ports from the range;
- `pending`: `ovas-<id>.pending` while the image is pulled, holding the container's spec;
- `fault`: `ovas-<id>.fault`, the engine's refusal to pull or start, with its words;
- `outcome`: `ovas-<id>.outcome`, how the session ended (kept for the retention);
- `mark`: `ovas-<id>.ready`, `.connected`, `.idle`: moments the lifecycle asked to keep;
  `.claimed`, a warm pool's session handed to the user its `ovas.user` names;
- `slot`: `ovas-slot-<k>` (k < capacity), `ovas-user-<hash>-<k>` (per user),
  `ovas-pool-<hash>-<k>` (k < a warm pool's size, per pool and version, while unclaimed),
  and `ovas-port-<tcp|udp>-<k>` (k < the ports of the range: one per host port published);
- `gpu`: `ovas-gpu-<device id>`: the one session holding that GPU (see `gpu_name`).

Records other than the Kit container are never started, made from a tiny empty image.
Every record's labels are written and read through the core's record codec
(`ovas.ledger.RecordCodec`, by `LabelCodec`, one per kind in `RECORDS`): each carries its
format, the current format's reader is the one place that parses them, and a record of a
format this release cannot read raises `UnknownFormat` and is left alone.
Nothing here talks to Docker; nothing from a request reaches a command or shell: the
request's data goes into labels and environment only.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from backends.docker.gpus import is_cdi_name
from ovas.kitspec import KitSpec, Probe, cpu_to_nano, memory_to_bytes
from ovas.ledger import FORMAT_KEY, Entry, LedgerError, RecordCodec
from ovas.lifecycle import Mark, Outcome
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
CLAIM = "ovas.claim"  # slot, gpu: present on claims alone, so one list finds them all
# The format of every record's labels, written on each by its `LabelCodec`. A container of
# ovas's without it was made before formats were written (read as format 1, which it is); one
# of another format is a newer release's, left alone (see `observe.read_summary`).
FORMAT = PREFIX + FORMAT_KEY
CURRENT_FORMAT = "1"

CONTAINER, PENDING, FAULT, OUTCOME, MARK_RECORD, SLOT, GPU = (
    "container",
    "pending",
    "fault",
    "outcome",
    "mark",
    "slot",
    "gpu",
)
SESSION_RECORDS = (CONTAINER, PENDING, OUTCOME)  # any of these is a session
CLAIMS = (SLOT, GPU)  # what a session holds, released when it ends
RECORD_KINDS = (*SESSION_RECORDS, FAULT, MARK_RECORD, *CLAIMS)
RECORD_IMAGE = "ovas/record:1"
MAX_LABEL = 4000  # characters of a message or logs kept in a label
_PORT = re.compile(r"^(\w+):(\d+)/(tcp|udp)$")
_PORT_SLOT = re.compile(r"^ovas-port-(tcp|udp)-(\d+)$")
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
    """What the labels of a session record (Kit container, pending, outcome) say."""

    session_id: str
    record: str
    app_id: str
    version: str
    profile: str
    username: str
    created_time: datetime
    deadline: datetime
    clocks: Clocks
    image: str
    ports: tuple[PortSpec, ...] = ()
    gpus: tuple[str, ...] = ()
    probe: Probe | None = None
    note: str = ""
    pool: str = ""
    rendering: str = ""  # none on sessions recorded before ovas kept it


def container_name(session_id: str, record: str = CONTAINER) -> str:
    """`ovas-<id>` for the Kit container, `ovas-<id>.<record>` for its records."""
    return f"ovas-{session_id}" if record == CONTAINER else f"ovas-{session_id}.{record}"


def mark_name(session_id: str, mark: Mark) -> str:
    return f"ovas-{session_id}.{mark.value}"


def slot_name(index: int, username: str | None = None) -> str:
    """`ovas-slot-<k>` for the shared capacity, `ovas-user-<hash>-<k>` for a user's."""
    if username is None:
        return f"{SLOT_PREFIX}{index}"
    return f"ovas-user-{hashlib.sha256(username.encode()).hexdigest()[:12]}-{index}"


def pool_slot_name(index: int, pool: str, key: str) -> str:
    """`ovas-pool-<hash>-<k>`: one of the places of warm pool `pool`'s unclaimed sessions
    of `key` (`SessionRequest.pool_key`: their version and rendering)."""
    return f"{POOL_SLOT_PREFIX}{hashlib.sha256(f'{pool}@{key}'.encode()).hexdigest()[:12]}-{index}"


POOL_SLOT_PREFIX = "ovas-pool-"
PORT_SLOT_PREFIX = "ovas-port-"
SLOT_PREFIX = "ovas-slot-"  # the shared capacity's slots


def port_slot_name(index: int, protocol: str) -> str:
    """`ovas-port-<protocol>-<k>`: one of the host ports of the range, of that protocol, a
    session publishes (which port is Docker's choice)."""
    return f"{PORT_SLOT_PREFIX}{protocol}-{index}"


def parse_port_slot(name: str) -> tuple[str, int] | None:
    """The protocol and index of a claim `port_slot_name` names, `("tcp", 3)`; None for any
    other name."""
    match = _PORT_SLOT.match(name)
    return (match.group(1), int(match.group(2))) if match else None


def ports_needed(kit: KitSpec) -> dict[str, int]:
    """How many host ports of each protocol the session publishes: `{"tcp": 2, "udp": 1}`."""
    return count_protocols(wanted_ports(kit))


def count_protocols(ports: tuple[PortSpec, ...]) -> dict[str, int]:
    """`ports` counted by protocol: `{"tcp": 2, "udp": 1}`."""
    needed: dict[str, int] = {}
    for port in ports:
        needed[port.protocol] = needed.get(port.protocol, 0) + 1
    return needed


def gpu_name(device_id: str) -> str:
    """The claim of one GPU, by the id Docker's device request names it with. A CDI name
    (`nvidia.com/gpu=0`) holds several characters a container name cannot, so its claim
    also carries a digest of it, keeping two devices' claims apart:
    `ovas-gpu-nvidia.com-gpu-0-<8 hex digits>`."""
    name = "ovas-gpu-" + re.sub(r"[^A-Za-z0-9_.-]", "-", device_id)
    if is_cdi_name(device_id):
        name += "-" + hashlib.sha256(device_id.encode()).hexdigest()[:8]
    return name


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


def session_labels(
    request: SessionRequest, gpu_ids: list[str] | tuple[str, ...] = (), note: str = ""
) -> dict[str, str]:
    """The labels every record of the session that describes it carries."""
    kit: KitSpec = request.kit
    return {
        SESSION: request.id,
        APP: request.app.id,
        VERSION: request.version.version,
        PROFILE: request.profile.id,
        USER: request.username,
        CREATED: request.created_time.isoformat(),
        DEADLINE: request.deadline.isoformat(),
        CLOCKS: format_clocks(request.clocks),
        IMAGE: kit.image,
        PORTS: format_ports(wanted_ports(kit)),
        GPUS: ",".join(gpu_ids),
        PROBE: format_probe(kit.probe),
        NOTE: note,
        POOL: request.pool,
        RENDERING: request.rendering,
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
        "labels": RECORDS[CONTAINER].encode(session_labels(request, gpu_ids, note)),
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
        # Named devices, not a count: the GPU claims decided which GPUs this session holds.
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
    """A session record's labels that describe the session (not what is particular to it,
    nor its kind and format, which its own codec writes)."""
    own = (RECORD, SPEC, FORMAT)
    return {k: v for k, v in labels.items() if k.startswith(PREFIX) and k not in own}


def pending_labels(spec: Mapping[str, Any]) -> dict[str, str]:
    return RECORDS[PENDING].encode(
        {**describing(spec["labels"]), SPEC: json.dumps(spec, separators=(",", ":"))}
    )


def fault_labels(session_id: str, reason: Reason, detail: str) -> dict[str, str]:
    fields = {SESSION: session_id, REASON: reason.value, DETAIL: detail[:MAX_LABEL]}
    return RECORDS[FAULT].encode(fields)


def outcome_labels(
    describing_labels: Mapping[str, str], outcome: Outcome, logs: list[str]
) -> dict[str, str]:
    return RECORDS[OUTCOME].encode(
        {
            **describing(describing_labels),
            STATE: outcome.state.value,
            REASON: outcome.reason.value,
            MESSAGE: outcome.message[:MAX_LABEL],
            ENDED: outcome.ended_time.isoformat(),
            LOGS: "\n".join(logs)[-MAX_LABEL:],
        }
    )


def mark_labels(
    session_id: str, mark: Mark, at: datetime, username: str | None = None
) -> dict[str, str]:
    """A mark's labels; a claim's (`Mark.CLAIMED`) name its user too."""
    fields = {SESSION: session_id, MARK: mark.value, AT: at.isoformat()}
    if username is not None:
        fields[USER] = username
    return RECORDS[MARK_RECORD].encode(fields)


def claim_labels(session_id: str, kind: str, username: str = "") -> dict[str, str]:
    """A claim's labels: `kind` is `SLOT` or `GPU`."""
    return RECORDS[kind].encode({SESSION: session_id, CLAIM: kind, USER: username})


class LabelCodec(Generic[T]):
    """A `RecordCodec` over a Docker container's labels, for records of one kind.

    Label `ovas.<key>` is the record's field `<key>`: `ovas.record` holds its kind and
    `ovas.format` its format, both written by `encode`; labels outside `ovas.` (an image's
    own) are no part of it. `readers` maps each readable format to a function reading the
    record's labels (`ovas.` names, without `ovas.record` and `ovas.format`) into `T`.
    Labels without `ovas.format` (containers of the releases before formats were written)
    are read as format 1."""

    def __init__(self, kind: str, readers: Mapping[int, Callable[[Mapping[str, str]], T]]):
        def labelled(read: Callable[[Mapping[str, str]], T]) -> Callable[[Mapping[str, str]], T]:
            return lambda fields: read({PREFIX + k: v for k, v in fields.items()})

        self.kind = kind
        self.codec: RecordCodec[T] = RecordCodec(
            kind,
            current=int(CURRENT_FORMAT),
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
    """Read a session record's labels (Kit container, pending, outcome), of any format this
    release reads. Raises ValueError when they are no well-formed session record, and
    `UnknownFormat` when their format is not one this release reads."""
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
    """Format 1 of a session record, `record` (container, pending, outcome): named labels,
    the clocks as `format_clocks` writes them, the ports as `format_ports`, the probe as
    `format_probe`. Raises ValueError when they are not well formed."""
    try:
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
            clocks=parse_clocks(labels.get(CLOCKS, "")),
            image=labels.get(IMAGE, ""),
            ports=parse_ports(labels.get(PORTS, "")),
            gpus=tuple(filter(None, labels.get(GPUS, "").split(","))),
            probe=parse_probe(labels.get(PROBE, "")),
            note=labels.get(NOTE, ""),
            pool=labels.get(POOL, ""),
            rendering=labels.get(RENDERING, ""),
        )
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"malformed ovas labels: {exc!r}") from None


# Every kind of record and how each format of it reads: the session records into
# `SessionLabels`, the rest as their labels (format 1 is their current shape).
RECORDS: dict[str, LabelCodec[Any]] = {
    **{
        kind: LabelCodec(kind, {1: functools.partial(_read_session_v1, kind)})
        for kind in SESSION_RECORDS
    },
    **{kind: LabelCodec(kind, {1: dict}) for kind in (FAULT, MARK_RECORD, *CLAIMS)},
}
assert set(RECORDS) == set(RECORD_KINDS)


def parse_outcome(labels: Mapping[str, str]) -> tuple[Outcome, list[str]]:
    """An outcome record's outcome and saved log lines. Raises ValueError."""
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
