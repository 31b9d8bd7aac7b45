"""Reading a session's state off its objects: pure functions from the Pod, Service and
HelmRelease (as the API server returns them) to an ovas `Session`.

A session is READY when its pod is Ready and its route is known; FAILED at once when the
image cannot be pulled, no node can take the pod, or the Kit container exited or keeps
crashing; FAILED when its deadline passes before it is ready; CREATING otherwise, with what
it is waiting for in the message.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, NamedTuple

from backends.kubernetes import objects as o
from ovas.models import Route, Session, SessionState

ACTIVE = "Session is active"
IMAGE_FAILURES = {
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "RegistryUnavailable",
}
CREATE_FAILURES = {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
# Flux reasons after which a release will not be installed without a change to it.
RELEASE_FAILURES = {"InstallFailed", "ArtifactFailed", "InitFailed", "ChartNotFound"}


@dataclass
class Observed:
    """A session as read from the cluster, with what the reaper needs to know."""

    session: Session
    deadline: datetime | None
    failed_at: datetime | None = None  # when it failed, for the reaper's grace
    unmarked_pod: str | None = None  # a pod whose failure is not yet written on it
    unmarked_ready: str | None = None  # a ready pod whose readiness is not yet written on it


def failure_mark(message: str, when: datetime) -> dict[str, Any]:
    """The patch that records a session's failure on its pod, so that it stays failed (and
    is reaped) even if the pod later runs: a pending pod is scheduled when GPUs free up."""
    return {"metadata": {"annotations": {o.FAILED: message, o.FAILED_AT: when.isoformat()}}}


def ready_mark(when: datetime) -> dict[str, Any]:
    """The patch that records on its pod that a session was ready once: from then on, the
    start deadline no longer applies, so a readiness blip never fails a live stream."""
    return {"metadata": {"annotations": {o.READY_AT: when.isoformat()}}}


def _meta(obj: dict[str, Any] | None) -> dict[str, Any]:
    return (obj or {}).get("metadata") or {}


def is_live(obj: dict[str, Any] | None) -> bool:
    """Present and not being deleted (a deleted session is gone at once for its users)."""
    return obj is not None and not _meta(obj).get("deletionTimestamp")


def session_id_of(obj: dict[str, Any]) -> str | None:
    return (_meta(obj).get("labels") or {}).get(o.SESSION)


class Listed(NamedTuple):
    """What choosing a page of sessions reads (`SessionQuery.select`): cheap to make from
    the metadata of a thousand objects."""

    id: str
    username: str
    created_time: datetime


def listed_of(obj: dict[str, Any]) -> Listed | None:
    """The session an object's labels and annotations name; None if they are not ours or
    not complete (such objects are orphans for the reaper). Reads the metadata alone."""
    meta = _meta(obj)
    notes = meta.get("annotations") or {}
    session_id = (meta.get("labels") or {}).get(o.SESSION)
    if not session_id or not notes.get(o.APP):
        return None
    created = o.parse_time(notes.get(o.CREATED))
    if created is None:
        return None
    return Listed(session_id, notes.get(o.USERNAME, ""), created)


def record_of(obj: dict[str, Any]) -> Observed | None:
    """The session an object describes, as `listed_of` finds it, with the rest of what its
    annotations record."""
    listed = listed_of(obj)
    if listed is None:
        return None
    notes = _meta(obj).get("annotations") or {}
    session = Session(
        id=listed.id,
        app_id=notes.get(o.APP, ""),
        version=notes.get(o.VERSION, ""),
        profile=notes.get(o.PROFILE, ""),
        username=listed.username,
        created_time=listed.created_time,
        message="Waiting for the pod",
    )
    return Observed(session, o.parse_time(notes.get(o.DEADLINE)))


def _condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    for condition in ((obj or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return condition
    return None


def _terminated_text(terminated: dict[str, Any]) -> str:
    code = terminated.get("exitCode")
    reason = terminated.get("reason")
    text = f"The Kit container exited with code {code}"
    if reason and reason not in ("Error", "Completed"):
        text += f" ({reason})"
    return text


def pod_state(pod: dict[str, Any]) -> tuple[SessionState, str, datetime | None]:
    """The pod's state as a session state, a message for the user, and when it failed."""
    status = pod.get("status") or {}
    image = next(iter((pod.get("spec") or {}).get("containers") or []), {}).get("image", "")
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        terminated = state.get("terminated")
        if terminated:
            when = o.parse_time(terminated.get("finishedAt"))
            return SessionState.FAILED, _terminated_text(terminated), when
        waiting = state.get("waiting") or {}
        reason, detail = waiting.get("reason", ""), waiting.get("message", "")
        if reason == "CrashLoopBackOff":
            last = (container.get("lastState") or {}).get("terminated") or {}
            text = f"The Kit container keeps crashing; last exit code {last.get('exitCode', '?')}"
            return SessionState.FAILED, text, o.parse_time(last.get("finishedAt"))
        if reason in IMAGE_FAILURES:
            text = f"The image {container.get('image') or image} cannot be pulled ({reason})"
            return SessionState.FAILED, text + (f": {detail}" if detail else ""), None
        if reason in CREATE_FAILURES:
            text = f"The Kit container cannot be created ({reason})"
            return SessionState.FAILED, text + (f": {detail}" if detail else ""), None
    phase = status.get("phase")
    if phase in ("Failed", "Succeeded"):
        why = ": ".join(p for p in (status.get("reason"), status.get("message")) if p)
        return (
            SessionState.FAILED,
            f"The session's pod {phase.lower()}" + (f" ({why})" if why else ""),
            None,
        )
    scheduled = _condition(pod, "PodScheduled")
    if (
        scheduled
        and scheduled.get("status") == "False"
        and scheduled.get("reason") == ("Unschedulable")
    ):
        text = "No node can run the session"
        detail = scheduled.get("message")
        when = o.parse_time(scheduled.get("lastTransitionTime"))
        return SessionState.FAILED, text + (f": {detail}" if detail else ""), when
    ready = _condition(pod, "Ready")
    if ready and ready.get("status") == "True":
        return SessionState.READY, ACTIVE, None
    if not (pod.get("spec") or {}).get("nodeName") and not status.get("hostIP"):
        return SessionState.CREATING, "Waiting for a node to run the session", None
    running = any(
        "running" in (c.get("state") or {}) for c in status.get("containerStatuses") or []
    )
    if running:
        return SessionState.CREATING, "Starting the Kit application", None
    return SessionState.CREATING, f"Pulling the image {image} and creating the container", None


def _port_role(port: dict[str, Any]) -> str:
    name = str(port.get("name") or "").lower()
    if "signal" in name:
        return o.SIGNALING
    if "media" in name:
        return o.MEDIA
    return o.SIGNALING if port.get("protocol", "TCP") == "TCP" else o.MEDIA


def _container_port(pod: dict[str, Any] | None, target: Any) -> int | None:
    if isinstance(target, int):
        return target
    for container in ((pod or {}).get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == target:
                return port.get("containerPort")
    return None


def routes_of(
    service: dict[str, Any], pod: dict[str, Any] | None, public_host: str | None
) -> tuple[str, tuple[Route, ...]] | None:
    """The address clients reach and the routes to the Kit ports; None while unknown.

    LoadBalancer: its ingress IP or hostname, the service ports. NodePort: `public_host`, or
    the pod's node, with the node ports. ClusterIP: the cluster IP (reachable in-cluster)."""
    spec = service.get("spec") or {}
    kind = spec.get("type", "ClusterIP")
    if kind == "LoadBalancer":
        ingress = (((service.get("status") or {}).get("loadBalancer") or {}).get("ingress")) or []
        host = next((i.get("ip") or i.get("hostname") for i in ingress if i), None)
        source_key = "port"
    elif kind == "NodePort":
        host = public_host or ((pod or {}).get("status") or {}).get("hostIP")
        source_key = "nodePort"
    else:
        host = spec.get("clusterIP") if spec.get("clusterIP") not in (None, "None") else None
        source_key = "port"
    if not host:
        return None
    found: dict[str, Route] = {}
    for port in spec.get("ports") or []:
        source = port.get(source_key)
        destination = _container_port(pod, port.get("targetPort", port.get("port")))
        if not source or not destination:
            return None
        role = _port_role(port)
        found[role] = Route(role, port.get("protocol", "TCP"), int(source), int(destination))
    return host, tuple(found[r] for r in (o.SIGNALING, o.MEDIA) if r in found)


def release_state(release: dict[str, Any]) -> tuple[SessionState, str, datetime | None]:
    """A HelmRelease whose pod does not exist yet: installing, or failed for good (and when)."""
    chart = ((release.get("spec") or {}).get("chart") or {}).get("spec") or {}
    what = f"chart {chart.get('chart', '?')} {chart.get('version', '')}".strip()
    stalled = _condition(release, "Stalled")
    ready = _condition(release, "Ready") or {}
    failure = None
    if stalled and stalled.get("status") == "True":
        failure = stalled
    elif ready.get("status") == "False" and ready.get("reason") in RELEASE_FAILURES:
        failure = ready
    if failure:
        message = f"The {what} cannot be installed: {failure.get('message', '')}"
        return SessionState.FAILED, message, o.parse_time(failure.get("lastTransitionTime"))
    if ready.get("status") == "True":
        return SessionState.CREATING, f"The {what} is installed; waiting for the pod", None
    return SessionState.CREATING, f"Installing the {what}", None


def observe(
    record: Observed,
    *,
    pod: dict[str, Any] | None,
    service: dict[str, Any] | None,
    release: dict[str, Any] | None = None,
    public_host: str | None = None,
    now: datetime,
) -> Observed:
    """The session's state from its objects at `now` (any of them may be missing)."""
    session = record.session
    notes = _meta(pod).get("annotations") or {}
    if o.FAILED in notes:
        failed = replace(session, state=SessionState.FAILED, message=notes[o.FAILED])
        return Observed(failed, record.deadline, o.parse_time(notes.get(o.FAILED_AT)) or now)
    failed_at = None
    host, routes = None, ()
    if pod is not None:
        state, message, failed_at = pod_state(pod)
        if state is SessionState.READY:
            found = routes_of(service, pod, public_host) if service is not None else None
            if found is None:
                state, message = SessionState.CREATING, "Waiting for the session's address"
            else:
                host, routes = found
    elif release is not None:
        state, message, failed_at = release_state(release)
    else:
        state, message = SessionState.CREATING, session.message
    was_ready = o.READY_AT in notes
    if state is SessionState.FAILED:
        failed_at = failed_at or now
    elif state is not SessionState.READY and was_ready:
        message = f"The session's pod is not ready right now ({message})"
    elif state is not SessionState.READY and record.deadline and now >= record.deadline:
        seconds = (record.deadline - session.created_time).total_seconds()
        state = SessionState.FAILED
        message = f"The session was not ready within {seconds:.0f} seconds ({message})"
        failed_at = record.deadline
    session = replace(session, state=state, message=message, host=host, routes=routes)
    unmarked = _meta(pod).get("name") if state is SessionState.FAILED else None
    ready_unmarked = (
        _meta(pod).get("name") if state is SessionState.READY and not was_ready else None
    )
    return Observed(session, record.deadline, failed_at, unmarked, ready_unmarked)
