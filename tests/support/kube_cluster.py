"""The rest of a cluster, played on a `ClusterEmulator`'s objects: the scheduler (GPUs per
node, node selectors), the kubelets (image pulls, the Kit container honouring the
`STANDIN_*` variables of its environment and writing the stand-in's log lines, readiness,
exits, graceful deletion), a cloud load balancer (an address for each LoadBalancer Service)
and Flux (a HelmRelease becomes the chart's Service and Pod; deleting it uninstalls them).
The scheduler and the kubelets write the Events a real one does (FailedScheduling,
Scheduled, Pulling, Pulled, Failed, BackOff, Created, Started), and a cluster autoscaler
(`support.kube_events.Autoscaler`) grows node groups for pods no node takes.

Pulls: an image matching `missing_images` is not found, one matching `denied_images` is
refused for want of credentials, one matching a pattern of `flaky_images` fails that many
times with a registry timeout, then succeeds.

Every `interval` seconds `step()` moves each object one stage on, under the emulator's lock.
"""

from __future__ import annotations

import asyncio
import copy
import fnmatch
import time
from dataclasses import dataclass, field
from typing import Any

from support.kube_emulator import ClusterEmulator, now_text
from support.kube_events import Autoscaler, disrupted, record_event

GPU = "nvidia.com/gpu"
FLUX_FINALIZER = "finalizers.fluxcd.io"


@dataclass
class Node:
    name: str
    address: str
    gpus: int
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeCluster:
    emulator: ClusterEmulator
    nodes: list[Node] = field(
        default_factory=lambda: [Node(f"node-{i}", f"10.0.0.{i + 10}", 4) for i in range(3)]
    )
    interval: float = 0.05
    pull_seconds: float = 0.05  # image pull, and every later kubelet stage
    missing_images: tuple[str, ...] = ("*does-not-exist*",)
    denied_images: tuple[str, ...] = ("*private*",)
    flaky_images: dict[str, int] = field(default_factory=dict)
    autoscaler: Autoscaler = field(default_factory=Autoscaler)
    missing_charts: tuple[str, ...] = ("*missing*",)
    running: bool = True  # False pauses the cluster (objects stay as they are)
    # Every pod's IP, when set: "127.0.0.1" puts a test's own server (a WebSocket echo on
    # the Kit container's signaling port) where the signaling gateway reaches the pod.
    pod_ip: str | None = None
    _seen: dict[tuple, float] = field(default_factory=dict)
    _attempts: dict[tuple, int] = field(default_factory=dict)  # failed pulls by pod
    _lb: int = 0
    _used: dict[str, int] | None = None

    async def run(self) -> None:
        while True:
            if self.running:
                async with self.emulator._lock:
                    self.step(time.monotonic())
            await asyncio.sleep(self.interval)

    def step(self, now: float) -> None:
        em = self.emulator
        self._used: dict[str, int] | None = None  # GPUs in use per node, counted once a step
        for group in self.autoscaler.arrived(now):
            n = sum(1 for node in self.nodes if node.name.startswith(f"{group.name}-"))
            address = f"10.0.1.{len(self.nodes) + 10}"
            self.nodes.append(Node(f"{group.name}-{n}", address, group.gpus, dict(group.labels)))
        self._register_nodes()
        for key, release in list(em.items("helm.toolkit.fluxcd.io/v2/helmreleases")):
            self._flux(key, release)
        for key, service in list(em.items("v1/services")):
            self._load_balancer(key, service)
        for key, pod in list(em.items("v1/pods")):
            self._kubelet(key, pod, now)

    # Nodes

    def _register_nodes(self) -> None:
        """Each node's Node object, as its kubelet registers it."""
        for node in self.nodes:
            key = self.emulator.key("v1/nodes", None, node.name)
            if self.emulator.live(key) is None:
                body = {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {"name": node.name, "labels": dict(node.labels)},
                    "status": {"addresses": [{"type": "InternalIP", "address": node.address}]},
                }
                self.emulator.create("v1/nodes", None, body)

    def delete_node(self, name: str) -> list[tuple]:
        """The Node object is deleted (a cloud's node controller does so once its machine is
        gone, or `kubectl delete node`), and the pod garbage collector then removes the pods
        bound to it as Kubernetes 1.26+ does: marked Failed with the `DisruptionTarget`
        condition `DeletionByPodGC`, then deleted with no grace period (no kubelet is left to
        confirm a graceful one), so they vanish at once. Returns the keys of those pods.
        Call it holding the emulator's lock."""
        self.nodes = [node for node in self.nodes if node.name != name]
        node_key = self.emulator.key("v1/nodes", None, name)
        if self.emulator.live(node_key) is not None:
            self.emulator.remove(node_key)
        keys = [k for k, p in self.emulator.items("v1/pods") if p["spec"].get("nodeName") == name]
        for key in keys:
            pod = self.emulator.live(key)
            assert pod is not None
            marked = disrupted(pod, "DeletionByPodGC", "PodGC: node no longer exists")
            marked["status"]["phase"] = "Failed"
            self.emulator.update(key, marked)
            self.emulator.delete(key, grace=0)
        return keys

    # Stages

    def _due(self, key: tuple, stage: str, now: float) -> bool:
        """True once `pull_seconds` have passed since `key` first reached `stage`."""
        since = self._seen.setdefault((key, stage), now)
        return now - since >= self.pull_seconds

    def _save(self, key: tuple, old: dict[str, Any], new: dict[str, Any]) -> None:
        if new != old:
            self.emulator.update(key, new)

    def _kubelet(self, key: tuple, pod: dict[str, Any], now: float) -> None:
        meta = pod["metadata"]
        if meta.get("deletionTimestamp"):
            if self._due(key, "terminating", now):
                self.emulator.remove(key)
            return
        new = copy.deepcopy(pod)
        spec, status = new["spec"], new.setdefault("status", {})
        container = spec["containers"][0]
        env = {e["name"]: e.get("value", "") for e in container.get("env") or []}
        if not spec.get("nodeName"):
            node, why = self._schedule(pod)
            if node is None:
                old = (status.get("conditions") or [{}])[0]
                if (old.get("reason"), old.get("message")) != ("Unschedulable", why):
                    status["conditions"] = [_cond("PodScheduled", "False", "Unschedulable", why)]
                    self._save(key, pod, new)
                    self._event(pod, "FailedScheduling", why, "Warning", "default-scheduler")
                self.autoscaler.consider(self.emulator, pod, _gpus(pod), now)
                return None
            spec["nodeName"] = node.name
            status.update(
                hostIP=node.address, podIP=self.pod_ip or f"10.244.0.{len(self._seen) % 250 + 1}"
            )
            status["conditions"] = [_cond("PodScheduled", "True")]
            status["containerStatuses"] = [_waiting(container, "ContainerCreating")]
            status["startTime"] = now_text()
            self._save(key, pod, new)
            said = f"Successfully assigned {key[1]}/{meta['name']} to {node.name}"
            self._event(pod, "Scheduled", said, component="default-scheduler")
            return self._event(pod, "Pulling", f'Pulling image "{container["image"]}"')
        current = (status.get("containerStatuses") or [{}])[0].get("state") or {}
        waiting = (current.get("waiting") or {}).get("reason")
        pulling = waiting in ("ContainerCreating", "ErrImagePull", "ImagePullBackOff")
        attempt = self._attempts.get(key, 0)
        if pulling and self._due(key, f"pull-{attempt}", now):
            image = container["image"]
            if waiting == "ErrImagePull":
                said = f'Back-off pulling image "{image}"'
                status["containerStatuses"] = [_waiting(container, "ImagePullBackOff", said)]
                self._attempts[key] = attempt + 1
                self._save(key, pod, new)
                self._event(pod, "BackOff", said)
                return self._event(pod, "Failed", "Error: ImagePullBackOff", "Warning")
            if waiting == "ImagePullBackOff" and not self._retried(image):
                return None  # no try can mend it: backing off for good
            if waiting == "ImagePullBackOff":
                self._event(pod, "Pulling", f'Pulling image "{image}"')
            cause = self._pull_failure(image, attempt)
            if cause is not None:
                said = f'failed to pull and unpack image "{image}": {cause}'
                status["containerStatuses"] = [_waiting(container, "ErrImagePull", said)]
                self._save(key, pod, new)
                self._event(pod, "Failed", f'Failed to pull image "{image}": {said}', "Warning")
                return self._event(pod, "Failed", "Error: ErrImagePull", "Warning")
            self._event(pod, "Pulled", f'Successfully pulled image "{image}" in 50ms')
            self._event(pod, "Created", f"Created container {container['name']}")
            self._event(pod, "Started", f"Started container {container['name']}")
            self.emulator.write_log(key, f"stand-in Kit app: USD_PATH={env.get('USD_PATH', '')}")
            if "STANDIN_EXIT_CODE" in env and "STANDIN_EXIT_AFTER" not in env:
                self._exit(key, new, container, int(env["STANDIN_EXIT_CODE"]))
            else:
                status["phase"] = "Running"
                state = {"running": {"startedAt": now_text()}}
                status["containerStatuses"] = [_status(container, state, ready=False)]
                self._seen[(key, "started")] = now
                if env.get("STANDIN_NEVER_READY") == "1":
                    self.emulator.write_log(key, "stand-in Kit app: never getting ready, as asked")
                elif float(env.get("STANDIN_READY_DELAY") or 0):
                    delay = env["STANDIN_READY_DELAY"]
                    self.emulator.write_log(key, f"stand-in Kit app: ready in {delay}s")
            return self._save(key, pod, new)
        if (status.get("containerStatuses") or [{}])[0].get("ready"):
            after = env.get("STANDIN_EXIT_AFTER")
            ready_at = self._seen.get((key, "ready"), now)
            if after is not None and now - ready_at >= float(after):
                self._exit(key, new, container, int(env.get("STANDIN_EXIT_CODE") or 0))
                status["conditions"] = [
                    _cond("PodScheduled", "True"),
                    _cond("ContainersReady", "False"),
                    _cond("Ready", "False"),
                ]
                self._save(key, pod, new)
            return None
        if current.get("running") and env.get("STANDIN_NEVER_READY") != "1":
            started = self._seen.get((key, "started"), now)
            if now - started >= float(env.get("STANDIN_READY_DELAY") or 0):
                status["containerStatuses"][0]["ready"] = True
                status["conditions"] = [
                    _cond("PodScheduled", "True"),
                    _cond("ContainersReady", "True"),
                    _cond("Ready", "True"),
                ]
                self._seen[(key, "ready")] = now
                self.emulator.write_log(key, "stand-in Kit app: ready")
                self._save(key, pod, new)

    def _event(
        self,
        pod: dict[str, Any],
        reason: str,
        message: str,
        kind: str = "Normal",
        component: str = "kubelet",
    ) -> None:
        record_event(self.emulator, pod, reason, message, kind=kind, component=component)

    def _pull_failure(self, image: str, attempt: int) -> str | None:
        """Why pull number `attempt` (from 0) of `image` fails; None when it succeeds."""
        reference = f'failed to resolve reference "{image}"'
        if any(fnmatch.fnmatch(image, p) for p in self.missing_images):
            return f"{reference}: {image}: not found"
        if any(fnmatch.fnmatch(image, p) for p in self.denied_images):
            return (
                f"{reference}: pull access denied, repository does not exist or may require "
                "authorization: server message: insufficient_scope: authorization failed"
            )
        for pattern, failures in self.flaky_images.items():
            if fnmatch.fnmatch(image, pattern) and attempt < failures:
                host = image.split("/", 1)[0]
                return (
                    f'{reference}: Get "https://{host}/v2/": dial tcp 192.0.2.10:443: i/o timeout'
                )
        return None

    def _retried(self, image: str) -> bool:
        """Whether the kubelet's next try may succeed (a flaky registry, not a missing image)."""
        return any(fnmatch.fnmatch(image, p) for p in self.flaky_images)

    def _exit(self, key: tuple, pod: dict[str, Any], container: dict[str, Any], code: int) -> None:
        """The Kit container exits with `code`: the pod ends (restartPolicy Never), or its
        container is restarted and backs off (a chart's pod, restarted as a Deployment's)."""
        self.emulator.write_log(key, f"stand-in Kit app: exiting with code {code} as asked")
        status = pod["status"]
        terminated = {"exitCode": code, "reason": "Error", "finishedAt": now_text()}
        if code == 0:
            terminated["reason"] = "Completed"
        if pod["spec"].get("restartPolicy", "Always") == "Never":
            status["phase"] = "Succeeded" if code == 0 else "Failed"
            status["containerStatuses"] = [_status(container, {"terminated": terminated})]
        else:
            status["phase"] = "Running"
            waiting = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}}
            entry = _status(container, waiting)
            entry.update(lastState={"terminated": terminated}, restartCount=1)
            status["containerStatuses"] = [entry]

    def _schedule(self, pod: dict[str, Any]) -> tuple[Node | None, str]:
        wanted = _gpus(pod)
        selector = pod["spec"].get("nodeSelector") or {}
        if self._used is None:
            self._used = {}
            for _, other in self.emulator.items("v1/pods"):
                node = other["spec"].get("nodeName")
                if node and (other.get("status") or {}).get("phase") not in ("Failed", "Succeeded"):
                    self._used[node] = self._used.get(node, 0) + _gpus(other)
        used = self._used
        short_gpu = short_selector = 0
        for node in self.nodes:
            if any(node.labels.get(k) != v for k, v in selector.items()):
                short_selector += 1
            elif node.gpus - used.get(node.name, 0) < wanted:
                short_gpu += 1
            else:
                used[node.name] = used.get(node.name, 0) + wanted
                return node, ""
        parts = []
        if short_gpu:
            parts.append(f"{short_gpu} Insufficient {GPU}")
        if short_selector:
            parts.append(f"{short_selector} node(s) didn't match Pod's node affinity/selector")
        return None, f"0/{len(self.nodes)} nodes are available: {', '.join(parts)}."

    def _load_balancer(self, key: tuple, service: dict[str, Any]) -> None:
        spec = service.get("spec") or {}
        ingress = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress")
        if spec.get("type") != "LoadBalancer" or ingress:
            return
        if service["metadata"].get("deletionTimestamp"):
            return
        if self._due(key, "lb", time.monotonic()):
            self._lb += 1
            new = copy.deepcopy(service)
            address = f"203.0.113.{self._lb % 250 + 1}" if self._lb < 250 else None
            entry = {"ip": address} if address else {"hostname": f"lb-{self._lb}.example"}
            new["status"] = {"loadBalancer": {"ingress": [entry]}}
            self.emulator.update(key, new)

    # Flux

    def _flux(self, key: tuple, release: dict[str, Any]) -> None:
        em = self.emulator
        meta = release["metadata"]
        name = release["spec"].get("releaseName") or meta["name"]
        namespace = key[1]
        if meta.get("deletionTimestamp"):
            for resource in ("v1/pods", "v1/services"):
                for other, obj in list(em.items(resource, namespace)):
                    labels = obj["metadata"].get("labels") or {}
                    if labels.get("app.kubernetes.io/instance") == name:
                        em.delete(other)
            done = copy.deepcopy(release)
            done["metadata"]["finalizers"] = []
            em.update(key, done)
            return
        if FLUX_FINALIZER not in (meta.get("finalizers") or []):
            new = copy.deepcopy(release)
            new["metadata"]["finalizers"] = [FLUX_FINALIZER]
            em.update(key, new)
            return
        if (release.get("status") or {}).get("conditions"):
            return
        chart = release["spec"]["chart"]["spec"]
        new = copy.deepcopy(release)
        if any(
            fnmatch.fnmatch(f"{chart['chart']}:{chart['version']}", p) for p in self.missing_charts
        ):
            message = f"chart {chart['chart']} {chart['version']} not found in repository"
            new["status"] = {
                "conditions": [
                    _cond("Ready", "False", "InstallFailed", message),
                    _cond("Stalled", "True", "RetriesExceeded", message),
                ]
            }
            em.update(key, new)
            return
        service, pod = render_chart(name, release["spec"].get("values") or {})
        em.create("v1/services", namespace, service)  # Helm installs Services before Pods
        em.create("v1/pods", namespace, pod)
        new["status"] = {"conditions": [_cond("Ready", "True", "InstallSucceeded", "installed")]}
        em.update(key, new)


def render_chart(release: str, values: dict[str, Any]) -> tuple[dict, dict]:
    """What a kit-appstreaming-session-like chart makes of the values: a Service and a Pod
    (restarted on failure, as a Deployment's would be) carrying `streamingKit.labels` and
    `streamingKit.annotations`."""
    kit = values.get("streamingKit") or {}
    image = kit.get("image") or {}
    ports = kit.get("ports") or {}
    service_values = kit.get("service") or {}
    signaling, media = ports.get("signaling", 49100), ports.get("media", 47998)
    labels = {
        **(kit.get("labels") or {}),
        "app.kubernetes.io/instance": release,
        "app.kubernetes.io/managed-by": "Helm",
    }
    meta = {"labels": labels, "annotations": dict(kit.get("annotations") or {})}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": release, **copy.deepcopy(meta)},
        "spec": {
            "type": service_values.get("type", "LoadBalancer"),
            "selector": {"app.kubernetes.io/instance": release},
            "ports": [
                {
                    "name": "signaling",
                    "protocol": "TCP",
                    "targetPort": "signaling",
                    "port": service_values.get("signalingPort", signaling),
                },
                {
                    "name": "media",
                    "protocol": "UDP",
                    "targetPort": "media",
                    "port": service_values.get("mediaPort", media),
                },
            ],
        },
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{release}-kit", **copy.deepcopy(meta)},
        "spec": {
            "restartPolicy": "Always",
            "containers": [
                {
                    "name": "kit",
                    "image": f"{image.get('repository')}:{image.get('tag')}",
                    "env": copy.deepcopy(kit.get("env") or []),
                    "resources": copy.deepcopy(kit.get("resources") or {}),
                    "ports": [
                        {"name": "signaling", "containerPort": signaling, "protocol": "TCP"},
                        {"name": "media", "containerPort": media, "protocol": "UDP"},
                    ],
                }
            ],
            "nodeSelector": copy.deepcopy(kit.get("nodeSelector") or {}),
        },
    }
    return service, pod


def _gpus(pod: dict[str, Any]) -> int:
    total = 0
    for container in pod["spec"].get("containers") or []:
        limits = (container.get("resources") or {}).get("limits") or {}
        total += int(str(limits.get(GPU, 0)))
    return total


def _cond(kind: str, status: str, reason: str | None = None, message: str | None = None) -> dict:
    condition = {"type": kind, "status": status, "lastTransitionTime": now_text()}
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return condition


def _status(container: dict[str, Any], state: dict[str, Any], ready: bool = False) -> dict:
    return {
        "name": container["name"],
        "image": container["image"],
        "ready": ready,
        "restartCount": 0,
        "state": state,
    }


def _waiting(container: dict[str, Any], reason: str, message: str | None = None) -> dict:
    waiting = {"reason": reason, **({"message": message} if message else {})}
    return _status(container, {"waiting": waiting})
