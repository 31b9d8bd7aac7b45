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
