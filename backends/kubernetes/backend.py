"""The Kubernetes backend: a session's workload is a Pod and a Service (mode `pod`), or a Flux
HelmRelease whose chart makes them (mode `helmrelease`, as NVIDIA's OVAS does).

It runs, observes and stops workloads (`ovas.Backend`); the core keeps every record
of the sessions, admission places, claims, marks and outcomes included, in the backend's
ledger: ConfigMaps in the namespace (`backends.kubernetes.ledger`), which every replica
shares. A workload's objects carry the label naming their session and nothing of its record
(`objects.workload_labels`). Sessions an earlier release recorded on their objects are read
by `earlier_records` for the core to adopt.

Costs in API calls, whatever the number of sessions: `observe_workloads()` 2 (pods and
services; 3 with releases), the same for a page's workloads, selected by id;
`observe_workload()` at most 2 (3 with releases), one more for the last log lines of an app
that has just exited and one for the Node of a pod that vanished; `workload_node()` 1;
`stop_workload()` about 4; `earlier_records()` 3 (4 with releases), 2 for one session."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Self

from backends.kubernetes import objects as o
from backends.kubernetes import profiles
from backends.kubernetes import status as s
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
from ovas.backend import Catalog, utcnow
from ovas.errors import (
    BackendUnavailable,
    ConfigurationError,
    Conflict,
    InvalidInput,
    OvasError,
)
from ovas.lifecycle import LOG_LINES, Mark, Observation, Observed, Record, Stage
from ovas.models import Reason, SessionRequest
from ovas.names import is_session_id
from ovas.workloads import Backend, EarlierRecord

log = logging.getLogger(__name__)

MODES = ("pod", "helmrelease")
ALL_SESSIONS = o.SESSION  # a selector: every object carrying the session label
PAGE_BY_ID = 100  # the most sessions whose workloads one label selector selects by id
LOG_READS = 10  # exited sessions whose last log lines one listing reads, at most
# An earlier release's admission slot scopes, as the core's kinds of place.
PLACES = {"global": "all", "user": "user", "pool": "pool"}


@dataclass
class Objects:
    """The live objects of one session's workload, as read from the cluster."""

    session_id: str
    owner: dict[str, Any] | None = None  # its Pod (mode pod) or HelmRelease
    pod: dict[str, Any] | None = None
    service: dict[str, Any] | None = None


class KubernetesBackend(Backend):
    """Sessions' workloads as labelled objects in one namespace of a Kubernetes cluster. The
    cluster cannot tell whether a client is connected (`workload_clients` is None): without
    the signaling gateway the connect and idle timeouts do not apply; the max lifetime and
    the start deadline do."""

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
        """`orphan_grace`: seconds an admission place held by no session is kept (it may be
        a start in progress; `Backend.slot_grace`). `base_domain`: with one, a
        session's route key is its own hostname `<session-id>.<base_domain>` (see
        `profiles.hostname`). `now`: the clock of records, marks and outcomes. `gateway`:
        the signaling gateway is on (`OVAS_GATEWAY_DOMAIN`), so a session's Service exposes
        its media only, and the gateway reaches signaling in the cluster. Raises
        `ConfigurationError` for a mode or domain that is not valid."""
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
        self.slot_grace = orphan_grace
        self.helm_repository = helm_repository
        self.kube = kube or Kube(namespace, config_file=config_file, context=context)
        self.namespace = self.kube.namespace
        if catalog is None:
            catalog = KubernetesCatalog(self.kube, refusal=lambda p: profiles.refusal(p, mode))
        # The core's records, as ConfigMaps.
        super().__init__(catalog, ledger=KubernetesLedger(kube=self.kube), now=now)
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
        """The kind of the object that owns a session's workload."""
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

    def _get(self, kind: Kind, name: str) -> dict[str, Any] | None:
        """The object, while it is live and of a format this release reads; else None."""
        found = self.kube.get(kind, name)
        return found if s.is_live(found) and not s.foreign(found) else None

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
        return super().start(profiles.with_pending_limit(request))

    def run_workload(self, request: SessionRequest) -> None:
        """Create the session's HelmRelease, or its Pod and then its Service (owned by the
        Pod). A ResourceQuota refusing them raises `CapacityExceeded` (`resource="gpu"` when
        it is the GPUs' quota), an admission webhook `InvalidInput`."""
        if self.helm:
            release = o.build_helmrelease(
                request, self.namespace, default_repository=self.helm_repository
            )
            self._create(HELM_RELEASE, release)
            return
        pod = self._create(POD, o.build_pod(request, self.namespace))
        # With the gateway, a wildcard DNS name points at it and at the nodes' media ports.
        own_name = self.base_domain and not self.gateway
        name = profiles.hostname(request.id, self.base_domain) if own_name else None
        service = o.build_service(
            request, self.namespace, pod, hostname=name, signaling=not self.gateway
        )
        self._create(SERVICE, service)

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

    # What the cluster shows

    def observe_workload(self, session_id: str) -> Observation | None:
        """The session's pod, read by name (mode pod) or by label under its HelmRelease; its
        Service once the Kit container runs; its Events while it waits; the Kit container's
        last log lines once it exited. A Service or HelmRelease whose pod is gone is
        `status.Remains`."""
        if not is_session_id(session_id):
            return None
        name, selector = o.object_name(session_id), f"{o.SESSION}={session_id}"
        found = Objects(session_id)
        if self.helm:
            found.owner = self._get(HELM_RELEASE, name)
            if found.owner is None:
                return None
            found.pod = _session_pod(self._list(POD, selector))
            if found.pod is not None and _may_be_ready(found.pod):
                found.service = _first_live(self._list(SERVICE, selector))
        else:
            found.owner = found.pod = self._get(POD, name)
            if found.pod is None or _may_be_ready(found.pod):
                found.service = self._get(SERVICE, name)
        return self._seen(found, events=True)

    def observe_workloads(self) -> dict[str, Observation]:
        """Every workload of ours: one list of pods, one of services (and one of releases)."""
        return self._workloads(ALL_SESSIONS)

    def observe_workloads_of(self, session_ids: Collection[str]) -> dict[str, Observation]:
        """The workloads of `session_ids`, selected by id in one list per kind (up to
        `PAGE_BY_ID` of them; more are read as `observe_workloads` reads them)."""
        ids = sorted({i for i in session_ids if is_session_id(i)})
        if not ids:
            return {}
        if len(ids) > PAGE_BY_ID:
            return self.observe_workloads()
        return self._workloads(f"{o.SESSION} in ({','.join(ids)})")

    def _workloads(self, selector: str) -> dict[str, Observation]:
        pods, services = self._list(POD, selector), self._list(SERVICE, selector)
        releases = self._list(HELM_RELEASE, selector) if self.helm else []
        found = {}
        reads = 0
        for objects in self._group(pods, services, releases):
            seen = self._seen(objects, logs=reads < LOG_READS)
            if seen is not None:
                reads += seen.stage is Stage.EXITED
                found[objects.session_id] = seen
        return found

    def _group(self, pods, services, releases) -> list[Objects]:
        """The live objects by session, whether or not the session's owner is among them."""
        groups: dict[str, Objects] = {}

        def entry(obj: dict[str, Any]) -> Objects | None:
            session_id = s.session_id_of(obj)
            if not session_id or not s.is_live(obj):
                return None
            return groups.setdefault(session_id, Objects(session_id))

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
        return list(groups.values())

    def _seen(self, found: Objects, *, events: bool = False, logs: bool = True):
        """What the objects show; None when there are none. With `events`, the Events of a
        pod still waiting are read (one call); with `logs`, the last lines of an app that
        exited. What is left without the pod or the HelmRelease is `status.Remains`."""
        if self.helm and found.owner is None:
            if found.pod is None and found.service is None:
                return None
            return s.Remains(Stage.WAITING, detail="its HelmRelease is gone")
        if found.pod is None:
            if self.helm:
                return s.release_observation(found.owner)
            if found.service is None:
                return None
            return s.Remains(Stage.WAITING, detail="its pod is gone")
        seen = s.pod_observation(
            found.pod, found.service, public_host=self.public_host, gateway=self.gateway
        )
        if events and seen.stage is Stage.WAITING:
            seen = s.pod_observation(
                found.pod,
                found.service,
                public_host=self.public_host,
                events=self._events(found.pod),
                gateway=self.gateway,
            )
        if logs and seen.stage is Stage.EXITED:
            seen = replace(seen, logs=tuple(self._tail(found.pod, LOG_LINES)))
        if self.base_domain and seen.host:
            seen = replace(seen, host=profiles.hostname(found.session_id, self.base_domain))
        return seen

    def explain_workload(self, record: Record, seen: Observation | None) -> Observation | None:
        """A pod that vanished: a `node_lost` fault when the node it ran on (`record.node`,
        kept with the ready mark) no longer exists, as when the pod garbage collector
        removed a deleted node's pods with no grace; else gone (`lost`). A HelmRelease
        without its pod is so once the session was ready; before, it is still to come."""
        if isinstance(seen, s.Remains):
            if seen.release and (seen.stage is Stage.FAULT or Mark.READY not in record.marks):
                return seen
        elif seen is not None:
            return seen
        lost = self._lost_node(record.node)
        if lost is not None:
            return lost
        if isinstance(seen, s.Remains) and seen.release:
            return Observation(Stage.GONE, detail="the pod of its chart was removed")
        return None

    def _lost_node(self, node: str) -> Observation | None:
        """A `node_lost` fault when `node` no longer exists; None when it does, when none
        is named, or when Nodes cannot be read (said once in the log). One call."""
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

    def workload_node(self, session_id: str) -> str:
        """The node the session's pod runs on (one call)."""
        pod = self._pod(session_id)
        return ((pod or {}).get("spec") or {}).get("nodeName") or ""

    def _pod(self, session_id: str) -> dict[str, Any] | None:
        """The session's pod: by name, or under its HelmRelease by label."""
        if not is_session_id(session_id):
            return None
        if self.helm:
            return _session_pod(self._list(POD, f"{o.SESSION}={session_id}"))
        return self._get(POD, o.object_name(session_id))

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
        a message)."""
        try:
            name = pod["metadata"]["name"]
            return self.kube.logs(name, tail=lines, container=s.kit_container(pod))
        except OvasError as exc:
            log.warning("the logs of pod %s: %s", pod["metadata"]["name"], exc.message)
            return []

    def workload_logs(self, session_id: str, tail: int) -> list[str]:
        """The Kit container's last `tail` lines (one call; two with releases); [] once its
        pod is gone."""
        if not is_session_id(session_id):
            return []
        if self.helm:
            pod = _first_live(self._list(POD, f"{o.SESSION}={session_id}"))
            if pod is None:
                return []
            return self.kube.logs(
                pod["metadata"]["name"], tail=tail, container=s.kit_container(pod)
            )
        return self.kube.logs(o.object_name(session_id), tail=tail, container=o.CONTAINER)

    # Stopping

    def stop_workload(self, session_id: str) -> None:
        """Delete the session's Pod and Service, or its HelmRelease and the chart's objects,
        and what an earlier release kept of it (its outcome and slot ConfigMaps). A pod the
        cluster is taking away goes at once (no grace), lest it still speak for its session
        while it lingers. What is gone already is no error."""
        name, selector = o.object_name(session_id), f"{o.SESSION}={session_id}"
        pods = self._list(POD, selector)
        for pod in pods:
            taken = s.disruption(pod) is not None
            if taken or not self.helm:
                self.kube.delete(POD, pod["metadata"]["name"], now=taken)
        if self.helm:
            self.kube.delete(HELM_RELEASE, name)
            # Flux uninstalls the release too, but the workload must end at once.
            self.kube.delete_all(POD, selector)
            self.kube.delete_all(SERVICE, selector)
        else:
            self.kube.delete(SERVICE, name)  # an earlier release's is owned by nothing
        self.kube.delete_all(CONFIG_MAP, selector)

    # What an earlier release recorded

    def earlier_records(self, session_id: str | None = None) -> list[EarlierRecord]:
        """Sessions the releases before the ledger recorded on their objects (format 1, or
        no `ovas/format`): the record in the annotations of the session's Pod (or, from
        93837ff on, of its Service, which outlived a vanished pod, with the node) or
        HelmRelease, or of its outcome ConfigMap once it ended (with the last log lines in
        its data); the admission slots it held, as places. One list each of pods, services
        (of releases, in their stead) and ConfigMaps, and a read of each outcome ConfigMap
        found; for one session, a read of its owner and a list of its ConfigMaps (and, for
        a ready one whose node it did not keep, of its pod)."""
        if session_id is not None and not is_session_id(session_id):
            return []
        selector = f"{o.SESSION}={session_id}" if session_id else ALL_SESSIONS
        if session_id is None:
            pods = self._list(POD, selector)
            keepers = self._list(
                HELM_RELEASE if self.helm else SERVICE, selector, metadata_only=True
            )
        else:
            owner = self._get(self.owner_kind, o.object_name(session_id))
            pods, keepers = ([], [owner]) if self.helm else ([owner], [])
        config_maps = self._list(CONFIG_MAP, selector, metadata_only=True)
        records: dict[str, Record] = {}
        nodes: dict[str, str] = {}
        for obj in [p for p in pods if p is not None and s.is_live(p)]:
            nodes.setdefault(
                s.session_id_of(obj) or "", (obj.get("spec") or {}).get("nodeName", "")
            )
            record = None if self.helm else s.earlier_record(obj)
            if record is not None:
                records[record.id] = record
        for obj in [k for k in keepers if k is not None and s.is_live(k)]:
            record = s.earlier_record(obj)
            if record is not None:
                kept = records.setdefault(record.id, record)  # a Pod's record comes first
                if record.node and not kept.node:
                    records[record.id] = replace(kept, node=record.node)
        places: dict[str, set[str]] = {}
        for config_map in [c for c in config_maps if s.is_live(c)]:
            if s.is_outcome(config_map):
                record = s.earlier_record(config_map)
                if record is not None:
                    records[record.id] = record  # an outcome, read last, is the final word
            elif o.SLOT in s.labels(config_map):
                slot = s.earlier_slot(config_map)
                if slot is not None and slot.scope in PLACES:
                    places.setdefault(slot.session_id, set()).add(PLACES[slot.scope])
        found = []
        for record in records.values():
            logs: tuple[str, ...] = ()
            if record.outcome is not None:
                kept = self.kube.get(CONFIG_MAP, o.outcome_name(record.id))
                logs = tuple(s.logs_of(kept)) if kept is not None else ()
            elif not record.node and Mark.READY in record.marks:
                node = nodes.get(record.id) or (self.workload_node(record.id) if session_id else "")
                record = replace(record, node=node)
            found.append(EarlierRecord(record, logs, frozenset(places.get(record.id, ()))))
        return found

    def forget_earlier_record(self, session_id: str) -> None:
        """Label the objects holding the session's earlier record with `ovas/format: 2`, as
        this release labels its own: a patch of each of its Pod and Service (or
        HelmRelease) and outcome ConfigMap that exist. Their annotations stay, unread."""
        if not is_session_id(session_id):
            return
        name = o.object_name(session_id)
        patch = {"metadata": {"labels": {o.FORMAT: o.WORKLOAD_FORMAT}}}
        holders = [HELM_RELEASE] if self.helm else [POD, SERVICE]
        for kind in [*holders, CONFIG_MAP]:
            self.kube.patch(kind, name, patch)


def _first_live(items: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((obj for obj in items if s.is_live(obj)), None)


def _session_pod(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A chart's pod of the session: one the cluster took away first (a Deployment replaces
    it, but the stream it carried is over), else the first live one."""
    return next((p for p in pods if s.disruption(p) is not None), None) or _first_live(pods)


def _may_be_ready(pod: dict[str, Any]) -> bool:
    """Worth reading the Service of: the pod is Ready, or its Kit container runs (a ready
    session's readiness may blip; its routes stay known)."""
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )
    return ready or "running" in ((s.kit_status(pod) or {}).get("state") or {})
