"""Pure builders of the Kubernetes objects of a session (Pod, Service, HelmRelease), and the
readers of what earlier releases recorded on their objects. No I/O; every function returns
plain dicts ready to send to the API server.

A session's objects carry the labels `ovas/session=<id>` and `ovas/format=2`
(`WORKLOAD_FORMAT`): they run its workload, and nothing more. The session's record (what was
asked, its clocks, marks, outcome and last log lines, the node its pod ran on) is the
core's, the ConfigMap of `session.<id>` in the ledger (`backends.kubernetes.ledger`).
`ovas/app`, `ovas/version` and `ovas/profile` label what an object runs, for operators
(`kubectl get pods -l ovas/app=...`); nothing reads them. In mode pod the Service is owned
by its Pod, so the cluster removes it with the pod.

Earlier releases recorded each session on its objects instead, under `ovas/` (format 1, or
no `ovas/format` at all before formats were written): in annotations of the object owning
it (its Pod or HelmRelease; from 93837ff on also its Service, which outlived the pod and
kept `NODE`), an ended session in its outcome ConfigMap `ovas-<id>` (`OUTCOME`, its last
log lines in `data.logs`), and the admission slots it held in ConfigMaps labelled `SLOT`.
Their readers (`EARLIER_SESSION`, `EARLIER_OUTCOME`, `EARLIER_SLOT`, through the core's
record codec, `ovas.ledger.RecordCodec`) read them for the core to adopt
(`KubernetesBackend.earlier_records`); an adopted object is labelled format 2, as this
release's are, and is never read as a record again. An object of a format this release
cannot read (a newer release's) raises `UnknownFormat` and is left alone.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

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
# What earlier releases wrote (read for adoption only)
USER = PREFIX + "user"  # label: the user, made label-safe
SLOT = PREFIX + "slot"  # "global", "user" or "pool", on admission slots only
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
# Annotation on the Service (mode pod) or HelmRelease, with the ready mark: the node the
# session's pod ran on.
NODE = PREFIX + "node"
STATE = PREFIX + "state"  # the outcome, on outcome ConfigMaps: "ended" or "failed"
REASON = PREFIX + "reason"
MESSAGE = PREFIX + "message"
ENDED = PREFIX + "ended-time"
LOGS = "logs"  # the outcome ConfigMap's key holding the Kit container's last log lines
# What this release writes
MANAGED_BY = "app.kubernetes.io/managed-by"
EXTERNAL_DNS = "external-dns.alpha.kubernetes.io/hostname"  # the DNS name external-dns sets
# The format of what ovas writes on each object (its labels, and once its annotations),
# written by its `MetadataCodec`: 1 (or none, before formats were written) holds a session's
# record; 2 marks a workload whose record is the ledger's. Any other is a newer release's,
# left alone (`status.foreign`).
FORMAT = PREFIX + FORMAT_KEY
WORKLOAD_FORMAT = "2"
MANAGED = {MANAGED_BY: "ovas"}
OURS = {**MANAGED, FORMAT: "1"}  # the labels of the core's ledger ConfigMaps

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


def workload_labels(request: SessionRequest) -> dict[str, str]:
    """The labels of a new session's objects (`WORKLOAD`'s encoding): `ovas/format` first,
    then the session, and what it runs, made label-safe."""
    labels = {
        SESSION: request.id,
        APP: label_value(request.app.id),
        VERSION: label_value(request.version.version),
        PROFILE: label_value(request.profile.id),
    }
    return WORKLOAD.encode(labels, {})[0]


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
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": object_name(request.id),
            "namespace": namespace,
            "labels": {**MANAGED, **workload_labels(request)},
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
    """The Service exposing the session's signaling (TCP) and media (UDP) ports, owned by
    `owner` where given (the session's Pod as read back), so the cluster removes it with
    that object.

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
    metadata: dict[str, Any] = {
        "name": object_name(request.id),
        "namespace": namespace,
        "labels": {**MANAGED, **workload_labels(request)},
        "annotations": {str(k): str(v) for k, v in (settings.get("annotations") or {}).items()},
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
    labels the chart must put on the session's pod and service (`streamingKit.labels`)."""
    values = copy.deepcopy(request.values)
    kit = values.setdefault("streamingKit", {})
    kit.setdefault("name", request.id)
    kit["sessionId"] = request.id
    kit["labels"] = {**kit.get("labels", {}), **workload_labels(request)}
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
    return {
        "apiVersion": FLUX_API_VERSION,
        "kind": "HelmRelease",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**MANAGED, **workload_labels(request)},
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
    """The name of the outcome ConfigMap an earlier release made for an ended session."""
    return object_name(session_id)


def parse_time(text: Any) -> datetime | None:
    """An RFC 3339 / ISO 8601 time as the API server or our annotations write it."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


# Records: what ovas writes on its objects, and how each format of it reads


@dataclass(frozen=True)
class SessionRead:
    """What an object of a session (its Pod, Service or HelmRelease, or an earlier outcome
    ConfigMap) records of it, as its format's reader reads it: `record`, the session's as an
    earlier release kept it on the object (with `Record.node` where it kept the node), None
    when the object holds none (format 2) or not a whole one."""

    record: Record | None


@dataclass(frozen=True)
class SlotRead:
    """An earlier release's admission slot ConfigMap as its format's reader reads it: `scope`
    ("global", "user" or "pool"; "" if not said) and `session_id`."""

    scope: str
    session_id: str


class MetadataCodec(Generic[T]):
    """A `RecordCodec` over a Kubernetes object's labels and annotations together, for
    records of one kind, written in format `current`.

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
        current: int = 1,
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
            current=current,
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
    session id as label `SESSION`; what was asked, its clocks (seconds), marks, pool and
    node, and an outcome's state, reason, message and end as annotations (times in ISO 8601
    with their offset)."""
    session_id = labels.get(SESSION, "")
    created = parse_time(notes.get(CREATED))
    deadline = parse_time(notes.get(DEADLINE))
    if not is_session_id(session_id) or not notes.get(APP) or created is None:
        return SessionRead(None)
    try:
        clocks = clocks_of(dict(notes))
    except ValueError:
        return SessionRead(None)
    marks = {}
    for mark, annotation in MARKS.items():
        at = parse_time(notes.get(annotation))
        if at is not None:
            marks[mark] = at
    outcome = _outcome_v1(notes) if STATE in notes else None
    if deadline is None or (STATE in notes and outcome is None):
        return SessionRead(None)
    record = Record(
        id=session_id,
        app_id=notes.get(APP, ""),
        version=notes.get(VERSION, ""),
        profile=notes.get(PROFILE, ""),
        username=notes.get(USERNAME, ""),
        created_time=created,
        deadline=deadline,
        clocks=clocks,
        marks=marks,
        outcome=outcome,
        pool=notes.get(POOL, ""),
        rendering=notes.get(RENDERING, ""),
        node=notes.get(NODE, ""),
    )
    return SessionRead(record)


def _read_workload_v2(labels: Mapping[str, str], notes: Mapping[str, str]) -> SessionRead:
    """Format 2: a workload of the session `SESSION` names, whose record is the ledger's."""
    return SessionRead(None)


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
    """Format 1 of an admission slot: its scope and session as labels."""
    return SlotRead(labels.get(SLOT, ""), labels.get(SESSION, ""))


SESSION_READERS = {1: _read_session_v1, 2: _read_workload_v2}
# A session's Pod, Service or HelmRelease: written in format 2, read in 1 (an earlier
# release's record) and 2.
WORKLOAD: MetadataCodec[SessionRead] = MetadataCodec(
    "session", SESSION_READERS, current=int(WORKLOAD_FORMAT)
)
# An earlier release's outcome ConfigMap (format 1), or one adopted since (2); never written.
EARLIER_OUTCOME: MetadataCodec[SessionRead] = MetadataCodec("outcome", SESSION_READERS)
# An earlier release's admission slot ConfigMap; never written.
EARLIER_SLOT: MetadataCodec[SlotRead] = MetadataCodec("slot", {1: _read_slot_v1})
# Any object of ovas's, of whatever kind: read only to learn whether its format is readable.
ANY_RECORD: MetadataCodec[None] = MetadataCodec(
    "object", {number: lambda labels, notes: None for number in SESSION_READERS}
)
