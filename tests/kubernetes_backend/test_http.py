"""An OVAS client's call sequence over HTTP, with ovas on the Kubernetes backend and the
emulated cluster behind it."""

from __future__ import annotations

import time

import pytest
import requests

from ovas import create_app

pytestmark = pytest.mark.kubernetes


@pytest.fixture(params=["pod", "helmrelease"])
def server(request, serve, cluster, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", cluster.kubeconfig)
    settings = {
        "TESTING": True,
        "REAP_INTERVAL": 0,
        "BACKEND": "kubernetes",
        "KUBERNETES_SESSION_MODE": request.param,
        "SESSION_CAPACITY": 2,
        "QUEUE_SIZE": 0,  # a full host refuses: its line is test_queue.py's
        "EDITING_ENABLED": True,
    }
    app = create_app(settings)
    yield serve(app)
    app.extensions["ovas"].backend.close()


def poll(http, url: str, timeout: float = 10) -> requests.Response:
    deadline = time.monotonic() + timeout
    while True:
        answer = http.get(url)
        if answer.status_code != 202 or time.monotonic() > deadline:
            return answer
        time.sleep(0.05)


def test_web_viewer_sequence(server):
    http = requests.Session()
    apps = http.get(f"{server.url}/cfg/apps").json()["items"]
    assert "kit-standin" in {a["id"] for a in apps}
    version = http.get(f"{server.url}/cfg/apps/kit-standin/versions").json()["items"][0]
    assert version["version"] == "1.0.0"
    profiles = http.get(f"{server.url}/cfg/apps/kit-standin/versions/1.0.0/profiles").json()
    assert [p["id"] for p in profiles["items"]] == ["standin"]

    body = {"id": "kit-standin", "profile": "standin", "version": "1.0.0", "arguments": {}}
    started = http.post(f"{server.url}/streaming/stream", json=body)
    assert started.status_code == 202, started.text
    assert started.json()["status"]["condition"] == "creating"
    assert started.json()["routes"] == {}
    session_id = started.json()["id"]

    answer = poll(http, f"{server.url}/streaming/stream/{session_id}")
    assert answer.status_code == 200, answer.text
    session = answer.json()
    assert session["status"] == {
        "condition": "ready",
        "message": "Session is active",
        "status": True,
    }
    (address,) = session["routes"]
    assert address.startswith("203.0.113.")
    routes = {r["description"]: r for r in session["routes"][address]["routes"]}
    assert (routes["signaling"]["protocol"], routes["signaling"]["destination_port"]) == (
        "TCP",
        49100,
    )
    assert (routes["media"]["protocol"], routes["media"]["destination_port"]) == ("UDP", 47998)

    listed = http.get(f"{server.url}/streaming/stream").json()
    assert [s["id"] for s in listed["items"]] == [session_id]

    stopped = http.delete(f"{server.url}/streaming/stream", json={"id": session_id})
    assert (stopped.status_code, stopped.content) == (204, b"")
    assert http.get(f"{server.url}/streaming/stream/{session_id}").status_code == 404
    assert http.get(f"{server.url}/streaming/stream").json()["items"] == []


def test_capacity_is_a_503_with_retry_after(server):
    http = requests.Session()
    body = {
        "id": "kit-standin",
        "profile": "standin",
        "arguments": {"usd_stage_uri": "/app/samples/a.usd"},
    }
    first = http.post(f"{server.url}/stream", json=body)
    second = http.post(f"{server.url}/stream", json=body)
    assert (first.status_code, second.status_code) == (202, 202)
    full = http.post(f"{server.url}/stream", json=body)
    assert full.status_code == 503
    assert "slots are in use" in full.json()["detail"]
    assert full.headers["Retry-After"]
    assert http.delete(f"{server.url}/stream/{first.json()['id']}").status_code == 204
    assert http.post(f"{server.url}/stream", json=body).status_code == 202


def test_a_failed_session_is_a_410_saying_why(server, cluster):
    broken = {
        "apiVersion": "omniverse.nvidia.com/v1",
        "kind": "ApplicationVersion",
        "metadata": {
            "name": "kit-standin-9.0.0",
            "labels": {"app": "kit-standin", "version": "9.0.0"},
        },
        "spec": {"container": "registry.example/does-not-exist", "container_version": "9.0.0"},
    }
    cluster.seed("omni-streaming", [broken])
    http = requests.Session()
    body = {"id": "kit-standin", "profile": "standin", "version": "9.0.0"}
    started = http.post(f"{server.url}/stream", json=body)
    assert started.status_code == 202, started.text
    answer = poll(http, f"{server.url}/stream/{started.json()['id']}")
    assert answer.status_code == 410
    status = answer.json()["status"]
    assert (status["condition"], status["status"]) == ("failed", False)
    assert answer.json()["reason"] == "image_pull"
    assert status["message"].startswith("The Kit image could not be pulled: ")
    assert "registry.example/does-not-exist:9.0.0" in status["message"]
    # Kept, with its reason, in the list too: the record outlives the pod.
    listed = http.get(f"{server.url}/stream").json()["items"]
    assert [(s["id"], s["reason"]) for s in listed] == [(started.json()["id"], "image_pull")]
    pods = [p for p in cluster.objects("v1/pods") if not p["metadata"].get("deletionTimestamp")]
    assert pods == []


def test_catalog_edits_reach_the_cluster(server, cluster):
    http = requests.Session()
    created = http.post(
        f"{server.url}/cfg/apps", json={"id": "new-app", "name": "New", "description": ""}
    )
    assert created.status_code == 201, created.text
    names = [o["metadata"]["name"] for o in cluster.objects("omniverse.nvidia.com/v1/applications")]
    assert "new-app" in names
    assert http.get(f"{server.url}/cfg/apps/new-app").json()["name"] == "New"


def test_an_unreachable_cluster_is_a_503_naming_it(serve, monkeypatch, tmp_path):
    from support.kube_server import free_port, write_kubeconfig

    port = free_port()
    monkeypatch.setenv(
        "KUBECONFIG", str(write_kubeconfig(tmp_path / "c", f"http://127.0.0.1:{port}"))
    )
    app = create_app({"TESTING": True, "REAP_INTERVAL": 0, "BACKEND": "kubernetes"})
    server = serve(app)
    answer = requests.get(f"{server.url}/streaming/stream")
    assert answer.status_code == 503
    assert "Kubernetes API server" in answer.json()["detail"]
    assert requests.get(f"{server.url}/ready").status_code == 503
    assert requests.get(f"{server.url}/health").status_code == 200
