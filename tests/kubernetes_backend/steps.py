"""Steps the Kubernetes backend's tests share: starting a session under the core's rules,
finding a session's objects and its record (a ledger ConfigMap) in the emulated cluster,
and playing a kubelet on its pod."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

from support import kube_requests

from backends.kubernetes import objects as o
from backends.kubernetes.ledger import object_name as ledger_object
from ovas.ledger import Entry
from ovas.lifecycle import Outcome, Record
from ovas.models import Session, SessionRequest
from ovas.services import SessionService
from ovas.session_records import SESSION_RECORD
from ovas.workloads import SESSION_PREFIX

PODS = "v1/pods"
SERVICES = "v1/services"
CONFIG_MAPS = "v1/configmaps"
RELEASES = "helm.toolkit.fluxcd.io/v2/helmreleases"
KINDS = (PODS, SERVICES, CONFIG_MAPS, RELEASES)
# `POST /streaming/stream`'s body for a stand-in session.
START_BODY = {"id": "kit-standin", "profile": "standin", "version": "1.0.0"}
# A namespace ResourceQuota with room for one Pod: the cluster refuses a second Pod.
ONE_POD_QUOTA = {
    "apiVersion": "v1",
    "kind": "ResourceQuota",
    "metadata": {"name": "gpu-quota"},
    "spec": {"hard": {"pods": "1"}},
}


def request_for(backend, kit: dict | None = None, **kw) -> SessionRequest:
    """`support.kube_requests.request_for`, created at the backend's time by default."""
    kw.setdefault("now", backend.now())
    return kube_requests.request_for(backend, kit, **kw)


def start(sessions: SessionService, request: SessionRequest) -> Session:
    """Start `request` on the service's backend and decide it, as `POST /stream` does."""
    return sessions._settle(sessions.backend.start(request))


def of_session(cluster, kind: str, session_id: str) -> list[dict[str, Any]]:
    """The session's objects of one kind, as the cluster holds them now."""
    return [
        obj
        for obj in cluster.objects(kind)
        if (obj["metadata"].get("labels") or {}).get(o.SESSION) == session_id
    ]


def record_of(cluster, session_id: str) -> tuple[Record, tuple[str, ...]] | None:
    """The session's record and kept log lines, as its ledger ConfigMap holds them now."""
    name = ledger_object(f"{SESSION_PREFIX}{session_id}")
    found = [c for c in cluster.objects(CONFIG_MAPS) if c["metadata"]["name"] == name]
    if not found:
        return None
    (config_map,) = found
    return SESSION_RECORD.decode(Entry(name, config_map.get("data") or {}, ""))


def outcome_of(cluster, session_id: str) -> Outcome | None:
    """The outcome the session's record holds, if any."""
    found = record_of(cluster, session_id)
    return found[0].outcome if found is not None else None


def leftovers(cluster, session_id: str) -> list[str]:
    """`kind/name` of every object of the session."""
    return [
        f"{kind.rsplit('/', 1)[1]}/{obj['metadata']['name']}"
        for kind in KINDS
        for obj in of_session(cluster, kind, session_id)
    ]


def settle(cluster, session_id: str, keep: Callable[[str], bool] = lambda _: False) -> list[str]:
    """What is left of a session (but what `keep` keeps) once the kubelet has ended its
    terminating pods."""
    deadline = time.monotonic() + 5
    while True:
        left = [name for name in leftovers(cluster, session_id) if not keep(name)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def kubelet(cluster, session_id: str, change: Callable[[dict[str, Any]], None]) -> None:
    """Change the status of the session's pod as its node would (`change` edits a copy)."""

    def edit() -> None:
        emulator = cluster.emulator
        for key, pod in list(emulator.items(PODS)):
            if (pod["metadata"].get("labels") or {}).get(o.SESSION) == session_id:
                new = copy.deepcopy(pod)
                change(new)
                emulator.update(key, new)
                return
        raise AssertionError(f"session {session_id} has no pod")

    cluster.locked(edit)


def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
