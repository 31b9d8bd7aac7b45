"""Reading sessions' workloads off their objects: pure functions from what the API server
returns (a Pod, its Service, a HelmRelease) to an `Observation` of a workload, and from what
an earlier release wrote (on those, and on its outcome and slot ConfigMaps) to the `Record`
it kept there. Nothing here decides a state, a message or a deadline: the
core's lifecycle (`ovas.lifecycle.decide`) does, from what these report.

What a pod shows, as a `Stage`. A condition that may pass is WAITING with the cluster's own
words (the core fails the session at its start deadline); only one that cannot pass is a
FAULT:

- FAULT, with the reason: the cluster took the pod away (`evicted`, `preempted`,
  `node_lost`, from its `DisruptionTarget` condition or `status.reason`); the image can never
  be pulled as asked (`InvalidImageName`, `ErrImageNeverPull`, or a pull refused with
  "not found", "unauthorized", "pull access denied"...: `image_pull`); no new node would
  fit the pod (the cluster autoscaler's `NotTriggerScaleUp` for any cause but a node group at
  its maximum or in backoff: `no_gpu` when the scheduler names too few `nvidia.com/gpu`,
  else `unschedulable`); the container cannot be created (`CreateContainerConfigError`,
  `CreateContainerError`, `RunContainerError`: `create_failed`); it keeps crashing
  (`CrashLoopBackOff` after `CRASH_LOOP_RESTARTS` restarts: `crash_loop`, or `oom` when it
  was last `OOMKilled`); a HelmRelease whose install failed (`install_failed`).
- EXITED: the Kit container terminated (or was restarted after it did), with its exit code,
  `oom` when it was `OOMKilled`, and when it finished.
- RUNNING: the container runs; `probe_ok` once the pod is Ready and its address is known.
- WAITING: not running yet; `detail` says for what: a node (the scheduler's message, and
  the autoscaler's answer: a node on the way, or none yet), a pull being retried (a registry
  timeout), the image, the chart; with the pod's latest Event where they were read.
A workload whose pod is gone while its Service (mode pod) or HelmRelease remains is
`Remains`: the backend tells, with the session's record, whether it is still to come or
gone for good.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from backends.kubernetes import objects as o
from ovas.kitspec import GPU_RESOURCE
from ovas.ledger import UnknownFormat
from ovas.lifecycle import Observation, Record, Stage
from ovas.models import Reason, Route

# Waiting reasons of a container whose image can never be pulled as asked.
IMAGE_FINAL = {"InvalidImageName", "ErrImageNeverPull"}
# Waiting reasons of a pull that failed, for good or for now (the kubelet's message says why).
IMAGE_RETRIED = {"ErrImagePull", "ImagePullBackOff", "RegistryUnavailable"}
# Words of registries and container runtimes for a pull that no retry can mend: the image or
# its tag does not exist, the credentials are refused, the reference is malformed.
PULL_NEVER = (
    "not found",
    "manifest unknown",
    "unauthorized",
    "authorization failed",
    "access denied",
    "denied:",
    "repository does not exist",
    "invalid reference format",
    "401 ",
    "403 ",
)
CREATE_FAILURES = {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
# Flux reasons after which a release will not be installed without a change to it.
RELEASE_FAILURES = {"InstallFailed", "ArtifactFailed", "InitFailed", "ChartNotFound"}
# Restarts after which a container in CrashLoopBackOff "keeps crashing"; before that, its
# first exit is the session's end, reported as the exit it was.
CRASH_LOOP_RESTARTS = 2
NO_GPU = f"Insufficient {GPU_RESOURCE}"
# Exit reasons that say no more than the exit code does.
PLAIN_EXITS = {"Error", "Completed", "OOMKilled"}
# The cluster autoscaler's events on a pod it was asked to find a node for.
SCALE_UP, NO_SCALE_UP = "TriggeredScaleUp", "NotTriggerScaleUp"
# In a NotTriggerScaleUp message, the causes that pass (a node group at its maximum size or
# in backoff may grow later); any other means no node group can ever fit the pod.
SCALE_UP_LATER = (
    "max node group size reached",
    "backoff",
    "not ready for scale-up",
    "limit reached",
    "max total nodes",
)
# The Events of a pod's stages before it runs: placing it, then pulling and creating.
SCHEDULING = frozenset({"FailedScheduling", SCALE_UP, NO_SCALE_UP})
PULLING = frozenset({"Scheduled", "Pulling", "Pulled", "Created", "BackOff"})
# `DisruptionTarget` condition reasons (Kubernetes 1.26+, "Pod disruption conditions"), and
# pod `status.reason` values, that name why the cluster took a pod away.
DISRUPTIONS = {
    "PreemptionByScheduler": Reason.PREEMPTED,
    "DeletionByTaintManager": Reason.NODE_LOST,
    "DeletionByPodGC": Reason.NODE_LOST,
    "EvictionByEvictionAPI": Reason.EVICTED,
    "TerminationByKubelet": Reason.EVICTED,
}
POD_REASONS = {
    "Evicted": Reason.EVICTED,
    "Preempting": Reason.PREEMPTED,
    "NodeLost": Reason.NODE_LOST,
    "Terminated": Reason.NODE_LOST,  # the node shut down (graceful node shutdown)
    "Shutdown": Reason.NODE_LOST,
}


def _meta(obj: dict[str, Any] | None) -> dict[str, Any]:
    return (obj or {}).get("metadata") or {}


def annotations(obj: dict[str, Any] | None) -> dict[str, str]:
    return _meta(obj).get("annotations") or {}


def labels(obj: dict[str, Any] | None) -> dict[str, str]:
    return _meta(obj).get("labels") or {}


def refusal(obj: dict[str, Any]) -> UnknownFormat | None:
    """`UnknownFormat` for an object a newer release of ovas wrote (an `ovas/format` this
    release has no reader for, told by its record codec), else None."""
    try:
        o.ANY_RECORD.decode(obj)
    except UnknownFormat as exc:
        return exc
    return None


def foreign(obj: dict[str, Any]) -> bool:
    """True for an object a newer release of ovas wrote (see `refusal`): this one neither
    reads nor removes it."""
    return refusal(obj) is not None


def session_id_of(obj: dict[str, Any]) -> str | None:
    """The session an object of ovas's belongs to; None for one of a newer format."""
    return None if foreign(obj) else labels(obj).get(o.SESSION)


def is_outcome(obj: dict[str, Any]) -> bool:
    """An earlier release's outcome ConfigMap, not one of its admission slots."""
    return o.OUTCOME in labels(obj)


# What earlier releases recorded


def earlier_record(obj: dict[str, Any]) -> Record | None:
    """The session's record an earlier release kept on the object (the Pod, Service or
    HelmRelease of a session, or its outcome ConfigMap, which adds the outcome), read
    through its record codec (`objects.WORKLOAD`, `objects.EARLIER_OUTCOME`); None when it
    holds none (this release's objects, and adopted ones), not a whole one, or one of a
    format this release cannot read. Reads the metadata alone."""
    codec = o.EARLIER_OUTCOME if is_outcome(obj) else o.WORKLOAD
    try:
        return codec.decode(obj).record
    except UnknownFormat:
        return None


def earlier_slot(obj: dict[str, Any]) -> o.SlotRead | None:
    """An earlier release's admission slot ConfigMap, read through its record codec
    (`objects.EARLIER_SLOT`); None for one of a format this release cannot read."""
    try:
        return o.EARLIER_SLOT.decode(obj)
    except UnknownFormat:
        return None


def logs_of(config_map: dict[str, Any]) -> list[str]:
    """The log lines an earlier release's outcome ConfigMap keeps (joined with `\n`)."""
    text = ((config_map.get("data") or {}).get(o.LOGS)) or ""
    return text.split("\n") if text else []


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


def _waiting(detail: str) -> Observation:
    return Observation(Stage.WAITING, detail=detail)


def disruption(pod: dict[str, Any] | None) -> dict[str, Any] | None:
    """The pod's `DisruptionTarget` condition when the cluster is taking it away (preemption,
    a lost or deleted node, an eviction), else None."""
    found = _condition(pod, "DisruptionTarget")
    return found if found and found.get("status") == "True" else None


def is_live(obj: dict[str, Any] | None) -> bool:
    """Present, and not being deleted by anyone but the cluster itself: a session is gone at
    once for its users when it is stopped, while a pod the cluster takes away (`disruption`)
    stays to say why until its session's outcome is recorded."""
    if obj is None:
        return False
    return not _meta(obj).get("deletionTimestamp") or disruption(obj) is not None


def events_of(pod: dict[str, Any], events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Events about this pod (its uid), oldest first."""
    uid = _meta(pod).get("uid")
    mine = [e for e in events if ((e.get("involvedObject") or {}).get("uid") or uid) == uid]
    return sorted(mine, key=_event_time)


def _event_time(event: dict[str, Any]) -> str:
    meta = event.get("metadata") or {}
    when = event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp")
    return str(when or meta.get("creationTimestamp") or "")


def _latest(events: list[dict[str, Any]], *reasons: str) -> dict[str, Any] | None:
    return next((e for e in reversed(events) if e.get("reason") in reasons), None)


def _taken_away(pod: dict[str, Any]) -> Observation | None:
    """The fault of a pod the cluster took away, naming the real cause."""
    status = pod.get("status") or {}
    reason = POD_REASONS.get(status.get("reason") or "")
    said = status.get("message") or ""
    target = disruption(pod)
    if target is not None:
        by = DISRUPTIONS.get(target.get("reason") or "", Reason.EVICTED)
        if reason is None or by is not Reason.EVICTED:
            reason = by
        said = said or target.get("message") or target.get("reason") or ""
    return _fault(reason, said) if reason is not None else None


def _pull(pod: dict[str, Any], container: dict[str, Any], events: list[dict]) -> Observation:
    """A pull that failed: for good when the runtime's words say no retry can mend it, else
    a passing condition while the kubelet retries."""
    waiting = (container.get("state") or {}).get("waiting") or {}
    why, said = waiting.get("reason", ""), waiting.get("message", "")
    failed = next((e for e in reversed(events) if _pull_failure(e)), None)
    cause = said
    if failed is not None and why in IMAGE_RETRIED and (not said or said.startswith("Back-off")):
        # `ImagePullBackOff` says only "Back-off pulling image"; the kubelet's Event says why.
        cause = failed.get("message") or said
    image = _image(pod, container)
    detail = f"{image} ({why})" + (f": {cause}" if cause else "")
    lowered = cause.lower()
    if why in IMAGE_FINAL or any(words in lowered for words in PULL_NEVER):
        return _fault(Reason.IMAGE_PULL, detail)
    return _waiting(f"Pulling the image {image}: retrying after {detail}")


def _pull_failure(event: dict[str, Any]) -> bool:
    """The kubelet's Event naming why a pull failed (not its "Error: ErrImagePull" echo)."""
    said = event.get("message") or ""
    return event.get("reason") == "Failed" and said.startswith("Failed to pull image")


def _unschedulable(said: str, events: list[dict[str, Any]]) -> Observation:
    """No node takes the pod now: a passing condition (a GPU being freed, a node being added)
    unless the cluster autoscaler says no new node would fit it."""
    reason = Reason.NO_GPU if NO_GPU in said else Reason.UNSCHEDULABLE
    word = _latest(events, SCALE_UP, NO_SCALE_UP)
    if word is None:
        return _waiting(f"Waiting for a node: {said}")
    told = word.get("message") or word.get("reason") or ""
    if word.get("reason") == SCALE_UP:
        return _waiting(f"Waiting for a node: {said} The cluster autoscaler is adding one: {told}")
    if not any(later in told for later in SCALE_UP_LATER):
        return _fault(reason, f"{said} The cluster autoscaler cannot add one: {told}")
    return _waiting(f"Waiting for a node: {said} The cluster autoscaler adds none yet: {told}")


def _progress(base: str, events: list[dict[str, Any]], reasons: frozenset[str]) -> Observation:
    """`base`, with the words of the latest Event among `reasons` (the stage's own: Events
    are read after the pod, and may be a step ahead of it)."""
    last = next((e for e in reversed(events) if e.get("reason") in reasons), None)
    said = (last or {}).get("message") or ""
    return _waiting(f"{base}; {said}" if said else base)


def pod_observation(
    pod: dict[str, Any],
    service: dict[str, Any] | None,
    *,
    public_host: str | None = None,
    events: list[dict[str, Any]] | None = None,
    gateway: bool = False,
) -> Observation:
    """What the session's pod (and its Service, for the address) shows now. `events`: the
    cluster's Events about the pod, where they were read (they tell a pull that cannot pass
    from one being retried, an autoscaler's answer, and the progress of a start).
    `gateway`: the signaling gateway is on, so the Service exposes media only
    (`routes_of`). Either way the gateway reaches the signaling socket at the pod's IP and
    container port (`signaling_of`)."""
    events = events_of(pod, events or [])
    status = pod.get("status") or {}
    taken = _taken_away(pod)
    if taken is not None:
        return taken
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        why, said = waiting.get("reason", ""), waiting.get("message", "")
        if why in IMAGE_FINAL or why in IMAGE_RETRIED:
            pulled = _pull(pod, container, events)
            if pulled.stage is Stage.FAULT or container.get("name") == o.CONTAINER:
                return pulled
        if why in CREATE_FAILURES:
            return _fault(Reason.CREATE_FAILED, f"{why}: {said}" if said else why)
    kit = kit_status(pod) or {}
    state = kit.get("state") or {}
    last = (kit.get("lastState") or {}).get("terminated")
    if state.get("terminated"):
        return _exited(state["terminated"])
    if (state.get("waiting") or {}).get("reason") == "CrashLoopBackOff":
        restarts = int(kit.get("restartCount") or 0)
        if last and last.get("reason") == "OOMKilled":
            return _exited(last)
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
        return _unschedulable(scheduled.get("message") or "", events)
    found = routes_of(service, pod, public_host, gateway) if service is not None else None
    host, routes = found if found is not None else (None, ())
    if not (pod.get("spec") or {}).get("nodeName") and not status.get("hostIP"):
        return _progress("Waiting for a node to run the session", events, SCHEDULING)
    if "running" not in state:
        image = _image(pod, kit)
        return _progress(f"Pulling the image {image} and creating the container", events, PULLING)
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
        signaling=signaling_of(pod, routes),
    )


def signaling_of(pod: dict[str, Any], routes: tuple[Route, ...]) -> tuple[str, int] | None:
    """Where the signaling gateway, running in the cluster, reaches the session's signaling
    socket: the pod's IP and the Kit container's signaling port. Not a Service's name: the
    pod's address needs no DNS lookup nor a Service of its own (one more API call per
    start), is reachable across the cluster's pod network as a ClusterIP is, and since the
    gateway asks at each connection, a chart's replaced pod is found at its new address.
    None until the pod has an IP and the port is known."""
    ip = (pod.get("status") or {}).get("podIP")
    port = _container_port(pod, o.SIGNALING)
    if port is None:
        port = next((r.destination_port for r in routes if r.description == o.SIGNALING), None)
    return (str(ip), int(port)) if ip and port else None


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
    service: dict[str, Any],
    pod: dict[str, Any] | None,
    public_host: str | None,
    gateway: bool = False,
) -> tuple[str, tuple[Route, ...]] | None:
    """The address clients reach and the routes to the Kit ports; None while unknown.

    LoadBalancer: its ingress IP or hostname, the service ports. NodePort: `public_host`, or
    the pod's node, with the node ports. ClusterIP: the cluster IP (reachable in-cluster).
    With the `gateway` on, a Service without a signaling port (media only) gets the
    signaling route of the pod's own port, which the core routes through the gateway."""
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
    if o.SIGNALING not in found and gateway:
        port = _container_port(pod, o.SIGNALING)
        if port is not None:
            found[o.SIGNALING] = Route(o.SIGNALING, "TCP", int(port), int(port))
    if o.SIGNALING not in found:
        return None
    return host, tuple(found[r] for r in (o.SIGNALING, o.MEDIA) if r in found)


@dataclass(frozen=True)
class Remains(Observation):
    """What is left of a workload whose pod is gone: its HelmRelease (`release`), as `stage`
    says (installing, installed or failed); else its Service (mode pod), or a chart's
    objects whose HelmRelease is gone."""

    release: bool = False


def release_observation(release: dict[str, Any]) -> Remains:
    """A HelmRelease whose chart's pod does not exist: installing, installed and waiting for
    the pod, or failed for good (`install_failed`)."""
    what = chart_of(release)
    stalled = _condition(release, "Stalled")
    ready = _condition(release, "Ready") or {}
    failure = None
    if stalled and stalled.get("status") == "True":
        failure = stalled
    elif ready.get("status") == "False" and ready.get("reason") in RELEASE_FAILURES:
        failure = ready
    if failure:
        said = failure.get("message") or failure.get("reason") or ""
        detail = f"{what}: {said}" if said else what
        return Remains(Stage.FAULT, fault=Reason.INSTALL_FAILED, detail=detail, release=True)
    if ready.get("status") == "True":
        detail = f"The {what} is installed; waiting for the pod"
        return Remains(Stage.WAITING, detail=detail, release=True)
    return Remains(Stage.WAITING, detail=f"Installing the {what}", release=True)


def chart_of(release: dict[str, Any]) -> str:
    """`chart <name> <version>` of a HelmRelease, as its observations name it."""
    chart = ((release.get("spec") or {}).get("chart") or {}).get("spec") or {}
    return f"chart {chart.get('chart', '?')} {chart.get('version', '')}".strip()
