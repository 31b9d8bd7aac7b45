"""What a cluster says about a pod, played on a `ClusterEmulator`: Events as the scheduler,
the kubelet and the cluster autoscaler write them (deduplicated, with a count, as the event
recorder does), the autoscaler's node groups that grow when a pod fits none of the nodes,
and the ways the cluster takes a running pod away (eviction, preemption, a lost node).

The autoscaler's words are those of kubernetes/autoscaler's `cluster-autoscaler`:
`TriggeredScaleUp` "pod triggered scale-up: [{group 0->1 (max: 2)}]", and
`NotTriggerScaleUp` "pod didn't trigger scale-up: ..." (with "(it wouldn't fit if a new node
is added)" when no node group can fit the pod).
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field
from typing import Any

from support.kube_emulator import ClusterEmulator, now_text

EVENTS = "v1/events"
GPU = "nvidia.com/gpu"


def record_event(
    emulator: ClusterEmulator,
    pod: dict[str, Any],
    reason: str,
    message: str,
    *,
    kind: str = "Normal",
    component: str = "kubelet",
) -> None:
    """An Event about `pod`; the same words again raise its count (the recorder's dedup)."""
    meta = pod["metadata"]
    namespace = meta.get("namespace")
    for key, event in emulator.items(EVENTS, namespace):
        involved = event.get("involvedObject") or {}
        same = (involved.get("uid"), event.get("reason"), event.get("message"))
        if same == (meta.get("uid"), reason, message):
            new = copy.deepcopy(event)
            new.update(count=int(event.get("count") or 1) + 1, lastTimestamp=now_text())
            emulator.update(key, new)
            return
    when = now_text()
    emulator.create(
        EVENTS,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}"},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "namespace": namespace,
                "uid": meta.get("uid"),
            },
            "reason": reason,
            "message": message,
            "type": kind,
            "source": {"component": component},
            "reportingComponent": component,
            "count": 1,
            "firstTimestamp": when,
            "lastTimestamp": when,
        },
    )


@dataclass
class NodeGroup:
    """A node pool the cluster autoscaler may grow: nodes of `gpus` GPUs and `labels`,
    `size` of them now, at most `max_size`."""

    name: str
    gpus: int = 4
    labels: dict[str, str] = field(default_factory=dict)
    size: int = 0
    max_size: int = 1

    def fits(self, wanted: int, selector: dict[str, str]) -> str:
        """Why a new node of this group would not fit the pod; "" if it would."""
        if any(self.labels.get(k) != v for k, v in selector.items()):
            return "node(s) didn't match Pod's node affinity/selector"
        if self.gpus < wanted:
            return f"Insufficient {GPU}"
        return ""


@dataclass
class Autoscaler:
    """The cluster autoscaler: for a pod no node takes, a node from a group that fits it
    (after `delay` seconds), or the reason none will come. With no groups it says nothing,
    as a cluster without an autoscaler."""

    groups: list[NodeGroup] = field(default_factory=list)
    delay: float = 0.2
    _told: dict[str, str] = field(default_factory=dict)  # pod uid -> what it was told
    _coming: list[tuple[float, NodeGroup]] = field(default_factory=list)

    def consider(self, emulator: ClusterEmulator, pod: dict[str, Any], wanted: int, now: float):
        """The answer to one unschedulable pod, once per pod (or again when it changes)."""
        if not self.groups:
            return
        uid = pod["metadata"].get("uid", "")
        if self._told.get(uid, "").startswith("pod triggered"):
            return  # its node is on the way
        selector = pod["spec"].get("nodeSelector") or {}
        why = {g.name: g.fits(wanted, selector) for g in self.groups}
        fitting = [g for g in self.groups if not why[g.name]]
        growing = next((g for g in fitting if g.size < g.max_size), None)
        if growing is not None:
            growing.size += 1
            self._coming.append((now + self.delay, growing))
            said = (
                f"pod triggered scale-up: [{{{growing.name} {growing.size - 1}->{growing.size} "
                f"(max: {growing.max_size})}}]"
            )
            reason = "TriggeredScaleUp"
        elif fitting:
            said = f"pod didn't trigger scale-up: {len(fitting)} max node group size reached"
            reason = "NotTriggerScaleUp"
        else:
            counts: dict[str, int] = {}
            for text in why.values():
                counts[text] = counts.get(text, 0) + 1
            parts = ", ".join(f"{n} {text}" for text, n in counts.items())
            said = f"pod didn't trigger scale-up (it wouldn't fit if a new node is added): {parts}"
            reason = "NotTriggerScaleUp"
        if self._told.get(uid) != said:
            self._told[uid] = said
            record_event(emulator, pod, reason, said, component="cluster-autoscaler")

    def arrived(self, now: float) -> list[NodeGroup]:
        """The groups whose new node is up by `now` (each once)."""
        due = [group for when, group in self._coming if when <= now]
        self._coming = [(when, group) for when, group in self._coming if when > now]
        return due


# The ways the cluster takes a pod away, as Kubernetes 1.26+ marks them ("Pod disruption
# conditions"): the DisruptionTarget condition, and the status a kubelet leaves.


def disrupted(pod: dict[str, Any], reason: str, message: str) -> dict[str, Any]:
    """A copy of the pod as the cluster marks one it takes away: not Ready, and its
    `DisruptionTarget` condition naming `reason`."""
    new = copy.deepcopy(pod)
    status = new.setdefault("status", {})
    conditions = [c for c in status.get("conditions") or [] if c.get("type") != "Ready"]
    conditions += [
        {"type": "Ready", "status": "False", "lastTransitionTime": now_text()},
        {
            "type": "DisruptionTarget",
            "status": "True",
            "reason": reason,
            "message": message,
            "lastTransitionTime": now_text(),
        },
    ]
    status["conditions"] = conditions
    return new


def _unknown_exit(pod: dict[str, Any]) -> None:
    """The container status a kubelet leaves for a container it killed and lost track of."""
    for entry in pod["status"].get("containerStatuses") or []:
        entry.update(
            ready=False,
            state={
                "terminated": {
                    "exitCode": 137,
                    "reason": "ContainerStatusUnknown",
                    "message": "The container could not be located when the pod was terminated",
                    "finishedAt": now_text(),
                }
            },
        )


def evict(emulator: ClusterEmulator, key: tuple, message: str) -> None:
    """The kubelet evicts the pod for node pressure: phase Failed, reason Evicted."""
    pod = emulator.live(key)
    assert pod is not None
    new = disrupted(pod, "TerminationByKubelet", message)
    new["status"].update(phase="Failed", reason="Evicted", message=message)
    _unknown_exit(new)
    emulator.update(key, new)
    record_event(emulator, new, "Evicted", message, kind="Warning")


def preempt(emulator: ClusterEmulator, key: tuple) -> None:
    """The scheduler deletes the pod to make room for one of higher priority."""
    pod = emulator.live(key)
    assert pod is not None
    said = "default-scheduler: preempting to accommodate a higher priority pod"
    emulator.update(key, disrupted(pod, "PreemptionByScheduler", said))
    record_event(emulator, pod, "Preempted", "Preempted by a pod on node", component="scheduler")
    emulator.delete(key)


def lose_node(emulator: ClusterEmulator, node: str) -> list[tuple]:
    """The node stops answering: the taint manager deletes the pods on it (NoExecute taint
    node.kubernetes.io/unreachable). Returns the keys of those pods."""
    said = "Taint manager: deleting due to NoExecute taint"
    keys = [k for k, p in emulator.items("v1/pods") if p["spec"].get("nodeName") == node]
    for key in keys:
        pod = emulator.live(key)
        assert pod is not None
        emulator.update(key, disrupted(pod, "DeletionByTaintManager", said))
        record_event(emulator, pod, "TaintManagerEviction", f"Marking for deletion Pod {key[2]}")
        emulator.delete(key)
    return keys
