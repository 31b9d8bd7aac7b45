"""The Kubernetes backend: a session is a Pod and a Service (mode `pod`), or a Flux
HelmRelease whose chart makes them (mode `helmrelease`, as NVIDIA's OVAS does).

The cluster is the only record: every answer comes from listing or reading labelled objects,
so replicas agree and a restart loses nothing. A live session's record is in the annotations
of the object owning it (its Pod, or its HelmRelease); marks are written there with a
resourceVersion precondition, so one process alone sets each. An ended session's record is
its outcome ConfigMap `ovas-<id>`, whose create (refused with 409 for a name that exists)
is the one step that ends a session; its workload and capacity slots are deleted after it.

Costs in API calls, whatever the number of sessions: `observe_all()` 3 (pods, services,
outcomes; 4 with releases), `observe_page()` 4 (5 with releases), `observe()` at most 3 (4
with releases), 1 for an ended session; `mark()` 2, `finish()` about 7, `stop()` about 6,
`collect()` 4-5 plus one per removal. Observing a session whose app has just exited adds one
call (its last log lines), until its outcome is recorded."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any, Self

from backends.kubernetes import objects as o
from backends.kubernetes import profiles
from backends.kubernetes import status as s
from backends.kubernetes.admission import Admission
from backends.kubernetes.catalog import KubernetesCatalog
from backends.kubernetes.client import (
    CONFIG_MAP,
    EVENT,
    HELM_RELEASE,
    NODE,
    POD,
    SERVICE,
    Kind,
    Kube,
    Missing,
    Taken,
)
from backends.kubernetes.ledger import KubernetesLedger
from ovas.backend import Backend, Catalog, utcnow
from ovas.errors import (
    BackendUnavailable,
    ConfigurationError,
    Conflict,
    InvalidInput,
    OvasError,
    SessionNotFound,
)
from ovas.lifecycle import LOG_LINES, Mark, Observation, Observed, Outcome, Record, Stage
from ovas.models import Reason, SessionQuery, SessionRequest
from ovas.names import is_session_id

log = logging.getLogger(__name__)

MODES = ("pod", "helmrelease")
ALL_SESSIONS = o.SESSION  # a selector: every object carrying the session label
OUTCOMES = f"{o.SESSION},{o.OUTCOME}"  # a selector: every outcome ConfigMap
PAGE_BY_ID = 100  # the longest page whose sessions are selected by id in one label selector
KEPT_LOG_LINES = 100  # log lines an outcome ConfigMap keeps
LOG_READS = 10  # exited sessions whose last log lines one listing reads, at most
MARK_ATTEMPTS = 5  # tries of a mark whose object another process changed meanwhile


@dataclass
class Objects:
    """The live objects of one session, as read from the cluster."""

    session_id: str
    # Its Pod (mode pod) or HelmRelease; in mode pod, its Service once the pod vanished.
    owner: dict[str, Any] | None = None
    pod: dict[str, Any] | None = None
    service: dict[str, Any] | None = None
    outcome: dict[str, Any] | None = None  # its whole outcome ConfigMap, once it ended

    @cached_property
    def record(self) -> Record | None:
        """The outcome's record once there is one, else the owner's; None if the owner's is
        not whole either (no session, only objects to collect). Read once all is found."""
        holder = self.outcome if self.outcome is not None else self.owner
        return s.record_of(holder) if holder is not None else None


class KubernetesBackend(Backend):
    """Sessions as labelled objects in one namespace of a Kubernetes cluster. The cluster
    cannot tell whether a client is connected, so `Observation.connections` is None: the
    connect and idle timeouts do not apply; the max lifetime and the start deadline do."""

    name = "kubernetes"
    keeps_warm_pools = True

    def __init__(
        self,
        *,
        namespace: str = "omni-streaming",
        mode: str = "pod",
        public_host: str | None = None,
        base_domain: str | None = None,
        orphan_grace: float = 60.0,
        helm_repository: str = o.DEFAULT_HELM_REPOSITORY,
        config_file: str | None = None,
        context: str | None = None,
        kube: Kube | None = None,
        catalog: Catalog | None = None,
        now: Callable[[], datetime] = utcnow,
        gateway: bool = False,
    ):
        """`orphan_grace`: seconds an object of no session is left alone by `collect` (it may
        be a start in progress). `base_domain`: with one, a session's route key is its own
        hostname `<session-id>.<base_domain>` (see `profiles.hostname`). `now`: the clock of
        records, marks and outcomes. `gateway`: the signaling gateway is on
        (`OVAS_GATEWAY_DOMAIN`), so a session's Service exposes its media only, and the
        gateway reaches signaling in the cluster. Raises `ConfigurationError` for a mode or
        domain that is not valid."""
        if mode not in MODES:
            raise ConfigurationError(
                f"OVAS_KUBERNETES_SESSION_MODE must be one of {', '.join(MODES)}, not {mode!r}"
            )
        try:
            self.base_domain = profiles.check_base_domain(base_domain) if base_domain else None
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        self.mode = mode
        self.public_host = public_host or None
        self.gateway = gateway
        self.orphan_grace = timedelta(seconds=orphan_grace)
        self.helm_repository = helm_repository
        self.now = now
        self.kube = kube or Kube(namespace, config_file=config_file, context=context)
        self.namespace = self.kube.namespace
        self.catalog = (
            catalog
            if catalog is not None
            else KubernetesCatalog(self.kube, refusal=lambda p: profiles.refusal(p, mode))
        )
        self.admission = Admission(self.kube)
        self.ledger = KubernetesLedger(kube=self.kube)  # the core's records, as ConfigMaps
        self._foreign_told: set[str] = set()  # objects of a newer format, named once
        self._nodes_told = False  # Nodes cannot be read (RBAC): said once

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Self:
        """Reads KUBERNETES_NAMESPACE, KUBERNETES_SESSION_MODE, KUBERNETES_PUBLIC_HOST,
        KUBERNETES_BASE_DOMAIN, KUBERNETES_HELM_REPOSITORY, KUBERNETES_CONTEXT and
        GATEWAY_DOMAIN; contacts nothing."""
        return cls(
            namespace=str(settings.get("KUBERNETES_NAMESPACE") or "omni-streaming"),
            mode=str(settings.get("KUBERNETES_SESSION_MODE") or "pod").strip().lower(),
            public_host=settings.get("KUBERNETES_PUBLIC_HOST") or None,
            base_domain=settings.get("KUBERNETES_BASE_DOMAIN") or None,
            helm_repository=str(
                settings.get("KUBERNETES_HELM_REPOSITORY") or o.DEFAULT_HELM_REPOSITORY
            ),
            context=settings.get("KUBERNETES_CONTEXT") or None,
            gateway=bool(settings.get("GATEWAY_DOMAIN")),
        )

    @property
    def helm(self) -> bool:
        return self.mode == "helmrelease"

    @property
    def owner_kind(self) -> Kind:
        """The kind of the object that owns a session and holds its record."""
        return HELM_RELEASE if self.helm else POD

    def _list(self, kind: Kind, selector: str, **kw: Any) -> list[dict[str, Any]]:
        """The objects of `kind` that `selector` selects and this release can read: those a
        newer release wrote (another `ovas/format`) are left alone, named once in the log."""
        try:
            found = self.kube.list(kind, selector, **kw)
        except Missing:
            raise BackendUnavailable(
                f"The cluster does not serve {kind.plural}.{kind.group or 'core'}"
                + (" (is Flux installed?)" if kind is HELM_RELEASE else "")
            ) from None
        mine = []
        for obj in found:
            refused = s.refusal(obj)
            if refused is None:
                mine.append(obj)
                continue
            name = f"{kind.kind}/{obj['metadata']['name']}"
            if name not in self._foreign_told:
                self._foreign_told.add(name)
                log.warning(
                    "leaving %s alone: its ovas/format %r is a newer release's",
                    name,
                    refused.format,
                )
        return mine

    def check(self) -> None:
        # A selector that matches nothing: cheap, and it proves the namespace's RBAC too.
        self._list(POD, f"{o.SESSION}=ovas-check")
        if self.helm:
            self._list(HELM_RELEASE, f"{o.SESSION}=ovas-check")

    def close(self) -> None:
        self.kube.close()

    # Starting

    def start(self, request: SessionRequest) -> Observed:
        """See `Backend.start`. Also raises `InvalidInput` for a profile this mode cannot run
        as written (`profiles.refusal`), before anything is taken; a profile's
        `ovas/max-pending` brings the recorded start deadline forward."""
        refused = profiles.refusal(request.profile, self.mode, request.values)
        if refused:
            raise InvalidInput(
                f"Profile '{request.profile.id}' cannot run in {self.mode} mode: {refused}",
                field="profile",
            )
        request = profiles.with_pending_limit(request)
        slots = self.admission.acquire(request)
        try:
            if self.helm:
                owner = self._create(
                    HELM_RELEASE,
                    o.build_helmrelease(
                        request, self.namespace, default_repository=self.helm_repository
                    ),
                )
                chart = f"{request.version.helm_chart} {request.version.helm_chart_version}"
                detail = f"Installing the chart {chart.strip()}"
            else:
                owner = self._start_pod(request)
                detail = "Creating the session's pod"
        except BaseException:
            self.admission.release(request.id)
            raise
        self.admission.bind(slots, owner)
        return Observed(Record.of(request), Observation(Stage.WAITING, detail=detail))

    def _create(self, kind: Kind, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.kube.create(kind, body)
        except Taken:
            raise Conflict(f"{kind.kind} {body['metadata']['name']} already exists") from None
        except Missing:
            raise BackendUnavailable(
                f"The cluster does not serve {kind.plural}.{kind.group or 'core'}"
                + (" (is Flux installed?)" if kind is HELM_RELEASE else "")
                + f" in namespace {self.namespace}"
            ) from None

    def _start_pod(self, request: SessionRequest) -> dict[str, Any]:
        pod = self._create(POD, o.build_pod(request, self.namespace))
        # With the gateway, a wildcard DNS name points at it and at the nodes' media ports.
        own_name = self.base_domain and not self.gateway
        name = profiles.hostname(request.id, self.base_domain) if own_name else None
        try:
            # Owned by nothing: it keeps the session's record should the pod vanish.
            service = o.build_service(
                request, self.namespace, hostname=name, signaling=not self.gateway
            )
            self._create(SERVICE, service)
        except BaseException:
            self.kube.delete(POD, pod["metadata"]["name"])
            raise
        return pod

    # Reading

    def _read(self, session_id: str) -> Objects:
        """The session's objects: its outcome first (an ended session costs that one call),
        then its owner, its pod and, once it may be ready, its Service."""
        found = Objects(session_id)
        selector = f"{o.SESSION}={session_id}"
        for config_map in self._list(CONFIG_MAP, f"{selector},{o.OUTCOME}", metadata_only=True):
            if s.is_live(config_map) and s.record_of(config_map) is not None:
                found.outcome = config_map
        if found.outcome is not None:
            return found
        name = o.object_name(session_id)
        owner = self.kube.get(self.owner_kind, name)
        if not self.helm and not s.is_live(owner):
            service = self.kube.get(SERVICE, name)
            if s.is_live(service) and s.record_of(service) is not None:
                found.owner = service  # the pod vanished; the Service keeps the record
            return found
        if not s.is_live(owner) or s.record_of(owner) is None:
            return found
        found.owner = owner
        if self.helm:
            found.pod = _session_pod(self._list(POD, selector))
            if found.pod is not None and _may_be_ready(found.pod, owner):
                found.service = _first_live(self._list(SERVICE, selector))
        else:
            found.pod = owner
            if _may_be_ready(owner, owner):
                service = self.kube.get(SERVICE, name)
                found.service = service if s.is_live(service) else None
        return found

    def observe(self, session_id: str) -> Observed:
        if not is_session_id(session_id):
            raise SessionNotFound(session_id)
        found = self._read(session_id)
        if found.record is None:
            raise SessionNotFound(session_id)
        return self._observed([found], events=True)[0]

    def observe_all(self) -> list[Observed]:
        return self._observed(self._sessions(*self._lists(ALL_SESSIONS)))

    def records(self) -> list[Record]:
        """Every session's record, off the metadata of the objects owning live sessions
        and of the outcome ConfigMaps (two lists)."""
        owners = self._list(self.owner_kind, ALL_SESSIONS, metadata_only=True)
        ended = self._list(CONFIG_MAP, OUTCOMES, metadata_only=True)
        found: dict[str, Record] = {}
        for obj in [*owners, *ended]:  # an outcome, read last, is the final word
            record = s.record_of(obj) if s.is_live(obj) else None
            if record is not None:
                found[record.id] = record
        return list(found.values())

    def observe_page(self, query: SessionQuery) -> list[Observed]:
        """The page chosen from every session's record, read off the metadata of the objects
        that own live sessions and of the outcome ConfigMaps of ended ones (two lists, a
        fraction of the bytes of whole objects); then the state of the page's live sessions
        alone, selected by id (one list per kind): 4 calls (5 with releases) whatever the
        number of sessions, 2 for a page of ended sessions. A page too long for one selector
        is read as `observe_all()` reads everything."""
        if query.limit > PAGE_BY_ID:
            return super().observe_page(query)
        narrow = ""
        if query.username is not None:
            # Narrowed by the user's label; equal usernames have equal labels.
            narrow = f",{o.USER}={o.label_value(query.username)}"
        owners = self._list(self.owner_kind, ALL_SESSIONS + narrow, metadata_only=True)
        ended = self._list(CONFIG_MAP, OUTCOMES + narrow, metadata_only=True)
        listed: dict[str, s.Listed] = {}
        outcomes: dict[str, dict[str, Any]] = {}
        for obj in owners:
            entry = s.listed_of(obj) if s.is_live(obj) else None
            if entry is not None:
                listed[entry.id] = entry
        for config_map in ended:
            entry = s.listed_of(config_map) if s.is_live(config_map) else None
            if entry is not None and s.record_of(config_map) is not None:
                listed[entry.id] = entry
                outcomes[entry.id] = config_map
        chosen = query.select(listed.values())
        live = [entry.id for entry in chosen if entry.id not in outcomes]
        found: dict[str, Objects] = {
            i: Objects(i, outcome=outcomes[i]) for i in (e.id for e in chosen) if i in outcomes
        }
        if live:
            selector = f"{o.SESSION} in ({','.join(live)})"
            pods, services = self._list(POD, selector), self._list(SERVICE, selector)
            releases = self._list(HELM_RELEASE, selector) if self.helm else []
            for objects in self._sessions(pods, services, [], releases):
                found[objects.session_id] = objects
        # A session removed between the two reads is left out.
        return self._observed([found[e.id] for e in chosen if e.id in found])

    def _lists(self, selector: str) -> tuple[list, list, list, list]:
        """Pods, services, outcome ConfigMaps (their metadata) and releases `selector`
        selects, one list each."""
        pods = self._list(POD, selector)
        services = self._list(SERVICE, selector)
        outcomes = self._list(CONFIG_MAP, f"{selector},{o.OUTCOME}", metadata_only=True)
        releases = self._list(HELM_RELEASE, selector) if self.helm else []
        return pods, services, outcomes, releases

    def _group(
        self,
        pods: Iterable[dict],
        services: Iterable[dict],
        outcomes: Iterable[dict],
        releases: Iterable[dict],
    ) -> dict[str, Objects]:
        """The live objects by session, whether or not they make a session."""
        groups: dict[str, Objects] = {}

        def entry(obj: dict[str, Any]) -> Objects | None:
            session_id = s.session_id_of(obj)
            if not session_id or not s.is_live(obj):
                return None
            return groups.setdefault(session_id, Objects(session_id))

        for config_map in outcomes:
            whole = s.is_outcome(config_map) and s.record_of(config_map) is not None
            found = entry(config_map) if whole else None
            if found is not None:
                found.outcome = config_map
        for release in releases:
            found = entry(release)
            if found is not None and found.owner is None:
                found.owner = release
        for pod in pods:
            found = entry(pod)
            if found is not None and (found.pod is None or s.disruption(pod) is not None):
                found.pod = pod
                if not self.helm:
                    found.owner = pod
        for service in services:
            found = entry(service)
            if found is not None and found.service is None:
                found.service = service
                if not self.helm and found.owner is None and s.record_of(service) is not None:
                    found.owner = service  # the pod vanished; the Service keeps the record
        return groups

    def _sessions(self, pods, services, outcomes, releases) -> list[Objects]:
        groups = self._group(pods, services, outcomes, releases)
        return [g for g in groups.values() if g.record is not None]

    def _observed(self, entries: list[Objects], *, events: bool = False) -> list[Observed]:
        """What each session's objects show; the last log lines of an app that has just
        exited are read too (for `LOG_READS` sessions at most). With `events`, the Events of
        a pod still waiting are read as well (one call a session: for one session only)."""
        found = []
        reads = 0
        for entry in entries:
            record = entry.record
            assert record is not None
            seen = self._seen(entry, record)
            if self.base_domain and seen.host:
                seen = replace(seen, host=profiles.hostname(record.id, self.base_domain))
            if events and seen.stage is Stage.WAITING and entry.pod is not None:
                told = self._events(entry.pod)
                seen = s.pod_observation(
                    entry.pod,
                    entry.service,
                    public_host=self.public_host,
                    events=told,
                    gateway=self.gateway,
                )
            if seen.stage is Stage.EXITED and entry.pod is not None and reads < LOG_READS:
                reads += 1
                seen = replace(seen, logs=tuple(self._tail(entry.pod, LOG_LINES)))
            found.append(Observed(record, seen))
        return found

    def _seen(self, entry: Objects, record: Record) -> Observation:
        if record.outcome is not None:
            return Observation(Stage.GONE)
        if entry.pod is None:
            assert entry.owner is not None
            lost = self._lost_node(entry.owner)
            if lost is not None:
                return lost
            if self.helm:
                return s.release_observation(entry.owner, dict(record.marks))
            return Observation(Stage.GONE)
        return s.pod_observation(
            entry.pod, entry.service, public_host=self.public_host, gateway=self.gateway
        )

    def _lost_node(self, holder: dict[str, Any]) -> Observation | None:
        """For a session whose pod vanished: a `node_lost` fault when the node the pod ran
        on (`ovas/node` on the Service or HelmRelease holding its record) no longer exists,
        as when the pod garbage collector removed its pods with no grace; else None (the pod
        was removed another way, or the node cannot be read: said once in the log). One
        call, only for a session whose record names its node."""
        node = s.node_of(holder)
        if not node:
            return None
        try:
            found = self.kube.get(NODE, node)
        except OvasError as exc:
            if not self._nodes_told:
                self._nodes_told = True
                log.warning(
                    "cannot tell a deleted node from a pod removed by hand (%s); grant ovas "
                    "get on nodes (a ClusterRole) for sessions to fail with node_lost",
                    exc.detail or exc.message,
                )
            return None
        if found is not None:
            return None
        return Observation(
            Stage.FAULT, fault=Reason.NODE_LOST, detail=f"its node {node} no longer exists"
        )

    def _events(self, pod: dict[str, Any]) -> list[dict[str, Any]]:
        """The Events about the pod (one call); [] if they cannot be read (they only add to
        what the pod's status says)."""
        name = pod["metadata"]["name"]
        try:
            return self.kube.list(
                EVENT, fields=f"involvedObject.kind=Pod,involvedObject.name={name}"
            )
        except (OvasError, Missing) as exc:
            log.warning("the events of pod %s: %s", name, getattr(exc, "message", exc))
            return []

    def _tail(self, pod: dict[str, Any], lines: int) -> list[str]:
        """The Kit container's last log lines; [] if they cannot be read (they only add to
        a message or a record)."""
        try:
            name = pod["metadata"]["name"]
            return self.kube.logs(name, tail=lines, container=s.kit_container(pod))
        except OvasError as exc:
            log.warning("the logs of pod %s: %s", pod["metadata"]["name"], exc.message)
            return []

    # What the lifecycle asks to keep

    def mark(self, session_id: str, mark: Mark, at: datetime | None) -> bool:
        """Set (or clear) the mark's annotation on the session's Pod or HelmRelease, with the
        resourceVersion read as a precondition: of processes marking at once, one is told
        True; the others, refused with 409, read the object again and find it set. The
        ready mark also records the pod's node (`ovas/node`) where the record outlives the
        pod: on the HelmRelease (its chart's pod listed first: one more call), and with the
        mark on the Service of mode pod (one more patch), by the process told True."""
        if not is_session_id(session_id):
            return False
        kind, name = self.owner_kind, o.object_name(session_id)
        annotation = o.MARKS[mark]
        stamp = at.isoformat() if at is not None else None
        node = None
        if self.helm and mark is Mark.READY and at is not None:
            pod = _session_pod(self._list(POD, f"{o.SESSION}={session_id}"))
            node = ((pod or {}).get("spec") or {}).get("nodeName")
        for _ in range(MARK_ATTEMPTS):
            owner = self.kube.get(kind, name)
            if not s.is_live(owner):
                return False
            if (at is not None) == (annotation in s.annotations(owner)):
                return False
            version = owner["metadata"].get("resourceVersion")
            notes: dict[str, str | None] = {annotation: stamp}
            if node:
                notes[o.NODE] = node
            patch = {"metadata": {"resourceVersion": version, "annotations": notes}}
            try:
                marked = self.kube.patch(kind, name, patch) is not None
            except Taken:
                continue
            if marked and not self.helm and mark is Mark.READY and at is not None:
                self._keep_on_service(
                    name, {annotation: stamp, o.NODE: (owner.get("spec") or {}).get("nodeName")}
                )
            return marked
        return False

    def _keep_on_service(
        self, name: str, annotations: dict[str, str | None], labels: dict[str, str] | None = None
    ) -> None:
        """Copy what changed of a pod-mode session's record to its Service, which keeps the
        record once the pod vanished (one patch). On a Service an older release made, which
        holds no record, the annotations stay unread; a Service that is gone is not made."""
        meta: dict[str, Any] = {"annotations": {k: v for k, v in annotations.items() if v}}
        if labels:
            meta["labels"] = labels
        try:
            self.kube.patch(SERVICE, name, {"metadata": meta})
        except OvasError as exc:
            log.warning("the record on Service %s: %s", name, exc.message)

    def claim(
        self, session_id: str, username: str, at: datetime, *, user_capacity: int = 0
    ) -> bool:
        """Take the user's slot (with a per-user cap), then write `ovas/username`, the
        user's label and `ovas/claimed-at` on the session's Pod or HelmRelease with the
        resourceVersion read as a precondition: of processes claiming at once, one
        succeeds; the others, refused with 409, read it again, find it claimed and give the
        slot back. The winner then frees the pool's place. `collect` completes what a
        process dying halfway leaves."""
        if not is_session_id(session_id):
            return False
        kind, name = self.owner_kind, o.object_name(session_id)
        taken: list[str] = []
        try:
            for _ in range(MARK_ATTEMPTS):
                owner = self.kube.get(kind, name)
                record = s.record_of(owner) if s.is_live(owner) else None
                if record is None or not record.pooled or record.outcome is not None:
                    return False
                if user_capacity and not taken:
                    taken.append(self.admission.take_user(session_id, username, at, user_capacity))
                user_label = {o.USER: o.label_value(username)}
                patch = {
                    "metadata": {
                        "resourceVersion": owner["metadata"].get("resourceVersion"),
                        "labels": user_label,
                        "annotations": {o.USERNAME: username, o.CLAIMED_AT: at.isoformat()},
                    }
                }
                try:
                    claimed = self.kube.patch(kind, name, patch)
                except Taken:
                    continue
                if claimed is None:
                    return False
                if not self.helm:
                    self._keep_on_service(name, patch["metadata"]["annotations"], user_label)
                self.admission.bind(taken, claimed)
                taken = []
                self.admission.release(session_id, "pool")
                return True
            return False
        finally:
            for slot in taken:
                self.kube.delete(CONFIG_MAP, slot)

    def finish(self, session_id: str, outcome: Outcome) -> bool:
        """Create the session's outcome ConfigMap (its record, the outcome, the Kit
        container's last log lines), then delete its workload and slots. True only for the
        process whose create made the ConfigMap; a later call (or `collect`) completes what
        an interrupted one left."""
        if not is_session_id(session_id):
            return False
        found = self._read(session_id)
        recorded = False
        if found.outcome is None:
            record = s.record_of(found.owner) if found.owner is not None else None
            if record is None:
                return False  # no such session, or it is being stopped
            logs = self._tail(found.pod, KEPT_LOG_LINES) if found.pod is not None else []
            try:
                body = o.build_outcome(record, outcome, logs, self.namespace)
                self.kube.create(CONFIG_MAP, body)
                recorded = True
            except Taken:
                pass  # another process recorded it first
            except OvasError as exc:
                # The workload must not hold its GPU for want of a record: it ends all the
                # same, and the session is forgotten rather than kept for its retention.
                log.warning(
                    "session %s %s, but its outcome cannot be recorded (%s); ending its "
                    "workload without keeping it",
                    session_id,
                    outcome.reason.value,
                    exc.detail or exc.message,
                )
        self._end(session_id, found.pod)
        return recorded

    def _end(self, session_id: str, pod: dict[str, Any] | None = None) -> None:
        """Delete the session's workload and free its capacity slots, keeping its outcome;
        what is already gone is not an error. `pod`, as read: one the cluster is taking away
        is removed at once, since while it lingers it would still speak for its session."""
        name = o.object_name(session_id)
        selector = f"{o.SESSION}={session_id}"
        taken = s.disruption(pod) is not None
        if self.helm:
            self.kube.delete(HELM_RELEASE, name)
            if taken and pod is not None:
                self.kube.delete(POD, pod["metadata"]["name"], now=True)
            # Flux uninstalls the release too, but the workload must end at once.
            self.kube.delete_all(POD, selector)
            self.kube.delete_all(SERVICE, selector)
        else:
            # The Service first: it holds the record too, which must not outlive the pod
            # here, lest a finish racing a stop take the session for one whose pod vanished.
            self.kube.delete(SERVICE, name)
            self.kube.delete(POD, name, now=taken)
        self.admission.release(session_id)

    # Removing

    def stop(self, session_id: str) -> None:
        if not is_session_id(session_id):
            raise SessionNotFound(session_id)
        selector = f"{o.SESSION}={session_id},{o.OUTCOME}"
        ended = [c for c in self._list(CONFIG_MAP, selector, metadata_only=True) if s.is_live(c)]
        owner = self.kube.get(self.owner_kind, o.object_name(session_id))
        if not ended and not s.is_live(owner) and not self._vanished(session_id):
            raise SessionNotFound(session_id)
        # The workload goes first: a finish racing this stop then finds no session to end.
        self._end(session_id, None if self.helm else owner)
        self.kube.delete(CONFIG_MAP, o.outcome_name(session_id))

    def _vanished(self, session_id: str) -> bool:
        """A pod-mode session whose pod vanished, its record kept by its Service (one call)."""
        if self.helm:
            return False
        service = self.kube.get(SERVICE, o.object_name(session_id))
        return s.is_live(service) and s.record_of(service) is not None

    def collect(self, now: datetime) -> list[str]:
        """Complete the finishes an interrupted process left (an outcome recorded, its
        workload or slots still there), and remove what belongs to no session: slots of
        starts that died half way, Services (and a chart's Pods) whose owner is gone,
        objects whose record is not whole. An object younger than `orphan_grace` may be a
        start in progress and is left alone. Returns `kind/name` of each object removed."""
        selector = ALL_SESSIONS
        pods, services = self._list(POD, selector), self._list(SERVICE, selector)
        config_maps = self._list(CONFIG_MAP, selector, metadata_only=True)
        releases = self._list(HELM_RELEASE, selector) if self.helm else []
        outcomes = [c for c in config_maps if s.is_outcome(c)]
        slots = [c for c in config_maps if o.SLOT in s.labels(c)]
        groups = self._group(pods, services, outcomes, releases)
        ended = {i for i, g in groups.items() if g.outcome is not None}
        alive = {i for i, g in groups.items() if g.record is not None} - ended
        removed: list[str] = []
        kinds = [(POD, pods), (SERVICE, services), (HELM_RELEASE, releases), (CONFIG_MAP, slots)]
        unfinished: set[str] = set()
        for kind, items in kinds:
            for obj in items:
                session_id = s.session_id_of(obj)
                if not s.is_live(obj) or session_id in alive:
                    continue
                name = obj["metadata"]["name"]
                if session_id in ended:
                    unfinished.add(session_id)
                    removed.append(f"{kind.kind.lower()}/{name}")
                elif self._old(obj, now) and self.kube.delete(kind, name):
                    removed.append(f"{kind.kind.lower()}/{name}")
        for session_id in sorted(unfinished):
            log.info("completing the end of session %s", session_id)
            self._end(session_id)
        removed += self._complete_claims(slots, groups, alive, now)
        for config_map in outcomes:
            group = groups.get(s.session_id_of(config_map) or "")
            kept = group is not None and group.outcome is config_map
            if s.is_live(config_map) and not kept and self._old(config_map, now):
                name = config_map["metadata"]["name"]
                if self.kube.delete(CONFIG_MAP, name):
                    removed.append(f"configmap/{name}")
        return removed

    def _complete_claims(
        self, slots: list[dict], groups: dict[str, Objects], alive: set[str], now: datetime
    ) -> list[str]:
        """Slots a claim that died halfway left: the pool's place of a claimed session, and
        a user's slot taken for a claim that was never made."""
        removed = []
        for slot in slots:
            session_id = s.session_id_of(slot) or ""
            if session_id not in alive or not s.is_live(slot):
                continue
            record = groups[session_id].record
            read = s.slot_of(slot)
            if read is None:
                continue
            if read.scope == "pool":
                stale = not record.pooled
            else:
                owner = read.username
                stale = read.scope == "user" and owner != record.username and self._old(slot, now)
            name = slot["metadata"]["name"]
            if stale and self.kube.delete(CONFIG_MAP, name):
                removed.append(f"configmap/{name}")
        return removed

    def _old(self, obj: dict[str, Any], now: datetime) -> bool:
        """Older than the grace given a start in progress."""
        created = o.parse_time(obj["metadata"].get("creationTimestamp"))
        return created is not None and now >= created + self.orphan_grace

    def logs(self, session_id: str, tail: int = 100) -> list[str]:
        """The Kit container's last `tail` lines: from its pod while it runs, from its
        outcome ConfigMap once it ended. Raises `SessionNotFound`."""
        if not is_session_id(session_id):
            raise SessionNotFound(session_id)
        selector = f"{o.SESSION}={session_id}"
        for config_map in self._list(CONFIG_MAP, f"{selector},{o.OUTCOME}"):
            if s.is_live(config_map) and s.record_of(config_map) is not None:
                return s.logs_of(config_map)[-tail:] if tail > 0 else []
        owner = self.kube.get(self.owner_kind, o.object_name(session_id))
        if not s.is_live(owner) or s.record_of(owner) is None:
            if not s.is_live(owner) and self._vanished(session_id):
                return []  # its pod vanished with its log
            raise SessionNotFound(session_id)
        pod = _first_live(self._list(POD, selector)) if self.helm else owner
        if pod is None:
            return []
        return self.kube.logs(pod["metadata"]["name"], tail=tail, container=s.kit_container(pod))


def _first_live(items: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((obj for obj in items if s.is_live(obj)), None)


def _session_pod(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A chart's pod of the session: one the cluster took away first (a Deployment replaces
    it, but the stream it carried is over), else the first live one."""
    return next((p for p in pods if s.disruption(p) is not None), None) or _first_live(pods)


def _may_be_ready(pod: dict[str, Any], owner: dict[str, Any]) -> bool:
    """Worth reading the Service of: the pod is Ready, or the session was once."""
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )
    record = s.record_of(owner)
    return ready or (record is not None and Mark.READY in record.marks)
