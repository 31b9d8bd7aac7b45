"""The exact call sequence of an OVAS web client (NVIDIA's web-viewer-sample), over HTTP."""

from __future__ import annotations

import pytest
import requests

from ovas import create_app
from ovas.testing import FakeClock, SlowBackend

# (application service prefix, streaming service prefix) as clients build them: behind an
# ingress that strips the service name, the bare forms are hit.
PATH_FORMS = [("", "/streaming"), ("/applications", "/streaming"), ("", ""), ("/applications", "")]


CLOCK = FakeClock()


@pytest.fixture
def server(serve):
    backend = SlowBackend(ready_after=3, now=CLOCK)
    return serve(create_app({"TESTING": True, "REAP_INTERVAL": 0}, backend=backend))


@pytest.mark.parametrize(("apps", "streams"), PATH_FORMS)
def test_web_viewer_sequence(server, apps, streams):
    http = requests.Session()
    app_server, stream_server = server.url + apps, server.url + streams

    listed = http.get(f"{app_server}/cfg/apps").json()
    assert listed["count"] == len(listed["items"]) >= 1
    app_id = next(a["id"] for a in listed["items"] if a["id"] == "usd-viewer")

    versions = http.get(f"{app_server}/cfg/apps/{app_id}/versions").json()["items"]
    version = versions[0]["version"]
    assert version == "107.3.2"  # newest first

    profiles = http.get(f"{app_server}/cfg/apps/{app_id}/versions/{version}/profiles").json()
    profile = profiles["items"][0]["id"]

    body = {"id": app_id, "profile": profile, "version": version, "arguments": {}}
    started = http.post(f"{stream_server}/stream", json=body)
    assert started.status_code == 202
    session_id = started.json()["id"]
    assert started.json()["status"] == {
        "condition": "creating",
        "message": started.json()["status"]["message"],
        "status": False,
    }
    assert started.json()["routes"] == {}

    polls = 0
    while True:
        answer = http.get(f"{stream_server}/stream/{session_id}")
        polls += 1
        if answer.status_code == 200 or polls > 10:
            break
        assert answer.status_code == 202
        CLOCK.advance(1)  # the client's poll interval
    assert answer.status_code == 200
    assert polls > 1, "the session should have been starting for a while"
    session = answer.json()
    assert session["status"] == {
        "condition": "ready",
        "message": "Session is active",
        "status": True,
    }
    (address,) = session["routes"].keys()
    routes = {r["description"]: r for r in session["routes"][address]["routes"]}
    assert address == "127.0.0.1"
    assert routes["signaling"]["protocol"] == "TCP"
    assert routes["signaling"]["destination_port"] == 49100
    assert routes["media"]["protocol"] == "UDP"
    assert routes["media"]["destination_port"] == 47998

    stopped = http.delete(f"{stream_server}/stream", json={"id": session_id})
    assert stopped.status_code == 204
    assert stopped.content == b""

    gone = http.get(f"{stream_server}/stream/{session_id}")
    assert gone.status_code == 404
    assert "not found" in gone.json()["detail"]
    assert session_id not in {s["id"] for s in http.get(f"{stream_server}/stream").json()["items"]}


def test_delete_by_path_and_latest_version(server):
    http = requests.Session()
    started = http.post(
        f"{server.url}/streaming/stream", json={"id": "usd-viewer", "profile": "default"}
    )
    assert started.status_code == 202
    assert started.json()["version"] == "107.3.2"
    session_id = started.json()["id"]
    assert http.delete(f"{server.url}/streaming/stream/{session_id}/").status_code == 204
    assert http.delete(f"{server.url}/streaming/stream/{session_id}").status_code == 404
