"""Sessions as the documented StreamResponse schema writes them, for every state."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from blueprints.streaming.schemas import StreamListSchema, StreamResponseSchema
from ovas.models import Route, Session, SessionState
from ovas.services import Page


def session_to_json(session: Session) -> dict:
    """What a client receives: the schema's output as the app's JSON provider writes it."""
    return orjson.loads(orjson.dumps(StreamResponseSchema().dump(session)))


ROUTES = (Route("signaling", "TCP", 31000, 49100), Route("media", "UDP", 31001, 47998))


def session(state: SessionState, message: str = "") -> Session:
    return Session(
        id="0c5e7a9e-0a55-4a70-9c39-8a1d5d3b7f10",
        app_id="usd-viewer",
        version="4.3.5-rc.1+build.123",
        profile="default",
        username="alice",
        created_time=datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=UTC),
        state=state,
        message=message,
        host="10.1.2.3",
        routes=ROUTES if state is SessionState.READY else (),
    )


@pytest.mark.parametrize("state", list(SessionState))
def test_every_state_validates_against_the_documented_schema(state):
    body = session_to_json(session(state, "why" if state is SessionState.FAILED else ""))
    schema = StreamResponseSchema()
    assert schema.validate(body) == {}
    assert set(body) == set(schema.fields)
    assert body["status"]["status"] is (state is SessionState.READY)
    assert body["status"]["condition"] == state.value
    assert datetime.fromisoformat(body["created_time"]) == session(state).created_time


def test_routes_appear_only_when_ready():
    assert session_to_json(session(SessionState.CREATING))["routes"] == {}
    ready = session_to_json(session(SessionState.READY))
    assert ready["routes"] == {
        "10.1.2.3": {
            "routes": [
                {
                    "description": "signaling",
                    "protocol": "TCP",
                    "source_port": 31000,
                    "destination_port": 49100,
                },
                {
                    "description": "media",
                    "protocol": "UDP",
                    "source_port": 31001,
                    "destination_port": 47998,
                },
            ]
        }
    }
    assert ready["status"]["message"] == "Session is active"


def test_list_dump_validates_too():
    page = Page(offset=0, limit=50, items=[session(s) for s in SessionState])
    body = orjson.loads(orjson.dumps(StreamListSchema().dump(page)))
    assert StreamListSchema().validate(body) == {}
    assert body["count"] == len(SessionState)


def test_a_listed_session_is_written_as_its_own_answer_writes_it():
    """The list writes each session through the same schema as a GET of it: the values
    built in their wire form (routes, status) come out the same either way."""
    items = [session(s, "why" if s.final else "") for s in SessionState]
    page = Page(offset=0, limit=50, items=items)
    listed = orjson.loads(orjson.dumps(StreamListSchema().dump(page)))["items"]
    assert listed == [session_to_json(s) for s in items]
    ready = listed[[s.value for s in SessionState].index("ready")]
    assert ready["routes"]["10.1.2.3"]["routes"][0]["source_port"] == 31000


def test_the_documents_describe_routes_status_and_items_in_full(client):
    """Values written in their wire form are still documented field by field: schemathesis
    and clients' generators read these."""
    schemas = client.get("/streaming/openapi.json").get_json()["components"]["schemas"]
    response = schemas["StreamResponse"]["properties"]
    assert response["status"]["$ref"].endswith("/StreamStatus")
    assert response["routes"]["additionalProperties"]["$ref"].endswith("/RouteSet")
    assert schemas["RouteSet"]["properties"]["routes"]["items"]["$ref"].endswith("/Route")
    assert set(schemas["Route"]["required"]) == {
        "description",
        "protocol",
        "source_port",
        "destination_port",
    }
    assert set(schemas["StreamStatus"]["properties"]) == {"condition", "message", "status"}
    items = schemas["StreamList"]["properties"]["items"]
    assert items["type"] == "array" and items["items"]["$ref"].endswith("/StreamResponse")
