"""Pure builders of the Kubernetes objects of a session: Pod, Service, HelmRelease, the
admission slots and the outcome record. No I/O; every function returns plain dicts ready to
send to the API server.

Every object of a session carries the label `ovas/session=<id>`. The session's record rides
in annotations of the object that owns the session (its Pod, or its HelmRelease), because
label values cannot hold everything a username or a semver build may contain: what was asked
(app, version, profile, username, created time, start deadline), its clocks and the marks
the lifecycle asked to keep. In mode pod the session's Service holds the record as it was
asked too, owned by nothing, so the record outlives a pod the cluster removes at once (the
pod garbage collector's, on a deleted node); with the ready mark it is told the pod's node
(`NODE`). An ended session's record moves to its outcome ConfigMap `ovas-<id>` (see
`build_outcome`), which outlives the workload. Label values are made safe with
`label_value`.

Every record's labels and annotations under `ovas/` are written and read through the core's
record codec (`ovas.ledger.RecordCodec`), by a `MetadataCodec` per kind of record
(`SESSION_RECORD`, `OUTCOME_RECORD`, `SLOT_RECORD`): each carries its format (label
`ovas/format`), the current format's reader is the one place that parses them, an object
without `ovas/format` (made before formats were written) reads as format 1, and one of a
format this release cannot read raises `UnknownFormat` and is left alone.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, NamedTuple, TypeVar

from ovas.kitspec import GPU_RESOURCE
from ovas.ledger import FORMAT_KEY, Entry, LedgerError, RecordCodec
from ovas.lifecycle import CLOCK_ANNOTATIONS, Mark, Outcome, Record
from ovas.models import Clocks, Reason, SessionRequest, SessionState
from ovas.names import is_session_id

PREFIX = "ovas/"
SESSION = PREFIX + "session"
APP = PREFIX + "app"
VERSION = PREFIX + "version"
PROFILE = PREFIX + "profile"
USER = PREFIX + "user"
SLOT = PREFIX + "slot"  # "global", "user" or "pool", on admission slots only
POOL_KEY = PREFIX + "pool-key"  # a pool slot's pool and version, hashed
OUTCOME = PREFIX + "outcome"  # "ended" or "failed", on outcome ConfigMaps only
USERNAME = PREFIX + "username"  # annotations from here on
CREATED = PREFIX + "created-time"
DEADLINE = PREFIX + "deadline"
# The session clocks, in seconds (0 = off): the names a profile sets them with.
CLOCKS = {name: annotation for annotation, name in CLOCK_ANNOTATIONS.items()}
READY_AT = PREFIX + "ready-at"  # the marks: when ovas first saw the session ready...
CONNECTED_AT = PREFIX + "connected-at"
IDLE_AT = PREFIX + "idle-at"
CLAIMED_AT = PREFIX + "claimed-at"  # a warm pool's session handed to `ovas/username`
MARKS = {
    Mark.READY: READY_AT,
    Mark.CONNECTED: CONNECTED_AT,
    Mark.IDLE: IDLE_AT,
    Mark.CLAIMED: CLAIMED_AT,
}
POOL = PREFIX + "pool"  # annotation: the warm pool a session was started for
RENDERING = PREFIX + "rendering"  # annotation: with POOL, the digest of what it runs
# Annotation on the Service (mode pod) or HelmRelease, written with the ready mark: the node
# the session's pod runs on, read when the pod vanished to tell a deleted node (`node_lost`)
# from a pod removed by hand (`lost`).
NODE = PREFIX + "node"
STATE = PREFIX + "state"  # the outcome, on outcome ConfigMaps: "ended" or "failed"
REASON = PREFIX + "reason"
MESSAGE = PREFIX + "message"
ENDED = PREFIX + "ended-time"
LOGS = "logs"  # the outcome ConfigMap's key holding the Kit container's last log lines
LOG_LINE_LIMIT = 2000  # characters kept of one log line
LOGS_LIMIT = 256 * 1024  # characters kept of all (a ConfigMap holds at most 1 MiB)
MANAGED_BY = "app.kubernetes.io/managed-by"
EXTERNAL_DNS = "external-dns.alpha.kubernetes.io/hostname"  # the DNS name external-dns sets
# The format of what ovas writes on each object (labels and annotations), written by its
# `MetadataCodec`. An object of ovas's without it was made before formats were written (read
# as format 1, which it is); one of another format is a newer release's, left alone
# (`status.foreign`).
FORMAT = PREFIX + FORMAT_KEY
CURRENT_FORMAT = "1"
MANAGED = {MANAGED_BY: "ovas"}
OURS = {**MANAGED, FORMAT: CURRENT_FORMAT}  # the labels of the core's ledger ConfigMaps

CONTAINER = "kit"
SIGNALING = "signaling"
MEDIA = "media"
DEFAULT_SERVICE_TYPE = "LoadBalancer"
# With the signaling gateway on, only media is exposed, by default on node ports: the
# gateway replaces the load balancer per session (see the README).
GATEWAY_SERVICE_TYPE = "NodePort"
FLUX_API_VERSION = "helm.toolkit.fluxcd.io/v2"
DEFAULT_HELM_REPOSITORY = "omniverse"

T = TypeVar("T")
_LABELS, _ANNOTATIONS = "labels/", "annotations/"  # a `MetadataCodec`'s fields' prefixes
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$")
_PROBE_KEYS = (
    "httpGet",
    "tcpSocket",
    "initialDelaySeconds",
    "periodSeconds",
    "timeoutSeconds",
    "failureThreshold",
    "successThreshold",
)


def label_value(text: str) -> str:
    """`text` itself when it is a valid label value, else a readable, unique stand-in
    (invalid characters replaced, a hash of the original appended, at most 63 characters)."""
    if _LABEL_VALUE.match(text):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:40].strip("._-")
    return f"{cleaned}-{digest}" if cleaned else f"x-{digest}"


def object_name(session_id: str) -> str:
    """The name of the session's Pod, Service and HelmRelease (a Service name must start
    with a letter; a session id may not)."""
    return f"ovas-{session_id}"


def session_metadata(request: SessionRequest) -> tuple[dict[str, str], dict[str, str]]:
    """The labels and annotations of a new session's objects (`SESSION_RECORD`'s encoding):
    labels `ovas/format` first, then the session and what was asked, made safe; annotations
    the session's record (`record_annotations`)."""
    labels = {
        SESSION: request.id,
        APP: label_value(request.app.id),
        VERSION: label_value(request.version.version),
        PROFILE: label_value(request.profile.id),
        USER: label_value(request.username),
    }
    return SESSION_RECORD.encode(labels, record_annotations(Record.of(request)))


def record_annotations(record: Record) -> dict[str, str]:
    """A session's record as annotations: what was asked, its clocks and its marks (times
    in ISO 8601 with their UTC offset, clocks in seconds)."""
    notes = {
        APP: record.app_id,
        VERSION: record.version,
        PROFILE: record.profile,
        USERNAME: record.username,
        CREATED: record.created_time.isoformat(),
        DEADLINE: record.deadline.isoformat(),
    }
    if record.pool:
        notes[POOL] = record.pool
    if record.rendering:
        notes[RENDERING] = record.rendering
    for name, annotation in CLOCKS.items():
        notes[annotation] = seconds_text(getattr(record.clocks, name))
    for mark, at in record.marks.items():
        notes[MARKS[mark]] = at.isoformat()
    return notes


def seconds_text(value: float) -> str:
    """Seconds as an annotation holds them: `300`, `2.5`."""
    return f"{value:g}" if value != int(value) else str(int(value))


def clocks_of(notes: dict[str, str]) -> Clocks:
    """The clocks the annotations record; a clock not recorded has its default. Raises
    ValueError for one that is not a number of seconds >= 0."""
    values = {}
    for name, annotation in CLOCKS.items():
        if annotation in notes:
            value = float(notes[annotation])
            if not value >= 0:
                raise ValueError(f"{annotation}: {notes[annotation]!r} is not seconds >= 0")
            values[name] = value
    return Clocks(**values)


def owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    """A reference making `owner` (an object read back from the API server) the owner, so
    the cluster's garbage collector removes the owned object with it."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner.get("apiVersion", "v1"),
        "kind": owner.get("kind", "Pod"),
        "name": meta["name"],
        "uid": meta["uid"],
    }


def _kit(request: SessionRequest) -> dict[str, Any]:
    kit = request.values.get("streamingKit")
    return kit if isinstance(kit, dict) else {}


def _probe(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        return None
    return {k: copy.deepcopy(raw[k]) for k in _PROBE_KEYS if k in raw}


def _resources(kit: dict[str, Any], gpus: int) -> dict[str, Any]:
    raw = kit.get("resources") if isinstance(kit.get("resources"), dict) else {}
    resources: dict[str, Any] = {}
    for part in ("limits", "requests"):
        values = raw.get(part)
        if isinstance(values, dict) and values:
            resources[part] = {str(k): str(v) for k, v in values.items() if v is not None}
    if gpus:
        # The device plugin only honours GPUs asked for as limits.
        resources.setdefault("limits", {})[GPU_RESOURCE] = str(gpus)
    return resources


def image_pull_secrets(values: dict[str, Any]) -> list[dict[str, str]]:
    """`global.imagePullSecrets`, given as names or as `{name: ...}`."""
    glob = values.get("global")
    raw = glob.get("imagePullSecrets") if isinstance(glob, dict) else None
    secrets = []
    for entry in raw or []:
        name = entry.get("name") if isinstance(entry, dict) else entry
        if isinstance(name, str) and name:
            secrets.append({"name": name})
    return secrets


def build_pod(request: SessionRequest, namespace: str) -> dict[str, Any]:
    """The Pod running the session's Kit container, from `streamingKit` of the chart values.

    With neither a startup nor a readiness probe, a TCP readiness probe on the signaling
    port stands in, so "Ready" always means the app answers. The pod never restarts: a Kit
    app that exits has failed, and the session says so at once.
    """
    kit = _kit(request)
    spec_kit = request.kit
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec_kit.image,
        "imagePullPolicy": spec_kit.pull_policy,
        "env": [{"name": k, "value": v} for k, v in spec_kit.env],
        "ports": [
            {"name": SIGNALING, "containerPort": spec_kit.signaling_port, "protocol": "TCP"},
            {"name": MEDIA, "containerPort": spec_kit.media_port, "protocol": "UDP"},
        ],
    }
    resources = _resources(kit, spec_kit.gpus)
    if resources:
        container["resources"] = resources
    startup, readiness = _probe(kit.get("startupProbe")), _probe(kit.get("readinessProbe"))
    if startup:
        container["startupProbe"] = startup
    if readiness:
        container["readinessProbe"] = readiness
    if not startup and not readiness:
        container["readinessProbe"] = {
            "tcpSocket": {"port": spec_kit.signaling_port},
            "periodSeconds": 2,
        }
    spec: dict[str, Any] = {
        "containers": [container],
        "restartPolicy": "Never",
        # Thousands of sessions in a namespace would otherwise each get an env var per service.
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
    }
    if isinstance(kit.get("nodeSelector"), dict) and kit["nodeSelector"]:
        spec["nodeSelector"] = {str(k): str(v) for k, v in kit["nodeSelector"].items()}
    if isinstance(kit.get("tolerations"), list) and kit["tolerations"]:
        spec["tolerations"] = copy.deepcopy(kit["tolerations"])
    if isinstance(kit.get("runtimeClassName"), str) and kit["runtimeClassName"]:
        spec["runtimeClassName"] = kit["runtimeClassName"]
    secrets = image_pull_secrets(request.values)
    if secrets:
        spec["imagePullSecrets"] = secrets
    labels, annotations = session_metadata(request)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": object_name(request.id),
            "namespace": namespace,
            "labels": {**MANAGED, **labels},
            "annotations": annotations,
        },
        "spec": spec,
    }


def service_settings(values: dict[str, Any]) -> dict[str, Any]:
    kit = values.get("streamingKit")
    service = kit.get("service") if isinstance(kit, dict) else None
    return service if isinstance(service, dict) else {}


def build_service(
    request: SessionRequest,
    namespace: str,
    owner: dict[str, Any] | None = None,
    *,
    hostname: str | None = None,
    signaling: bool = True,
) -> dict[str, Any]:
    """The Service exposing the session's signaling (TCP) and media (UDP) ports. It holds
    the session's record as asked (`session_metadata`) and is owned by nothing, so the
    record outlives a pod that vanishes; `owner`, where given (an object read back), owns it
    instead, so the cluster removes it with that object.

    For NodePort and LoadBalancer services the cluster picks the node ports, so sessions
    never collide on them; `signalingPort` / `mediaPort` are the service's own ports.
    `hostname`: the session's own DNS name, annotated for external-dns (`EXTERNAL_DNS`) to
    publish it with the Service's address. Without `signaling` (the signaling gateway is
    on, and reaches the pod itself), only media is exposed, on node ports unless the
    profile's `service.type` asks for another type (a LoadBalancer).
    """
    settings = service_settings(request.values)
    default = DEFAULT_SERVICE_TYPE if signaling else GATEWAY_SERVICE_TYPE
    kind = str(settings.get("type") or default)
    kit = request.kit
    labels, annotations = session_metadata(request)
    metadata: dict[str, Any] = {
        "name": object_name(request.id),
        "namespace": namespace,
        "labels": {**MANAGED, **labels},
        "annotations": {
            **{str(k): str(v) for k, v in (settings.get("annotations") or {}).items()},
            **annotations,
        },
    }
    if hostname:
        metadata["annotations"][EXTERNAL_DNS] = hostname
    if owner is not None:
        metadata["ownerReferences"] = [owner_reference(owner)]
    ports = [
        {
            "name": SIGNALING,
            "protocol": "TCP",
            "port": int(settings.get("signalingPort") or kit.signaling_port),
            "targetPort": kit.signaling_port,
        },
        {
            "name": MEDIA,
            "protocol": "UDP",
            "port": int(settings.get("mediaPort") or kit.media_port),
            "targetPort": kit.media_port,
        },
    ]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "type": kind,
            "selector": {SESSION: request.id},
            "ports": ports if signaling else ports[1:],
        },
    }


def chart_reference(helm_chart: str, default_repository: str) -> tuple[str, str]:
    """`repo/chart` -> (repo, chart); a bare chart name comes from `default_repository`."""
    repository, _, chart = helm_chart.rpartition("/")
    return (repository or default_repository), chart


def release_values(request: SessionRequest) -> dict[str, Any]:
    """The chart values of a session's release: the rendered values, the session id, and the
    labels and annotations the chart must put on the session's pod and service."""
    values = copy.deepcopy(request.values)
    kit = values.setdefault("streamingKit", {})
    kit.setdefault("name", request.id)
    kit["sessionId"] = request.id
    labels, annotations = session_metadata(request)
    kit["labels"] = {**kit.get("labels", {}), **labels}
    kit["annotations"] = {**kit.get("annotations", {}), **annotations}
    return values


def build_helmrelease(
    request: SessionRequest,
    namespace: str,
    *,
    default_repository: str = DEFAULT_HELM_REPOSITORY,
) -> dict[str, Any]:
    """A Flux HelmRelease installing the version's chart for this one session. Installs are
    not retried: a session whose chart cannot be installed has failed."""
    repository, chart = chart_reference(request.version.helm_chart, default_repository)
    name = object_name(request.id)
    labels, annotations = session_metadata(request)
    return {
        "apiVersion": FLUX_API_VERSION,
        "kind": "HelmRelease",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**MANAGED, **labels},
            "annotations": annotations,
        },
        "spec": {
            "interval": "10m",
            "releaseName": name,
            "chart": {
                "spec": {
                    "chart": chart,
                    "version": request.version.helm_chart_version or "*",
                    "sourceRef": {"kind": "HelmRepository", "name": repository},
                }
            },
            "install": {"remediation": {"retries": 0}},
            "values": release_values(request),
        },
    }


def outcome_name(session_id: str) -> str:
    """The name of the session's outcome ConfigMap."""
    return object_name(session_id)


def build_outcome(
    record: Record, outcome: Outcome, logs: list[str], namespace: str
) -> dict[str, Any]:
    """The ConfigMap recording how a session ended: its record (what was asked, its clocks
    and marks) and its outcome in annotations, the Kit container's last log lines in
    `data.logs`. Creating it is what ends a session: a second create of the name is refused
    (409), so one process alone records an outcome. Owned by nothing, it outlives the pod."""
    notes = record_annotations(record)
    notes.update(
        {
            STATE: outcome.state.value,
            REASON: outcome.reason.value,
            MESSAGE: outcome.message,
            ENDED: outcome.ended_time.isoformat(),
        }
    )
    kept = [line[:LOG_LINE_LIMIT] for line in logs]
    while kept and sum(len(line) + 1 for line in kept) > LOGS_LIMIT:
        kept.pop(0)
    labels = {
        SESSION: record.id,
        OUTCOME: outcome.state.value,
        APP: label_value(record.app_id),
        VERSION: label_value(record.version),
        PROFILE: label_value(record.profile),
        USER: label_value(record.username),
    }
    labels, notes = OUTCOME_RECORD.encode(labels, notes)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": outcome_name(record.id),
            "namespace": namespace,
            "labels": {**MANAGED, **labels},
            "annotations": notes,
        },
        "data": {LOGS: "\n".join(kept)},
    }


def slot_name(index: int, username: str | None = None) -> str:
    """`ovas-slot-<k>` for the shared capacity, `ovas-user-<hash>-<k>` for a user's."""
    if username is None:
        return f"ovas-slot-{index}"
    digest = hashlib.sha256(username.encode()).hexdigest()[:12]
    return f"ovas-user-{digest}-{index}"


def pool_key(pool: str, places: str) -> str:
    """The label value naming one set of a warm pool's places (counted per
    `SessionRequest.pool_key`: its version and rendering)."""
    return hashlib.sha256(f"{pool}@{places}".encode()).hexdigest()[:12]


def pool_slot_name(index: int, pool: str, places: str) -> str:
    """`ovas-pool-<hash>-<k>`: one of the places of a warm pool's unclaimed sessions."""
    return f"ovas-pool-{pool_key(pool, places)}-{index}"


def build_slot(
    name: str,
    session_id: str,
    username: str,
    created: datetime,
    namespace: str,
    scope: str,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A ConfigMap whose existence holds one unit of capacity for the session; creating it
    is the atomic admission step (a second create of the same name is refused). `scope`:
    "global", "user" or "pool"; `labels`: more of ovas's (`ovas/...`) labels, as a pool's
    `POOL_KEY`. Raises `LedgerError` for a label outside `ovas/`."""
    ours = {SLOT: scope, SESSION: session_id, USER: label_value(username), **(labels or {})}
    ours, notes = SLOT_RECORD.encode(ours, {USERNAME: username, CREATED: created.isoformat()})
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**MANAGED, **ours},
            "annotations": notes,
        },
        "data": {"session": session_id},
    }


def parse_time(text: Any) -> datetime | None:
    """An RFC 3339 / ISO 8601 time as the API server or our annotations write it."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


# Records: what ovas writes on its objects, and how each format of it reads


class Listed(NamedTuple):
    """What choosing a page of sessions reads (`SessionQuery.select`): cheap to make from
    the metadata of a thousand objects."""

    id: str
    username: str
    created_time: datetime
    pooled: bool = False  # a warm pool's, unclaimed


@dataclass(frozen=True)
class SessionRead:
    """What an object holding a session's record (its Pod, Service or HelmRelease, or its
    outcome ConfigMap) says of the session, as its format's reader reads it. `listed`: None
    when its labels and annotations name no session (not whole); `record`: None when the
    record is not whole (a clock, a time or the outcome unreadable); `node`: the node its
    pod ran on (`NODE`), "" when not recorded."""

    listed: Listed | None
    record: Record | None
    node: str = ""


@dataclass(frozen=True)
class SlotRead:
    """An admission slot ConfigMap as its format's reader reads it: `scope` ("global",
    "user" or "pool"; "" if not said), `session_id`, and the user it was taken for
    (`username`, "" if not recorded)."""

    scope: str
    session_id: str
    username: str


class MetadataCodec(Generic[T]):
    """A `RecordCodec` over a Kubernetes object's labels and annotations together, for
    records of one kind.

    Only names under `ovas/` are the record's: field `labels/<name>` is the label `<name>`,
    field `annotations/<name>` the annotation `<name>`, and the label `ovas/format` holds the
    format (`FORMAT_KEY`), written first of ovas's labels. The kind is not written: the
    object's API kind and labels say it (an outcome ConfigMap carries `OUTCOME`, a slot
    `SLOT`), and the reader picks the codec. `readers` maps each readable format to a
    function reading the record's labels and annotations (`ovas/` names, without
    `ovas/format`) into `T`. Objects without `ovas/format` (made by the releases before
    formats were written) read as format 1."""

    def __init__(
        self,
        kind: str,
        readers: Mapping[int, Callable[[Mapping[str, str], Mapping[str, str]], T]],
    ):
        def split(
            read: Callable[[Mapping[str, str], Mapping[str, str]], T],
        ) -> Callable[[Mapping[str, str]], T]:
            def reader(fields: Mapping[str, str]) -> T:
                labels, annotations = _split(fields)
                return read(labels, annotations)

            return reader

        self.kind = kind
        self.codec: RecordCodec[T] = RecordCodec(
            kind,
            current=int(CURRENT_FORMAT),
            readers={number: split(read) for number, read in readers.items()},
            legacy=1,
        )

    def encode(
        self, labels: Mapping[str, str], annotations: Mapping[str, str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """The record's labels (`ovas/format` first, then `labels` in order) and annotations
        (`annotations`, in order), in the current format. Raises `LedgerError` for a name
        outside `ovas/`, or `ovas/format`, which the codec writes."""
        fields: dict[str, str] = {}
        for part, names in ((_LABELS, labels), (_ANNOTATIONS, annotations)):
            for name, value in names.items():
                if not name.startswith(PREFIX) or name == FORMAT:
                    raise LedgerError(f"{name!r} of a {self.kind} record is not ovas's to give")
                fields[part + name] = value
        written = self.codec.encode(fields)
        ours, notes = _split(written)
        return {FORMAT: written[FORMAT_KEY], **ours}, notes

    def decode(self, obj: Mapping[str, Any]) -> T:
        """The object's record (its `metadata`'s labels and annotations under `ovas/`) as
        its format's reader reads it. Raises `UnknownFormat` for a format this release has
        no reader for."""
        meta = obj.get("metadata") or {}
        fields = {self.codec.kind_key: self.kind}
        for part, key in ((_LABELS, "labels"), (_ANNOTATIONS, "annotations")):
            for name, value in (meta.get(key) or {}).items():
                if part == _LABELS and name == FORMAT:
                    fields[FORMAT_KEY] = value
                elif name.startswith(PREFIX):
                    fields[part + name] = value
        return self.codec.decode(Entry(str(meta.get("name", "")), fields, ""))


def _split(fields: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """A `MetadataCodec`'s fields as labels and annotations (other fields left out)."""
    labels = {k.removeprefix(_LABELS): v for k, v in fields.items() if k.startswith(_LABELS)}
    notes = {
        k.removeprefix(_ANNOTATIONS): v for k, v in fields.items() if k.startswith(_ANNOTATIONS)
    }
    return labels, notes


def _read_session_v1(labels: Mapping[str, str], notes: Mapping[str, str]) -> SessionRead:
    """Format 1 of a session's record (a session's object, or its outcome ConfigMap): the
    session id as label `SESSION`; what was asked, its clocks (seconds, as `seconds_text`
    writes them), marks, pool and node, and an outcome's state, reason, message and end as
    annotations (times in ISO 8601 with their offset)."""
    node = notes.get(NODE, "")
    session_id = labels.get(SESSION, "")
    created = parse_time(notes.get(CREATED))
    if not is_session_id(session_id) or not notes.get(APP) or created is None:
        return SessionRead(None, None, node)
    pooled = bool(notes.get(POOL)) and CLAIMED_AT not in notes
    listed = Listed(session_id, notes.get(USERNAME, ""), created, pooled)
    deadline = parse_time(notes.get(DEADLINE))
    try:
        clocks = clocks_of(dict(notes))
    except ValueError:
        return SessionRead(listed, None, node)
    marks = {}
    for mark, annotation in MARKS.items():
        at = parse_time(notes.get(annotation))
        if at is not None:
            marks[mark] = at
    outcome = _outcome_v1(notes) if STATE in notes else None
    if deadline is None or (STATE in notes and outcome is None):
        return SessionRead(listed, None, node)
    record = Record(
        id=session_id,
        app_id=notes.get(APP, ""),
        version=notes.get(VERSION, ""),
        profile=notes.get(PROFILE, ""),
        username=listed.username,
        created_time=created,
        deadline=deadline,
        clocks=clocks,
        marks=marks,
        outcome=outcome,
        pool=notes.get(POOL, ""),
        rendering=notes.get(RENDERING, ""),
    )
    return SessionRead(listed, record, node)


def _outcome_v1(notes: Mapping[str, str]) -> Outcome | None:
    """The outcome format 1's annotations record; None if it is not whole."""
    try:
        state = SessionState(notes.get(STATE, ""))
        reason = Reason(notes.get(REASON, ""))
    except ValueError:
        return None
    ended = parse_time(notes.get(ENDED))
    if not state.final or ended is None:
        return None
    return Outcome(state, reason, notes.get(MESSAGE, ""), ended)


def _read_slot_v1(labels: Mapping[str, str], notes: Mapping[str, str]) -> SlotRead:
    """Format 1 of an admission slot: its scope, session and user's label as labels, the
    user's name as the annotation `USERNAME`."""
    return SlotRead(labels.get(SLOT, ""), labels.get(SESSION, ""), notes.get(USERNAME, ""))


# The kinds of record on ovas's objects, and how each format of them reads.
SESSION_RECORD: MetadataCodec[SessionRead] = MetadataCodec("session", {1: _read_session_v1})
OUTCOME_RECORD: MetadataCodec[SessionRead] = MetadataCodec("outcome", {1: _read_session_v1})
SLOT_RECORD: MetadataCodec[SlotRead] = MetadataCodec("slot", {1: _read_slot_v1})
# Any object of ovas's, of whatever kind: read only to learn whether its format is readable.
ANY_RECORD: MetadataCodec[None] = MetadataCodec("object", {1: lambda labels, notes: None})
