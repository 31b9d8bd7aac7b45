"""Every status the API answers, in the shape clients parse: JSON `detail`, FastAPI-style 422."""

from __future__ import annotations

import uuid

import pytest

from ovas import create_app
from ovas.testing import FailingBackend, FakeBackend, NeverReadyBackend

START = {"id": "usd-viewer", "profile": "default", "version": "107.3.2"}


def detail(response, status):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    return response.json["detail"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({**START, "id": "nope"}, "Application 'nope' not found"),
        ({**START, "version": "9.9.9"}, "Version '9.9.9' of application 'usd-viewer' not found"),
        ({**START, "profile": "nope"}, "Profile 'nope' not found"),
        (
            {**START, "profile": "viewer-only", "version": "106.5.0"},
            "Profile 'viewer-only' does not support usd-viewer 106.5.0",
        ),
    ],
)
def test_unknown_app_version_or_profile_is_404_even_with_the_engine_down(
    client, backend, body, message
):
    backend.unavailable = True
    assert detail(client.post("/streaming/stream", json=body), 404) == message


@pytest.mark.parametrize(
    ("body", "loc", "kind"),
    [
        ({"id": "usd-viewer"}, ["body", "profile"], "missing"),
        ({"profile": "default"}, ["body", "id"], "missing"),
        ({**START, "id": 5}, ["body", "id"], "value_error"),
        (
            {**START, "arguments": {"usd_stage_uri": 3}},
            ["body", "arguments", "usd_stage_uri"],
            "value_error",
        ),
        (
            {**START, "arguments": {"kit_args": "--exec"}},
            ["body", "arguments", "kit_args"],
            "value_error",
        ),
    ],
)
def test_invalid_start_body_is_422_naming_the_field(client, body, loc, kind):
    errors = detail(client.post("/streaming/stream", json=body), 422)
    assert {"loc": loc, "type": kind} == {k: errors[0][k] for k in ("loc", "type")}
    assert errors[0]["msg"]
    assert client.get("/streaming/stream").json["count"] == 0


def test_unreadable_body_is_422_not_400(client):
    errors = detail(
        client.post("/streaming/stream", data="{not json", content_type="application/json"), 422
    )
    assert errors[0]["loc"] == ["body"]
    assert detail(
        client.delete("/streaming/stream", data="[", content_type="application/json"), 422
    )


def test_unknown_top_level_fields_are_ignored(client):
    answer = client.post("/streaming/stream", json={**START, "extra": {"x": 1}})
    assert answer.status_code in (200, 202)


def test_delete_needs_a_body_with_an_id(client):
    assert detail(client.delete("/streaming/stream"), 422)[0]["loc"] == ["body", "id"]
    assert detail(client.delete("/stream", json={"id": 7}), 422)[0]["loc"] == ["body", "id"]
    assert detail(client.delete("/stream", json={"id": str(uuid.uuid4())}), 404)


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=-1", "limit=x", "offset=-1", "sort-by=name", "order=UP"],
)
def test_bad_list_parameters_are_422(client, query):
    errors = detail(client.get(f"/streaming/stream?{query}"), 422)
    assert errors[0]["loc"][0] == "query"


def test_unknown_paths_and_methods(client):
    assert detail(client.get("/nothing/here"), 404)
    answer = client.put("/streaming/stream")
    assert detail(answer, 405)
    assert "POST" in answer.headers["Allow"]


def test_capacity_exhausted_without_a_line_is_503_with_retry_after(backend):
    app = create_app({"TESTING": True, "SESSION_CAPACITY": 1, "QUEUE_SIZE": 0}, backend=backend)
    client = app.test_client()
    assert client.post("/streaming/stream", json=START).status_code in (200, 202)
    refused = client.post("/streaming/stream", json=START)
    assert "slots" in detail(refused, 503)
    assert int(refused.headers["Retry-After"]) > 0
    assert client.get("/streaming/stream").json["count"] == 1
    (held,) = client.get("/streaming/stream").json["items"]
    assert client.delete(f"/streaming/stream/{held['id']}").status_code == 204
    assert client.post("/streaming/stream", json=START).status_code in (200, 202)


def test_per_user_limit_is_429(backend):
    app = create_app({"TESTING": True, "USER_SESSION_CAPACITY": 1}, backend=backend)
    client = app.test_client()
    assert client.post("/streaming/stream", json=START).status_code in (200, 202)
    refused = client.post("/streaming/stream", json=START)
    assert detail(refused, 429)
    assert refused.headers["Retry-After"]
    (mine,) = client.get("/streaming/stream").json["items"]
    assert client.delete(f"/streaming/stream/{mine['id']}").status_code == 204
    assert client.post("/streaming/stream", json=START).status_code in (200, 202)


def test_engine_down_is_503_naming_it_and_recovers(client, backend):
    backend.unavailable = True
    assert "unavailable" in detail(client.get("/streaming/stream"), 503)
    assert detail(client.post("/streaming/stream", json=START), 503)
    ready = client.get("/ready")
    assert ready.status_code == 503
    assert ready.json["checks"]["catalog"] == "ok"
    assert "backend" in ready.json["detail"]
    backend.unavailable = False
    assert client.get("/ready").status_code == 200
    assert client.get("/streaming/stream").status_code == 200


def test_failed_session_is_410_with_the_reason():
    app = create_app({"TESTING": True}, backend=FailingBackend(detail="every GPU is in use"))
    client = app.test_client()
    started = client.post("/streaming/stream", json=START)
    answer = client.get(f"/streaming/stream/{started.json['id']}")
    assert answer.status_code == 410
    assert answer.json["status"] == {
        "condition": "failed",
        "message": "No GPU can be had for the session: every GPU is in use",
        "status": False,
    }
    assert answer.json["reason"] == "no_gpu"
    assert answer.json["id"] == started.json["id"]


def test_starting_session_is_202():
    client = create_app({"TESTING": True}, backend=NeverReadyBackend()).test_client()
    started = client.post("/streaming/stream", json=START)
    assert started.status_code == 202
    answer = client.get(f"/stream/{started.json['id']}")
    assert answer.status_code == 202
    assert answer.json["status"]["condition"] == "creating"
    assert answer.json["routes"] == {}


def test_unknown_session_is_404(client):
    assert "not found" in detail(client.get(f"/stream/{uuid.uuid4()}"), 404)
    assert detail(client.delete(f"/stream/{uuid.uuid4()}"), 404)


class ExplodingBackend(FakeBackend):
    def observe_all(self):
        raise RuntimeError("secret internal state /etc/passwd")

    def observe_page(self, query):
        raise RuntimeError("secret internal state /etc/passwd")


def test_unexpected_error_is_500_without_a_traceback():
    # No reaper: its passes would meet the same exploding engine in the background.
    config = {"TESTING": True, "REAP_INTERVAL": 0}
    client = create_app(config, backend=ExplodingBackend()).test_client()
    answer = client.get("/streaming/stream")
    assert detail(answer, 500) == "Internal server error"
    assert "secret" not in answer.get_data(as_text=True)
    assert "Traceback" not in answer.get_data(as_text=True)


def test_oversized_body_is_refused(client):
    big = {**START, "padding": "x" * 100_000}
    assert detail(client.post("/streaming/stream", json=big), 413)


@pytest.mark.parametrize("extra", [{"arguments": None}, {"version": ""}, {"version": None}])
def test_empty_version_and_null_arguments_mean_the_defaults(client, extra):
    answer = client.post("/streaming/stream", json={**START, **extra})
    assert answer.status_code in (200, 202)
    assert answer.json["version"] == "107.3.2"


@pytest.mark.parametrize("depth", [1100, 5000])
def test_a_body_nested_too_deep_is_422_not_an_error_of_the_parser(client, depth):
    body = '{"id": "usd-viewer", "profile": "default", "arguments": ' + "[" * depth
    body += "]" * depth + "}"
    problems = detail(
        client.post("/streaming/stream", data=body, content_type="application/json"), 422
    )
    assert problems == [
        {"loc": ["body"], "msg": "The request body is not valid JSON", "type": "json_invalid"}
    ]


def test_a_json_body_without_content_type_is_read_as_json(client):
    body = '{"id": "usd-viewer", "profile": "default", "version": "107.3.2"}'
    answer = client.post("/streaming/stream", data=body, content_type=None)
    assert answer.status_code in (200, 202), answer.get_data(as_text=True)
    assert answer.json["app_id"] == "usd-viewer"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_a_body_of_another_content_type_is_422_naming_it(client, content_type):
    body = '{"id": "usd-viewer", "profile": "default"}'
    answer = client.post("/streaming/stream", data=body, content_type=content_type)
    (problem,) = detail(answer, 422)
    assert problem["loc"] == ["header", "Content-Type"]
    assert content_type in problem["msg"]
