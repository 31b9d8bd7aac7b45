"""The Kubernetes backend: a session is a Pod and a Service (mode `pod`), or a Flux
HelmRelease whose chart makes them (mode `helmrelease`, as NVIDIA's OVAS does).

The cluster is the only record: every answer comes from listing or reading labelled objects,
so replicas agree and a restart loses nothing. Costs in API calls: `list()` 2 (pods,
services; 3 with releases), `page()` one more (the owners' metadata), `get()` at most 2,
`start()` about 5, `stop()` 4, `reap()` 4-5 plus one per removal; reading a session that has
just failed adds one call, once, writing the failure on its pod."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Self

from backends.kubernetes import objects as o
from backends.kubernetes.admission import Admission
from backends.kubernetes.catalog import KubernetesCatalog
from backends.kubernetes.client import (
    CONFIG_MAP,
    HELM_RELEASE,
    POD,
    SERVICE,
    Kind,
    Kube,
    Missing,
    Taken,
)
from backends.kubernetes.status import (
    Observed,
    failure_mark,
    is_live,
    listed_of,
    observe,
    pod_state,
    ready_mark,
    record_of,
)
from ovas.backend import Backend, Catalog
from ovas.errors import BackendUnavailable, ConfigurationError, Conflict, SessionNotFound
from ovas.models import Session, SessionQuery, SessionRequest, SessionState

log = logging.getLogger(__name__)

MODES = ("pod", "helmrelease")
ALL_SESSIONS = o.SESSION  # a selector: every object carrying the session label
PAGE_BY_ID = 100  # the longest page whose sessions are selected by id in one label selector


class KubernetesBackend(Backend):
    """Sessions as labelled objects in one namespace of a Kubernetes cluster."""

    name = "kubernetes"

    def __init__(
        self,
        *,
        namespace: str = "omni-streaming",
        mode: str = "pod",
        public_host: str | None = None,
        reap_grace: float = 60.0,
        helm_repository: str = o.DEFAULT_HELM_REPOSITORY,
        config_file: str | None = None,
        context: str | None = None,
        kube: Kube | None = None,
        catalog: Catalog | None = None,
    ):
        if mode not in MODES:
            raise ConfigurationError(
                f"OVAS_KUBERNETES_SESSION_MODE must be one of {', '.join(MODES)}, not {mode!r}"
            )
        self.mode = mode
        self.public_host = public_host or None
        self.reap_grace = timedelta(seconds=reap_grace)
        self.helm_repository = helm_repository
        self.kube = kube or Kube(namespace, config_file=config_file, context=context)
        self.namespace = self.kube.namespace
        self.catalog = catalog if catalog is not None else KubernetesCatalog(self.kube)
        self.admission = Admission(self.kube)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Self:
        """Reads KUBERNETES_NAMESPACE, KUBERNETES_SESSION_MODE, KUBERNETES_PUBLIC_HOST,
        KUBERNETES_HELM_REPOSITORY, KUBERNETES_CONTEXT and REAP_GRACE; contacts nothing."""
        return cls(
            namespace=str(settings.get("KUBERNETES_NAMESPACE") or "omni-streaming"),
            mode=str(settings.get("KUBERNETES_SESSION_MODE") or "pod").strip().lower(),
            public_host=settings.get("KUBERNETES_PUBLIC_HOST") or None,
            reap_grace=float(settings.get("REAP_GRACE", 60)),
            helm_repository=str(
                settings.get("KUBERNETES_HELM_REPOSITORY") or o.DEFAULT_HELM_REPOSITORY
            ),
            context=settings.get("KUBERNETES_CONTEXT") or None,
        )

    @property
    def helm(self) -> bool:
        return self.mode == "helmrelease"

    def _list(self, kind: Kind, selector: str, **kw: Any) -> list[dict[str, Any]]:
        try:
            return self.kube.list(kind, selector, **kw)
        except Missing:
            raise BackendUnavailable(
                f"The cluster does not serve {kind.plural}.{kind.group or 'core'}"
                + (" (is Flux installed?)" if kind is HELM_RELEASE else "")
            ) from None

    def check(self) -> None:
        # A selector that matches nothing: cheap, and it proves the namespace's RBAC too.
        self._list(POD, f"{o.SESSION}=ovas-check")
        if self.helm:
            self._list(HELM_RELEASE, f"{o.SESSION}=ovas-check")

    def close(self) -> None:
        self.kube.close()

    # Starting

    def start(self, request: SessionRequest) -> Session:
        slots = self.admission.acquire(request)
        try:
            if self.helm:
                owner = self._create(
                    HELM_RELEASE,
                    o.build_helmrelease(
                        request, self.namespace, default_repository=self.helm_repository
                    ),
                )
                message = f"Installing the chart {request.version.helm_chart}"
            else:
                owner = self._start_pod(request)
                message = "Creating the session's pod"
        except BaseException:
            self.admission.release(request.id)
            raise
        self.admission.bind(slots, owner)
        return Session.of(
            request,
            state=SessionState.CREATING,
            message=message,
        )

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
        try:
            self._create(SERVICE, o.build_service(request, self.namespace, owner=pod))
        except BaseException:
            self.kube.delete(POD, pod["metadata"]["name"])
            raise
        return pod

    # Reading

    def get(self, session_id: str) -> Session:
        now = datetime.now(UTC)
        name = o.object_name(session_id)
        if not self.helm:
            pod = self.kube.get(POD, name)
            record = record_of(pod) if is_live(pod) else None
            if record is None:
                raise SessionNotFound(session_id)
            # The service matters only for the routes of a ready pod.
            ready = pod_state(pod)[0] is SessionState.READY
            service = self.kube.get(SERVICE, name) if ready else None
            return self._observe(record, pod=pod, service=service, now=now).session
        selector = f"{o.SESSION}={session_id}"
        pods = [p for p in self._list(POD, selector) if is_live(p)]
        if pods:
            services = [s for s in self._list(SERVICE, selector) if is_live(s)]
            # Helm installs a release's Service before its pods: a pod without its Service
            # belongs to a session being removed.
            record = record_of(pods[0]) or (record_of(services[0]) if services else None)
            if not services or record is None:
                raise SessionNotFound(session_id)
            return self._observe(record, pod=pods[0], service=services[0], now=now).session
        release = self.kube.get(HELM_RELEASE, name)
        record = record_of(release) if is_live(release) else None
        if record is None:
            raise SessionNotFound(session_id)
        return self._observe(record, pod=None, service=None, release=release, now=now).session

    def _observe(self, record: Observed, *, mark_ready: bool = True, **parts: Any) -> Observed:
        """`mark_ready`: write a first readiness on the pod. `get` and the reaper do; a listing
        does not, so that it costs the same number of calls for any number of sessions."""
        seen = observe(record, public_host=self.public_host, **parts)
        if seen.unmarked_pod and seen.failed_at:
            # Once failed, failed for good: write it on the pod (one call, once per session).
            mark = failure_mark(seen.session.message, seen.failed_at)
            self.kube.patch(POD, seen.unmarked_pod, mark)
        elif seen.unmarked_ready and mark_ready:
            # Once ready, never failed by the start deadline (one call, once per session).
            self.kube.patch(POD, seen.unmarked_ready, ready_mark(datetime.now(UTC)))
        return seen

    def _observe_all(
        self, now: datetime, *, mark_ready: bool = False, selector: str = ALL_SESSIONS
    ) -> tuple[list[Observed], dict[str, list]]:
        """The sessions `selector` selects (every one by default), from one list per kind;
        also the lists, for the reaper."""
        lists: dict[str, list] = {
            "pods": self._list(POD, selector),
            "services": self._list(SERVICE, selector),
        }
        pods = _by_session(lists["pods"])
        services = _by_session(lists["services"])
        found = []
        if self.helm:
            lists["releases"] = self._list(HELM_RELEASE, selector)
            for release in lists["releases"]:
                record = record_of(release) if is_live(release) else None
                if record is None:
                    continue
                sid = record.session.id
                found.append(
                    self._observe(
                        record,
                        mark_ready=mark_ready,
                        pod=pods.get(sid),
                        service=services.get(sid),
                        release=release,
                        now=now,
                    )
                )
        else:
            for sid, pod in pods.items():
                record = record_of(pod)
                if record is not None:
                    found.append(
                        self._observe(
                            record,
                            mark_ready=mark_ready,
                            pod=pod,
                            service=services.get(sid),
                            now=now,
                        )
                    )
        return found, lists

    def list(self) -> list[Session]:
        return [seen.session for seen in self._observe_all(datetime.now(UTC))[0]]

    def page(self, query: SessionQuery) -> list[Session]:
        """The page chosen from every session's record, read off the metadata of the objects
        that own sessions (one list, a fraction of the bytes of whole pods); then the state of
        the page's sessions alone, selected by id (one list per kind): 3 calls (4 with
        releases) whatever the number of sessions. A page too long for one selector is read
        as `list()` reads everything."""
        if query.limit > PAGE_BY_ID:
            return super().page(query)
        selector = ALL_SESSIONS
        if query.username is not None:
            # Narrowed by the user's label; equal usernames have equal labels.
            selector += f",{o.USER}={o.label_value(query.username)}"
        owners = self._list(HELM_RELEASE if self.helm else POD, selector, metadata_only=True)
        listed = [listed_of(obj) for obj in owners if is_live(obj)]
        chosen = query.select([entry for entry in listed if entry is not None])
        if not chosen:
            return []
        ids = [session.id for session in chosen]
        seen = self._observe_all(datetime.now(UTC), selector=f"{o.SESSION} in ({','.join(ids)})")
        current = {observed.session.id: observed.session for observed in seen[0]}
        # A session removed between the two reads is left out.
        return [current[i] for i in ids if i in current]

    # Stopping

    def stop(self, session_id: str) -> None:
        name = o.object_name(session_id)
        owner = self.kube.get(HELM_RELEASE if self.helm else POD, name)
        if not is_live(owner):
            raise SessionNotFound(session_id)
        self._remove(session_id)

    def _remove(self, session_id: str) -> None:
        """Delete everything of the session; what is already gone is not an error."""
        name = o.object_name(session_id)
        if self.helm:
            self.kube.delete(HELM_RELEASE, name)
            # Flux uninstalls the release too, but the session must be gone at once.
            self.kube.delete_all(POD, f"{o.SESSION}={session_id}")
            self.kube.delete_all(SERVICE, f"{o.SESSION}={session_id}")
        else:
            self.kube.delete(POD, name)
            self.kube.delete(SERVICE, name)
        self.admission.release(session_id)

    def reap(self, now: datetime) -> list[str]:
        found, lists = self._observe_all(now, mark_ready=True)
        removed = []
        for seen in found:
            failed = seen.session.state is SessionState.FAILED
            if failed and seen.failed_at and now >= seen.failed_at + self.reap_grace:
                log.info("removing session %s: %s", seen.session.id, seen.session.message)
                self._remove(seen.session.id)
                removed.append(seen.session.id)
        alive = {seen.session.id for seen in found}
        lists["slots"] = self._list(CONFIG_MAP, o.SLOT)
        kinds = {"pods": POD, "services": SERVICE, "releases": HELM_RELEASE, "slots": CONFIG_MAP}
        for key, items in lists.items():
            for obj in items:
                if self._orphan(obj, alive, now):
                    name = obj["metadata"]["name"]
                    if self.kube.delete(kinds[key], name):
                        removed.append(f"{kinds[key].kind.lower()}/{name}")
        return removed

    def _orphan(self, obj: dict[str, Any], alive: set[str], now: datetime) -> bool:
        """Ours, old enough not to be a start in progress, and of no live session."""
        meta = obj.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return False
        created = o.parse_time(meta.get("creationTimestamp"))
        if created is None or now < created + self.reap_grace:
            return False
        sid = (meta.get("labels") or {}).get(o.SESSION)
        return sid not in alive


def _by_session(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found = {}
    for obj in items:
        sid = ((obj.get("metadata") or {}).get("labels") or {}).get(o.SESSION)
        if sid and is_live(obj):
            found.setdefault(sid, obj)
    return found
