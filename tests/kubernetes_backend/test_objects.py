"""The pure builders and readers of the Kubernetes backend, without any cluster: what this
release writes on a session's objects, and how it reads what earlier releases wrote."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import kubernetes_validate
import pytest

from backends.kubernetes import objects as o
from backends.kubernetes.status import (
    Remains,
    earlier_record,
    earlier_slot,
    foreign,
    logs_of,
    pod_observation,
    refusal,
    release_observation,
    routes_of,
    session_id_of,
)
from kubernetes_backend.earlier import record_annotations
from ovas.kitspec import parse_kit
from ovas.ledger import LedgerError, UnknownFormat
from ovas.lifecycle import Mark, Observation, Observed, Outcome, Record, Stage, decide
from ovas.models import Clocks, Reason, SessionState
from ovas.testing import make_request, sample_catalog

K8S_VERSION = "1.30"


def request_with(kit_changes: dict | None = None, values_changes: dict | None = None, **kw):
    kw.setdefault("app_id", "usd-viewer")
    request = make_request(sample_catalog(), **kw)
    values = copy.deepcopy(request.values)
    values["streamingKit"].update(kit_changes or {})
    values.update(values_changes or {})
    return replace(request, values=values, kit=parse_kit(values))


def valid(obj: dict) -> dict:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    return obj


def test_pod_runs_the_kit_container_as_the_profile_says():
    request = request_with(
        {
            "nodeSelector": {"gpu": "l40"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            "runtimeClassName": "nvidia",
            "startupProbe": {"httpGet": {"path": "/ready", "port": 8011}, "periodSeconds": 5},
        },
        {"global": {"imagePullSecrets": ["ngc", {"name": "other"}]}},
        usd_stage_uri="s3://stage.usd",
    )
    pod = valid(o.build_pod(request, "ns"))
    container = pod["spec"]["containers"][0]
    assert container["image"] == "example/usd-viewer:107.3.2"
    assert {"name": "USD_PATH", "value": "s3://stage.usd"} in container["env"]
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"}
    assert container["startupProbe"] == {
        "httpGet": {"path": "/ready", "port": 8011},
        "periodSeconds": 5,
    }
    assert [(p["containerPort"], p["protocol"]) for p in container["ports"]] == [
        (49100, "TCP"),
        (47998, "UDP"),
    ]
    spec = pod["spec"]
    assert spec["nodeSelector"] == {"gpu": "l40"}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    assert spec["runtimeClassName"] == "nvidia"
    assert spec["imagePullSecrets"] == [{"name": "ngc"}, {"name": "other"}]
    assert spec["restartPolicy"] == "Never"


def test_a_pod_without_probe_is_ready_only_when_signaling_answers():
    pod = o.build_pod(request_with(), "ns")
    probe = pod["spec"]["containers"][0]["readinessProbe"]
    assert probe["tcpSocket"] == {"port": 49100}


def test_labels_are_safe_and_no_record_is_written():
    request = make_request(sample_catalog(), username="Ann Smith <ann@example.com>")
    request = replace(request, version=replace(request.version, version="1.0.0+build.7"))
    pod = valid(o.build_pod(request, "ns"))
    labels = pod["metadata"]["labels"]
    assert labels[o.SESSION] == request.id and labels[o.FORMAT] == o.WORKLOAD_FORMAT == "2"
    version = labels[o.VERSION]
    assert len(version) <= 63 and version[0].isalnum() and version[-1].isalnum()
    assert o.USER not in labels and "annotations" not in pod["metadata"]
    assert earlier_record(pod) is None and session_id_of(pod) == request.id


def earlier(obj: dict, record: Record, **more: str) -> dict:
    """`obj` as the releases before formats wrote it: no `ovas/format`, and the record."""
    meta = obj["metadata"]
    labels = {k: v for k, v in meta["labels"].items() if k != o.FORMAT}
    notes = {**(meta.get("annotations") or {}), **record_annotations(record), **more}
    return {**obj, "metadata": {**meta, "labels": labels, "annotations": notes}}


def test_an_earlier_record_holds_the_clocks_the_marks_and_the_node():
    clocks = Clocks(connect_timeout=0, idle_timeout=2.5, max_lifetime=600)
    request = make_request(sample_catalog(), clocks=clocks, username="Ann <ann@example.com>")
    ready = request.created_time + timedelta(seconds=5)
    kept = replace(Record.of(request), marks={Mark.READY: ready})
    pod = earlier(o.build_pod(request, "ns"), kept, **{o.NODE: "n1"})
    notes = pod["metadata"]["annotations"]
    assert (notes["ovas/connect-timeout"], notes["ovas/idle-timeout"]) == ("0", "2.5")
    assert notes["ovas/max-lifetime"] == "600" and notes[o.USERNAME] == "Ann <ann@example.com>"
    record = earlier_record(pod)
    assert record == replace(kept, node="n1")
    assert record.expires_time == request.created_time + timedelta(seconds=600)
    # A record that is not whole is none.
    for broken in ({o.DEADLINE: "soon"}, {"ovas/max-lifetime": "-1"}, {o.CREATED: ""}):
        meta = {**pod["metadata"], "annotations": {**notes, **broken}}
        assert earlier_record({"metadata": meta}) is None


def outcome_config_map(record: Record, outcome: Outcome, logs: list[str]) -> dict:
    """An earlier release's outcome ConfigMap."""
    labels = {o.SESSION: record.id, o.OUTCOME: outcome.state.value}
    notes = {
        o.STATE: outcome.state.value,
        o.REASON: outcome.reason.value,
        o.MESSAGE: outcome.message,
        o.ENDED: outcome.ended_time.isoformat(),
    }
    made = {"metadata": {"name": o.outcome_name(record.id), "labels": labels}}
    return {**earlier(made, record, **notes), "data": {o.LOGS: "\n".join(logs)}}


def test_an_earlier_outcome_config_map_holds_the_record_the_outcome_and_the_logs():
    request = make_request(sample_catalog(), username="Ann Smith <ann@example.com>")
    ended = request.created_time + timedelta(minutes=5)
    record = replace(Record.of(request), marks={Mark.READY: request.created_time})
    outcome = Outcome(SessionState.FAILED, Reason.EXITED, "The Kit app exited with code 3", ended)
    config_map = outcome_config_map(record, outcome, ["starting", "exiting"])
    assert earlier_record(config_map) == replace(record, outcome=outcome)
    assert logs_of(config_map) == ["starting", "exiting"]
    adopted = {**config_map["metadata"]["labels"], o.FORMAT: o.WORKLOAD_FORMAT}
    assert earlier_record({"metadata": {**config_map["metadata"], "labels": adopted}}) is None


def test_service_is_owned_by_the_pod_and_follows_the_profile():
    request = request_with(
        {
            "service": {
                "type": "NodePort",
                "signalingPort": 31000,
                "mediaPort": 31001,
                "annotations": {"lb.example/internal": "true"},
            }
        }
    )
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "uid": "u-1"}}
    service = valid(o.build_service(request, "ns", owner=pod))
    assert service["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "u-1"}
    ]
    assert service["metadata"]["annotations"]["lb.example/internal"] == "true"
    assert service["spec"]["type"] == "NodePort"
    assert service["spec"]["selector"] == {o.SESSION: request.id}
    ports = {
        p["name"]: (p["port"], p["targetPort"], p["protocol"]) for p in service["spec"]["ports"]
    }
    assert ports == {"signaling": (31000, 49100, "TCP"), "media": (31001, 47998, "UDP")}
    assert all("nodePort" not in p for p in service["spec"]["ports"])  # the cluster picks them


def test_helmrelease_installs_the_versions_chart_with_the_rendered_values():
    request = make_request(sample_catalog())
    request = replace(
        request,
        version=replace(
            request.version,
            helm_chart="omniverse/kit-appstreaming-session",
            helm_chart_version="1.11.0",
        ),
    )
    release = o.build_helmrelease(request, "ns")
    chart = release["spec"]["chart"]["spec"]
    assert chart == {
        "chart": "kit-appstreaming-session",
        "version": "1.11.0",
        "sourceRef": {"kind": "HelmRepository", "name": "omniverse"},
    }
    values = release["spec"]["values"]
    assert values["streamingKit"]["image"] == request.values["streamingKit"]["image"]
    assert values["streamingKit"]["sessionId"] == request.id
    assert values["streamingKit"]["name"] == request.id
    assert values["streamingKit"]["labels"][o.SESSION] == request.id
    assert values["streamingKit"]["labels"][o.FORMAT] == o.WORKLOAD_FORMAT
    assert release["metadata"]["labels"][o.FORMAT] == o.WORKLOAD_FORMAT
    assert "annotations" not in values["streamingKit"] and "annotations" not in release["metadata"]
    assert release["spec"]["install"]["remediation"]["retries"] == 0
    assert "labels" not in request.values["streamingKit"]  # the request is left alone


def test_an_earlier_slot_says_its_scope_and_session():
    labels = {o.SLOT: "user", o.SESSION: "s1", o.USER: "ann"}
    slot = {"metadata": {"name": "ovas-user-0a1b2c3d4e5f-0", "labels": labels}}
    assert earlier_slot(slot) == o.SlotRead("user", "s1")
    newer = {"metadata": {**slot["metadata"], "labels": {**labels, o.FORMAT: "2"}}}
    assert earlier_slot(newer) is None


def _pod(status: dict, *, node: str | None = "n1", restart: str = "Never") -> dict:
    spec = {
        "containers": [
            {"name": "kit", "image": "img:1", "ports": [{"name": "media", "containerPort": 47998}]}
        ],
        "restartPolicy": restart,
    }
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": "p"}, "spec": spec, "status": status}


def _kit(state: dict, **fields) -> dict:
    return {"containerStatuses": [{"name": "kit", "image": "img:1", "state": state, **fields}]}


def _waiting(reason: str, message: str = "") -> dict:
    return _kit({"waiting": {"reason": reason, "message": message}})


def _event(reason: str, message: str, at: str = "") -> dict:
    return {"reason": reason, "message": message, "lastTimestamp": at}


NO_NEW_NODE = (
    "The cluster autoscaler cannot add one: pod didn't trigger scale-up (it wouldn't fit if a "
    "new node is added): 1 Insufficient nvidia.com/gpu"
)
# What the cluster said of the pods of `test_faults_are_read_with_their_reason`, oldest first.
EVENTS = [
    _event("Failed", 'Failed to pull image "img:1": manifest unknown', "2026-01-01T00:00:01Z"),
    _event("Failed", "Error: ImagePullBackOff", "2026-01-01T00:00:02Z"),
    _event("NotTriggerScaleUp", NO_NEW_NODE.partition(": ")[2], "2026-01-01T00:00:03Z"),
]


def _disrupted(reason: str, message: str) -> dict:
    condition = {"type": "DisruptionTarget", "status": "True", "reason": reason}
    return {"phase": "Failed", "conditions": [{**condition, "message": message}]}


def _unschedulable(message: str) -> dict:
    condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}
    return {"conditions": [{**condition, "message": message}]}


@pytest.mark.parametrize(
    ("status", "reason", "detail"),
    [
        (
            _waiting("ErrImagePull", "not found"),
            Reason.IMAGE_PULL,
            "img:1 (ErrImagePull): not found",
        ),
        (
            _waiting("ImagePullBackOff", 'Back-off pulling image "img:1"'),
            Reason.IMAGE_PULL,
            'img:1 (ImagePullBackOff): Failed to pull image "img:1": manifest unknown',
        ),
        (_waiting("InvalidImageName"), Reason.IMAGE_PULL, "img:1 (InvalidImageName)"),
        (
            _waiting("CreateContainerConfigError", 'secret "s" not found'),
            Reason.CREATE_FAILED,
            'CreateContainerConfigError: secret "s" not found',
        ),
        (
            _unschedulable("0/3 nodes are available: 3 Insufficient nvidia.com/gpu."),
            Reason.NO_GPU,
            f"0/3 nodes are available: 3 Insufficient nvidia.com/gpu. {NO_NEW_NODE}",
        ),
        (
            _unschedulable("0/3 nodes are available: 3 node(s) didn't match Pod's node affinity."),
            Reason.UNSCHEDULABLE,
            f"0/3 nodes are available: 3 node(s) didn't match Pod's node affinity. {NO_NEW_NODE}",
        ),
        (
            {"reason": "Terminated", "message": "Pod was terminated in response to shutdown."},
            Reason.NODE_LOST,
            "Pod was terminated in response to shutdown.",
        ),
        (
            _disrupted("DeletionByPodGC", "PodGC: node no longer exists"),
            Reason.NODE_LOST,
            "PodGC: node no longer exists",
        ),
        (
            _disrupted("PreemptionByScheduler", "preempting"),
            Reason.PREEMPTED,
            "preempting",
        ),
        (
            _disrupted("EvictionByEvictionAPI", "Eviction API: evicting"),
            Reason.EVICTED,
            "Eviction API: evicting",
        ),
        (
            {"phase": "Failed", "reason": "Evicted", "message": "The node was low on memory."},
            Reason.EVICTED,
            "The node was low on memory.",
        ),
        (
            _kit(
                {"waiting": {"reason": "CrashLoopBackOff"}},
                restartCount=4,
                lastState={"terminated": {"exitCode": 3}},
            ),
            Reason.CRASH_LOOP,
            "restarted 4 times; last exit code 3",
        ),
        (
            {"phase": "Failed", "reason": "UnexpectedAdmissionError", "message": "no device"},
            Reason.CREATE_FAILED,
            "UnexpectedAdmissionError: no device",
        ),
    ],
)
def test_faults_are_read_with_their_reason(status, reason, detail):
    seen = pod_observation(_pod(status, node=None), None, events=EVENTS)
    assert (seen.stage, seen.fault, seen.detail) == (Stage.FAULT, reason, detail)


@pytest.mark.parametrize(
    ("status", "events", "detail"),
    [
        (
            _waiting("ImagePullBackOff", 'Back-off pulling image "img:1"'),
            [],
            "Pulling the image img:1: retrying after img:1 (ImagePullBackOff): Back-off pulling "
            'image "img:1"',
        ),
        (
            _waiting("ErrImagePull", "dial tcp 192.0.2.1:443: i/o timeout"),
            [],
            "Pulling the image img:1: retrying after img:1 (ErrImagePull): dial tcp "
            "192.0.2.1:443: i/o timeout",
        ),
        (
            _unschedulable("0/3 nodes are available: 3 Insufficient nvidia.com/gpu."),
            [],
            "Waiting for a node: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
        ),
        (
            _unschedulable("0/1 nodes are available: 1 Insufficient nvidia.com/gpu."),
            [
                _event("NotTriggerScaleUp", "pod didn't trigger scale-up (it wouldn't fit...)"),
                _event("TriggeredScaleUp", "pod triggered scale-up: [{pool 0->1 (max: 2)}]"),
            ],
            "Waiting for a node: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu. The "
            "cluster autoscaler is adding one: pod triggered scale-up: [{pool 0->1 (max: 2)}]",
        ),
        (
            _unschedulable("0/1 nodes are available: 1 Insufficient nvidia.com/gpu."),
            [_event("NotTriggerScaleUp", "pod didn't trigger scale-up: 1 in backoff after failed")],
            "Waiting for a node: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu. The "
            "cluster autoscaler adds none yet: pod didn't trigger scale-up: 1 in backoff after "
            "failed",
        ),
    ],
)
def test_passing_conditions_are_waiting_with_the_clusters_words(status, events, detail):
    seen = pod_observation(_pod(status, node=None), None, events=events)
    assert (seen.stage, seen.detail) == (Stage.WAITING, detail)


def test_an_oom_killed_container_has_exited_for_want_of_memory():
    finished = "2026-01-02T03:04:05Z"
    terminated = {"exitCode": 137, "reason": "OOMKilled", "finishedAt": finished}
    seen = pod_observation(_pod(_kit({"terminated": terminated})), None)
    assert (seen.stage, seen.exit_code, seen.oom) == (Stage.EXITED, 137, True)
    assert seen.finished_time == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert seen.detail == ""


def test_an_exit_is_read_once_the_container_was_restarted_after_it():
    """A chart's pod restarts its container: the first exit ends the session, as it was."""
    last = {"terminated": {"exitCode": 0, "reason": "Completed"}}
    backing_off = _kit({"waiting": {"reason": "CrashLoopBackOff"}}, restartCount=1, lastState=last)
    running_again = _kit({"running": {}}, restartCount=1, lastState=last)
    for status in (backing_off, running_again):
        seen = pod_observation(_pod(status, restart="Always"), None)
        assert (seen.stage, seen.exit_code, seen.oom) == (Stage.EXITED, 0, False)


def test_progress_is_reported_while_creating():
    assert pod_observation(_pod({"phase": "Pending"}, node=None), None) == Observation(
        Stage.WAITING, detail="Waiting for a node to run the session"
    )
    seen = pod_observation(_pod(_waiting("ContainerCreating")), None)
    assert (seen.stage, seen.detail) == (
        Stage.WAITING,
        "Pulling the image img:1 and creating the container",
    )
    seen = pod_observation(_pod(_kit({"running": {}})), None)
    assert (seen.stage, seen.detail, seen.probe_ok) == (
        Stage.RUNNING,
        "Starting the Kit application",
        False,
    )


READY = {**_kit({"running": {}}, ready=True), "conditions": [{"type": "Ready", "status": "True"}]}
READY["hostIP"] = "10.0.0.7"


def _service(kind: str, **status) -> dict:
    ports = [
        {
            "name": "signaling",
            "protocol": "TCP",
            "port": 31000,
            "targetPort": 49100,
            "nodePort": 30500,
        },
        {
            "name": "media",
            "protocol": "UDP",
            "port": 31001,
            "targetPort": "media",
            "nodePort": 30501,
        },
    ]
    return {"spec": {"type": kind, "ports": ports, "clusterIP": "10.96.0.9"}, "status": status}


def test_a_ready_pod_passes_its_probe_only_once_its_address_is_known():
    waiting = pod_observation(_pod(READY), _service("LoadBalancer"))
    assert (waiting.stage, waiting.probe_ok, waiting.detail) == (
        Stage.RUNNING,
        False,
        "Waiting for the session's address",
    )
    ready = pod_observation(_pod(READY), _service("NodePort"), public_host="streams.example")
    assert (ready.stage, ready.probe_ok, ready.host) == (Stage.RUNNING, True, "streams.example")
    assert [r.source_port for r in ready.routes] == [30500, 30501]
    assert ready.connections is None  # the cluster cannot tell whether a client is connected


def test_routes_per_service_type():
    pod = _pod(READY)
    assert routes_of(_service("LoadBalancer"), pod, None) is None
    host, routes = routes_of(
        _service("LoadBalancer", loadBalancer={"ingress": [{"hostname": "lb.example"}]}), pod, None
    )
    assert host == "lb.example"
    assert [(r.description, r.protocol, r.source_port, r.destination_port) for r in routes] == [
        ("signaling", "TCP", 31000, 49100),
        ("media", "UDP", 31001, 47998),
    ]
    host, routes = routes_of(_service("NodePort"), pod, None)
    assert (host, routes[0].source_port, routes[1].source_port) == ("10.0.0.7", 30500, 30501)
    assert routes_of(_service("NodePort"), pod, "streams.example")[0] == "streams.example"
    assert routes_of(_service("ClusterIP"), pod, None)[0] == "10.96.0.9"


def _release(*conditions: dict) -> dict:
    chart = {"chart": "kit-appstreaming-session", "version": "1.11.0"}
    return {"spec": {"chart": {"spec": chart}}, "status": {"conditions": list(conditions)}}


def test_a_release_without_its_pod_installs_or_fails():
    assert release_observation(_release()).detail == (
        "Installing the chart kit-appstreaming-session 1.11.0"
    )
    installed = release_observation(
        _release({"type": "Ready", "status": "True", "reason": "InstallSucceeded"})
    )
    assert isinstance(installed, Remains) and installed.release
    assert installed.stage is Stage.WAITING
    failed = _release(
        {"type": "Ready", "status": "False", "reason": "InstallFailed", "message": "no chart"}
    )
    seen = release_observation(failed)
    assert (seen.stage, seen.fault, seen.detail) == (
        Stage.FAULT,
        Reason.INSTALL_FAILED,
        "chart kit-appstreaming-session 1.11.0: no chart",
    )


def test_what_a_pod_shows_decides_the_session_in_the_core():
    """Readiness is the core's to decide: a probe that misses after the session was ready
    never fails it, and the start deadline fails one never ready."""
    request = make_request(sample_catalog(), start_timeout=60)
    record = Record.of(request)
    now = request.created_time
    ready = decide(Observed(record, pod_observation(_pod(READY), _service("NodePort"))), now)
    assert ready.session.state is SessionState.READY
    assert ready.marks == {Mark.READY: now}
    blip = pod_observation(_pod(_kit({"running": {}})), _service("NodePort"))
    later = now + timedelta(seconds=3600)
    marked = replace(record, marks={Mark.READY: now})
    assert decide(Observed(marked, blip), later).session.state is SessionState.READY
    never = decide(Observed(record, blip), later)
    assert (never.session.state, never.outcome.reason) == (
        SessionState.FAILED,
        Reason.START_TIMEOUT,
    )


def test_earlier_objects_without_a_format_are_read_as_format_1():
    request = make_request(sample_catalog(), username="Ann Smith <ann@example.com>")
    record = Record.of(request)
    pod = earlier(o.build_pod(request, "ns"), record)
    assert o.FORMAT not in pod["metadata"]["labels"]
    assert earlier_record(pod) == record
    assert refusal(pod) is None and session_id_of(pod) == request.id
    with_format = {**pod["metadata"]["labels"], o.FORMAT: "1"}
    assert earlier_record({"metadata": {**pod["metadata"], "labels": with_format}}) == record
    ended = Outcome(SessionState.ENDED, Reason.MAX_LIFETIME, "", request.created_time)
    config_map = outcome_config_map(record, ended, [])
    assert earlier_record(config_map) == replace(record, outcome=ended)


@pytest.mark.parametrize("kind", ["Pod", "Service", "HelmRelease", "ConfigMap"])
def test_objects_of_a_newer_format_are_refused_by_the_codec(kind):
    request = make_request(sample_catalog())
    ended = Outcome(SessionState.ENDED, Reason.MAX_LIFETIME, "", request.created_time)
    built = {
        "Pod": o.build_pod(request, "ns"),
        "Service": o.build_service(request, "ns"),
        "HelmRelease": o.build_helmrelease(request, "ns"),
        "ConfigMap": outcome_config_map(Record.of(request), ended, []),
    }[kind]
    meta = built["metadata"]
    newer = {**built, "metadata": {**meta, "labels": {**meta["labels"], o.FORMAT: "3"}}}
    codec = o.EARLIER_OUTCOME if kind == "ConfigMap" else o.WORKLOAD
    with pytest.raises(UnknownFormat) as refused:
        codec.decode(newer)
    assert (refused.value.name, refused.value.format) == (meta["name"], "3")
    assert refusal(newer) is not None and foreign(newer)
    assert (earlier_record(newer), session_id_of(newer)) == (None, None)
    assert not foreign(built) and session_id_of(built) == request.id


def test_the_codec_writes_the_format_and_keeps_it():
    labels, notes = o.WORKLOAD.encode({o.SESSION: "s1"}, {})
    assert (labels, notes) == ({o.FORMAT: "2", o.SESSION: "s1"}, {})
    for ours, theirs in (({o.FORMAT: "1"}, {}), ({"app": "x"}, {}), ({}, {"example.com/a": ""})):
        with pytest.raises(LedgerError):
            o.WORKLOAD.encode(ours, theirs)
