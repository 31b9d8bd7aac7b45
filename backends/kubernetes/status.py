"""Reading sessions off their objects: pure functions from what the API server returns (a
Pod, its Service, a HelmRelease, an outcome ConfigMap) to a session's `Record` and an
`Observation` of its workload. Nothing here decides a state, a message or a deadline: the
core's lifecycle (`ovas.lifecycle.decide`) does, from what these report.

What a pod shows, as a `Stage`:

- FAULT, with the reason: the image cannot be pulled (`ErrImagePull`, `ImagePullBackOff`...:
  `image_pull`), no node can take the pod (PodScheduled False, Unschedulable: `no_gpu` when
  the scheduler names too few `nvidia.com/gpu`, else `unschedulable`), the node evicted it
  (`evicted`), the container cannot be created (`CreateContainerConfigError`,
  `CreateContainerError`, `RunContainerError`: `create_failed`), it keeps crashing
  (`CrashLoopBackOff` after `CRASH_LOOP_RESTARTS` restarts: `crash_loop`); a HelmRelease whose
  install failed (`install_failed`).
- EXITED: the Kit container terminated (or was restarted after it did), with its exit code,
  `oom` when it was `OOMKilled`, and when it finished.
- RUNNING: the container runs; `probe_ok` once the pod is Ready and its address is known.
- WAITING: not running yet; `detail` says for what (a node, the image, the chart).
- GONE: only the record is left (an outcome ConfigMap; a release whose pod vanished after
  the session was ready).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from backends.kubernetes import objects as o
from ovas.kitspec import GPU_RESOURCE
from ovas.lifecycle import Mark, Observation, Outcome, Record, Stage
from ovas.models import Reason, Route, SessionState
from ovas.names import is_session_id

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
# Restarts after which a container in CrashLoopBackOff "keeps crashing"; before that, its
# first exit is the session's end, reported as the exit it was.
CRASH_LOOP_RESTARTS = 2
NO_GPU = f"Insufficient {GPU_RESOURCE}"
# Exit reasons that say no more than the exit code does.
PLAIN_EXITS = {"Error", "Completed", "OOMKilled"}


def _meta(obj: dict[str, Any] | None) -> dict[str, Any]:
    return (obj or {}).get("metadata") or {}


def annotations(obj: dict[str, Any] | None) -> dict[str, str]:
    return _meta(obj).get("annotations") or {}


def labels(obj: dict[str, Any] | None) -> dict[str, str]:
    return _meta(obj).get("labels") or {}


def is_live(obj: dict[str, Any] | None) -> bool:
    """Present and not being deleted (a deleted session is gone at once for its users)."""
    return obj is not None and not _meta(obj).get("deletionTimestamp")


def session_id_of(obj: dict[str, Any]) -> str | None:
    return labels(obj).get(o.SESSION)


def is_outcome(obj: dict[str, Any]) -> bool:
    """An outcome ConfigMap (see `objects.build_outcome`), not an admission slot."""
    return o.OUTCOME in labels(obj)


# Records


class Listed(NamedTuple):
    """What choosing a page of sessions reads (`SessionQuery.select`): cheap to make from
    the metadata of a thousand objects."""

    id: str
    username: str
    created_time: datetime
    pooled: bool = False  # a warm pool's, unclaimed


def listed_of(obj: dict[str, Any]) -> Listed | None:
    """The session an object's labels and annotations name; None if they are not ours or
    not complete (such objects are orphans for `collect`). Reads the metadata alone."""
    notes = annotations(obj)
    session_id = labels(obj).get(o.SESSION)
    if not session_id or not is_session_id(session_id) or not notes.get(o.APP):
        return None
    created = o.parse_time(notes.get(o.CREATED))
    if created is None:
        return None
    pooled = bool(notes.get(o.POOL)) and o.CLAIMED_AT not in notes
    return Listed(session_id, notes.get(o.USERNAME, ""), created, pooled)


def record_of(obj: dict[str, Any]) -> Record | None:
    """The session's record an object's annotations hold (the Pod or HelmRelease owning a
    session, or its outcome ConfigMap, which adds the outcome); None if they are not
    complete. Reads the metadata alone."""
    listed = listed_of(obj)
    if listed is None:
        return None
    notes = annotations(obj)
    deadline = o.parse_time(notes.get(o.DEADLINE))
    if deadline is None:
        return None
    try:
        clocks = o.clocks_of(notes)
    except ValueError:
        return None
    marks = {}
    for mark, annotation in o.MARKS.items():
        at = o.parse_time(notes.get(annotation))
        if at is not None:
            marks[mark] = at
    outcome = None
    if o.STATE in notes:
        outcome = outcome_of(notes)
        if outcome is None:
            return None
    return Record(
        id=listed.id,
        app_id=notes.get(o.APP, ""),
        version=notes.get(o.VERSION, ""),
        profile=notes.get(o.PROFILE, ""),
        username=listed.username,
        created_time=listed.created_time,
        deadline=deadline,
        clocks=clocks,
        marks=marks,
        outcome=outcome,
        pool=notes.get(o.POOL, ""),
    )


def outcome_of(notes: dict[str, str]) -> Outcome | None:
    """The outcome an outcome ConfigMap's annotations record; None if it is not whole."""
    try:
        state = SessionState(notes.get(o.STATE, ""))
        reason = Reason(notes.get(o.REASON, ""))
    except ValueError:
        return None
    ended = o.parse_time(notes.get(o.ENDED))
    if not state.final or ended is None:
        return None
    return Outcome(state, reason, notes.get(o.MESSAGE, ""), ended)


def logs_of(config_map: dict[str, Any]) -> list[str]:
    """The log lines an outcome ConfigMap keeps."""
    text = ((config_map.get("data") or {}).get(o.LOGS)) or ""
    return text.splitlines()


# Observations


def _condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    for condition in ((obj or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return condition
    return None


def kit_status(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The status of the pod's Kit container: the one named `kit`, else the first."""
    statuses = ((pod.get("status") or {}).get("containerStatuses")) or []
    return next((s for s in statuses if s.get("name") == o.CONTAINER), None) or next(
        iter(statuses), None
    )


def kit_container(pod: dict[str, Any]) -> str | None:
    """The name of the pod's Kit container, to read its logs."""
    status = kit_status(pod)
    if status and status.get("name"):
        return status["name"]
    containers = (pod.get("spec") or {}).get("containers") or []
    names = [c.get("name") for c in containers]
    return o.CONTAINER if o.CONTAINER in names else next(iter(names), None)


def _exited(terminated: dict[str, Any]) -> Observation:
    reason = terminated.get("reason") or ""
    detail = terminated.get("message") or ("" if reason in PLAIN_EXITS else reason)
    return Observation(
        Stage.EXITED,
        exit_code=terminated.get("exitCode"),
        oom=reason == "OOMKilled",
        finished_time=o.parse_time(terminated.get("finishedAt")),
        detail=detail,
    )


def _image(pod: dict[str, Any], status: dict[str, Any] | None = None) -> str:
    first = next(iter((pod.get("spec") or {}).get("containers") or []), {})
    return (status or {}).get("image") or first.get("image", "")


def _fault(reason: Reason, detail: str) -> Observation:
    return Observation(Stage.FAULT, fault=reason, detail=detail)


def pod_observation(
    pod: dict[str, Any], service: dict[str, Any] | None, *, public_host: str | None = None
) -> Observation:
    """What the session's pod (and its Service, for the address) shows now."""
    status = pod.get("status") or {}
    if status.get("reason") == "Evicted":
        return _fault(Reason.EVICTED, status.get("message") or "")
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        why, said = waiting.get("reason", ""), waiting.get("message", "")
        if why in IMAGE_FAILURES:
            detail = f"{_image(pod, container)} ({why})" + (f": {said}" if said else "")
            return _fault(Reason.IMAGE_PULL, detail)
        if why in CREATE_FAILURES:
            return _fault(Reason.CREATE_FAILED, f"{why}: {said}" if said else why)
    kit = kit_status(pod) or {}
    state = kit.get("state") or {}
    last = (kit.get("lastState") or {}).get("terminated")
    if state.get("terminated"):
        return _exited(state["terminated"])
    if (state.get("waiting") or {}).get("reason") == "CrashLoopBackOff":
        restarts = int(kit.get("restartCount") or 0)
        if restarts >= CRASH_LOOP_RESTARTS or not last:
            code = (last or {}).get("exitCode", "?")
            return _fault(Reason.CRASH_LOOP, f"restarted {restarts} times; last exit code {code}")
        return _exited(last)
    if last:
        # Restarted after its app ended (a chart's pod restarts): the stream ended with it.
        return _exited(last)
    phase = status.get("phase")
    if phase == "Succeeded":
        return Observation(Stage.EXITED, exit_code=0)
    if phase == "Failed":
        why = ": ".join(p for p in (status.get("reason"), status.get("message")) if p)
        return _fault(Reason.CREATE_FAILED, why or "the pod failed")
    scheduled = _condition(pod, "PodScheduled")
    if (
        scheduled
        and scheduled.get("status") == "False"
        and (scheduled.get("reason") == "Unschedulable")
    ):
        said = scheduled.get("message") or ""
        return _fault(Reason.NO_GPU if NO_GPU in said else Reason.UNSCHEDULABLE, said)
    found = routes_of(service, pod, public_host) if service is not None else None
    host, routes = found if found is not None else (None, ())
    if not (pod.get("spec") or {}).get("nodeName") and not status.get("hostIP"):
        return Observation(Stage.WAITING, detail="Waiting for a node to run the session")
    if "running" not in state:
        return Observation(
            Stage.WAITING,
            detail=f"Pulling the image {_image(pod, kit)} and creating the container",
        )
    ready = (_condition(pod, "Ready") or {}).get("status") == "True"
    detail = "Starting the Kit application"
    if ready and found is None:
        detail = "Waiting for the session's address"
    return Observation(
        Stage.RUNNING,
        detail=detail,
        probe_ok=ready and found is not None,
        host=host,
        routes=routes,
    )


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
    if o.SIGNALING not in found:
        return None
    return host, tuple(found[r] for r in (o.SIGNALING, o.MEDIA) if r in found)


def release_observation(release: dict[str, Any], marks: dict[Mark, datetime]) -> Observation:
    """A HelmRelease whose chart's pod does not exist: installing, installed and waiting for
    the pod, failed for good (`install_failed`), or, for a session that was ready (`marks`),
    gone."""
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
        said = failure.get("message") or failure.get("reason") or ""
        return _fault(Reason.INSTALL_FAILED, f"{what}: {said}" if said else what)
    if Mark.READY in marks:
        return Observation(Stage.GONE, detail=f"the pod of the {what} was removed")
    if ready.get("status") == "True":
        return Observation(Stage.WAITING, detail=f"The {what} is installed; waiting for the pod")
    return Observation(Stage.WAITING, detail=f"Installing the {what}")
