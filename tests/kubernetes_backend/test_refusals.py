"""Refusals by the cluster's admission, over HTTP: a full ResourceQuota is a capacity answer
(503 with Retry-After, naming the quota), a webhook's denial a 422 carrying its words, and
only RBAC refusing ovas's own service account speaks of RBAC. A refused start leaves
nothing behind."""

from __future__ import annotations

import logging
import re

import pytest
import requests

from backends.kubernetes.client import _refused
from kubernetes_backend.steps import KINDS, ONE_POD_QUOTA, START_BODY
from ovas import create_app
from ovas.errors import BackendUnavailable

pytestmark = pytest.mark.kubernetes


@pytest.fixture
def server(serve, cluster, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", cluster.kubeconfig)
    # Refusals as they are answered with no line to wait in (`OVAS_QUEUE_SIZE=0`).
    settings = {"TESTING": True, "REAP_INTERVAL": 0, "BACKEND": "kubernetes", "QUEUE_SIZE": 0}
    settings["SESSION_CAPACITY"] = 5
    app = create_app(settings)
    yield serve(app)
    app.extensions["ovas"].backend.close()


def sessions_objects(cluster) -> list[str]:
    return [
        obj["metadata"]["name"]
        for kind in KINDS
        for obj in cluster.objects(kind)
        if "ovas/session" in (obj["metadata"].get("labels") or {})
    ]


def refused_starts(server, outcome: str) -> float:
    text = requests.get(f"{server.url}/metrics").text
    line = f'ovas_session_starts_total{{outcome="{outcome}"}}'
    found = [row for row in text.splitlines() if row.startswith(line)]
    return float(found[0].rsplit(" ", 1)[1]) if found else 0.0


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_full_resource_quota_is_a_capacity_answer_naming_the_quota(server, cluster, caplog):
    cluster.seed("omni-streaming", [ONE_POD_QUOTA])
    first = requests.post(f"{server.url}/streaming/stream", json=START_BODY)
    assert first.status_code == 202, first.text
    held = sessions_objects(cluster)
    answer = requests.post(f"{server.url}/streaming/stream", json=START_BODY)
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "30"
    assert answer.json()["detail"] == (
        "The namespace's ResourceQuota gpu-quota has no room for the session (requested: "
        "pods=1, used: pods=1, limited: pods=1); try again later"
    )
    assert "RBAC" not in answer.text
    # The operator's log line names the quota, in the API server's words, and nothing else.
    (line,) = warnings(caplog)
    assert re.fullmatch(
        r"The namespace's ResourceQuota gpu-quota has no room for the session \(.*\); try "
        r'again later: the API server answered 403 on Pod: pods "ovas-[0-9a-f-]+" is '
        r"forbidden: exceeded quota: gpu-quota, requested: pods=1, used: pods=1, limited: pods=1",
        line,
    ), line
    assert not {"RBAC", "credentials", "Role"} & set(line.replace(";", " ").split())
    assert sessions_objects(cluster) == held  # its slot is given back
    assert refused_starts(server, "capacity_exceeded") == 1
    assert refused_starts(server, "backend_unavailable") == 0


def test_a_webhooks_denial_is_a_client_error_with_its_words(server, cluster):
    def paused(plural, obj):
        return "GPU sessions are paused for maintenance" if plural == "pods" else None

    cluster.emulator.webhooks["policy.example.com"] = paused
    answer = requests.post(f"{server.url}/streaming/stream", json=START_BODY)
    assert answer.status_code == 422
    (problem,) = answer.json()["detail"]
    assert problem["loc"] == ["body", "profile"]
    assert problem["msg"] == (
        'The cluster refused the session\'s Pod: admission webhook "policy.example.com" denied '
        "the request: GPU sessions are paused for maintenance"
    )
    assert "RBAC" not in answer.text
    assert sessions_objects(cluster) == []
    assert refused_starts(server, "invalid_input") == 1


def test_only_rbac_refusing_ovas_account_speaks_of_rbac(server, cluster, caplog):
    cluster.emulator.forbidden.add(("create", "pods"))
    answer = requests.post(f"{server.url}/streaming/stream", json=START_BODY)
    assert answer.status_code == 503
    assert answer.json()["detail"] == (
        "The Kubernetes API server refused ovas (403) on Pod: pods is forbidden: User "
        '"system:serviceaccount:omni-streaming:ovas" cannot create resource "pods" in API '
        'group "" in the namespace "omni-streaming"; check ovas\'s RBAC (its Role)'
    )
    (line,) = warnings(caplog)
    assert "check ovas's RBAC (its Role): the API server answered 403 on Pod: " in line
    assert sessions_objects(cluster) == []
    assert refused_starts(server, "backend_unavailable") == 1


def test_credentials_the_api_server_rejects_are_not_an_rbac_matter():
    refused = _refused(401, "pods list", "Unauthorized")
    assert isinstance(refused, BackendUnavailable)
    assert refused.message == (
        "The Kubernetes API server refused ovas (401) on pods list: Unauthorized; check ovas's "
        "credentials"
    )


def test_a_quota_exceeded_on_gpus_holds_up_only_starts_that_need_gpus():
    from backends.kubernetes.client import _refused

    on_gpus = _refused(
        403,
        "Pod",
        'pods "ovas-x" is forbidden: exceeded quota: gpus, requested: requests.nvidia.com/gpu=1, '
        "used: requests.nvidia.com/gpu=2, limited: requests.nvidia.com/gpu=2",
    )
    on_pods = _refused(
        403,
        "Pod",
        'pods "ovas-x" is forbidden: exceeded quota: q, requested: pods=1, used: pods=1, '
        "limited: pods=1",
    )
    assert (on_gpus.resource, on_pods.resource) == ("gpu", "slot")
