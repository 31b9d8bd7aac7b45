"""The pure builders and readers of the Kubernetes backend, without any cluster."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import kubernetes_validate
import pytest

from backends.kubernetes import objects as o
from backends.kubernetes.status import Observed, observe, pod_state, record_of, routes_of
from ovas.kitspec import parse_kit
from ovas.models import SessionState
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


def test_labels_are_safe_and_annotations_exact():
    request = make_request(sample_catalog(), username="Ann Smith <ann@example.com>")
    request = replace(request, version=replace(request.version, version="1.0.0+build.7"))
    pod = valid(o.build_pod(request, "ns"))
    labels, notes = pod["metadata"]["labels"], pod["metadata"]["annotations"]
    assert labels[o.SESSION] == request.id
    for key in (o.USER, o.VERSION):
        assert len(labels[key]) <= 63 and labels[key][0].isalnum() and labels[key][-1].isalnum()
    assert labels[o.USER] != o.label_value("Ann Smith <ann@example.org>")
    assert notes[o.USERNAME] == "Ann Smith <ann@example.com>"
    assert notes[o.VERSION] == "1.0.0+build.7"
    seen = record_of(pod)
    assert (seen.session.username, seen.session.version) == (notes[o.USERNAME], "1.0.0+build.7")
    assert seen.session.created_time == request.created_time
    assert seen.deadline == request.deadline


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
    assert release["spec"]["install"]["remediation"]["retries"] == 0
    assert "labels" not in request.values["streamingKit"]  # the request is left alone


def test_slots_are_valid_config_maps_named_by_index_and_user():
    request = make_request(sample_catalog(), username="bob")
    valid(o.build_slot(o.slot_name(3), request, "ns", "global"))
    assert o.slot_name(3) == "ovas-slot-3"
    assert o.slot_name(0, "bob") != o.slot_name(0, "Bob")
    assert o.slot_name(0, "bob").startswith("ovas-user-")


def _pod(status: dict, *, node: str | None = "n1", restart: str = "Never") -> dict:
    spec = {"containers": [{"name": "kit", "image": "img:1"}], "restartPolicy": restart}
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": "p"}, "spec": spec, "status": status}


def _waiting(reason: str, message: str = "") -> dict:
    return {
        "containerStatuses": [
            {"image": "img:1", "state": {"waiting": {"reason": reason, "message": message}}}
        ]
    }


@pytest.mark.parametrize(
    ("status", "words"),
    [
        (_waiting("ErrImagePull", "not found"), ["img:1", "cannot be pulled", "not found"]),
        (_waiting("ImagePullBackOff"), ["cannot be pulled", "ImagePullBackOff"]),
        (
            {
                "containerStatuses": [
                    {"state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}
                ]
            },
            ["137", "OOMKilled"],
        ),
        (
            {
                "containerStatuses": [
                    {
                        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                        "lastState": {"terminated": {"exitCode": 3}},
                    }
                ]
            },
            ["crashing", "3"],
        ),
        (
            {
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                    }
                ]
            },
            ["0/3 nodes", "nvidia.com/gpu"],
        ),
    ],
)
def test_failures_are_read_with_their_reason(status, words):
    state, message, _ = pod_state(_pod(status))
    assert state is SessionState.FAILED
    for word in words:
        assert word in message


def test_progress_is_reported_while_creating():
    assert "node" in pod_state(_pod({"phase": "Pending"}, node=None))[1]
    assert "Pulling the image img:1" in pod_state(_pod(_waiting("ContainerCreating")))[1]
    running = {"containerStatuses": [{"state": {"running": {}}}]}
    assert "Starting" in pod_state(_pod(running))[1]


def _record(deadline_in: float = 60) -> Observed:
    request = make_request(sample_catalog())
    pod = o.build_pod(request, "ns")
    seen = record_of(pod)
    return replace(seen, deadline=datetime.now(UTC) + timedelta(seconds=deadline_in))


READY = {
    "conditions": [{"type": "Ready", "status": "True"}],
    "hostIP": "10.0.0.7",
}


def test_ready_needs_a_route_and_a_late_session_fails():
    record = _record()
    now = datetime.now(UTC)
    seen = observe(record, pod=_pod(READY), service=None, now=now)
    assert seen.session.state is SessionState.CREATING and seen.session.routes == ()
    late = observe(record, pod=_pod({}), service=None, now=now + timedelta(seconds=120))
    assert late.session.state is SessionState.FAILED
    assert "not ready within" in late.session.message
    assert late.failed_at == record.deadline


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


def test_routes_per_service_type():
    pod = _pod(READY)
    pod["spec"]["containers"][0]["ports"] = [{"name": "media", "containerPort": 47998}]
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


def test_a_session_once_ready_is_never_failed_by_its_start_deadline():
    record = _record(deadline_in=60)
    now = datetime.now(UTC)
    ready = observe(record, pod=_with_ports(_pod(READY)), service=_service("NodePort"), now=now)
    assert ready.session.state is SessionState.READY
    assert ready.unmarked_ready == "p"  # the backend writes the readiness on the pod once
    later = now + timedelta(seconds=3600)
    blip = {"conditions": [{"type": "Ready", "status": "False"}], "hostIP": "10.0.0.7"}
    marked = _with_ports(_pod(blip))
    marked["metadata"]["annotations"] = {o.READY_AT: now.isoformat()}
    seen = observe(record, pod=marked, service=_service("NodePort"), now=later)
    assert seen.session.state is SessionState.CREATING
    assert "not ready right now" in seen.session.message
    assert seen.failed_at is None
    # Never seen ready: the deadline still fails it.
    assert observe(record, pod=_pod(blip), service=None, now=later).session.state is (
        SessionState.FAILED
    )


def _with_ports(pod: dict) -> dict:
    pod["spec"]["containers"][0]["ports"] = [{"name": "media", "containerPort": 47998}]
    return pod
