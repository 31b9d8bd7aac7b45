"""`blueprints.common.Blueprint`: flask-smorest's Blueprint with leaner wrappers must answer
and document exactly as flask-smorest's own does."""

from __future__ import annotations

import flask_smorest
import pytest
from flask import Flask, Response
from marshmallow import Schema, fields

from blueprints.common import Blueprint, Resource


class Query(Schema):
    size = fields.Integer(load_default=3)


class Needed(Schema):
    name = fields.String(required=True)


class Thing(Schema):
    name = fields.String()
    size = fields.Integer()


def build(blueprint_class) -> Flask:
    app = Flask("probe")
    app.config.update(API_TITLE="probe", API_VERSION="1", OPENAPI_VERSION="3.0.3")
    api = flask_smorest.Api(app)
    blp = blueprint_class("things", __name__, url_prefix="/things")

    @blp.route("")
    class Things(Resource):
        @blp.arguments(Query(), location="query")
        @blp.response(200, Thing)
        def get(self, query):
            """A thing of the asked size"""
            return {"name": "box", "size": query["size"], "unlisted": True}

        @blp.response(201, Thing)
        def post(self):
            """Made, with a status and a header"""
            return {"name": "new"}, 202, {"X-Made": "yes"}

    @blp.route("/needed")
    class NeedsName(Resource):
        @blp.arguments(Needed(), location="query")
        @blp.response(200, Thing)
        def get(self, query):
            """A required query argument"""
            return {"name": query["name"]}

    @blp.route("/raw")
    class Raw(Resource):
        @blp.response(204)
        def delete(self):
            """A Response passed through, given a status"""
            return Response(), 204

    api.register_blueprint(blp)
    return app


@pytest.fixture(params=[Blueprint, flask_smorest.Blueprint], ids=["ovas", "flask-smorest"])
def client(request):
    return build(request.param).test_client()


def answer(response) -> tuple:
    return response.status_code, response.get_json(silent=True), response.headers.get("X-Made")


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("get", "/things", (200, {"name": "box", "size": 3}, None)),
        ("get", "/things?size=7", (200, {"name": "box", "size": 7}, None)),
        ("post", "/things", (202, {"name": "new"}, "yes")),
        ("get", "/things/needed?name=x", (200, {"name": "x"}, None)),
        ("delete", "/things/raw", (204, None, None)),
    ],
)
def test_answers_as_flask_smorest_does(client, method, path, expected):
    assert answer(getattr(client, method)(path)) == expected


@pytest.mark.parametrize("path", ["/things?size=big", "/things/needed"])
def test_invalid_or_missing_query_arguments_are_refused_by_webargs(client, path):
    response = client.get(path)
    assert response.status_code == 422
    assert response.get_json()["errors"]["query"]


def spec(blueprint_class) -> dict:
    app = build(blueprint_class)
    return app.extensions["flask-smorest"]["apis"][""]["ext_obj"].spec.to_dict()


def test_documents_exactly_as_flask_smorest_does():
    ours = spec(Blueprint)
    assert ours == spec(flask_smorest.Blueprint)
    operation = ours["paths"]["/things"]["get"]
    assert operation["parameters"][0]["name"] == "size"
    assert set(operation["responses"]) == {"200", "422", "default"}


def test_a_coroutine_view_keeps_flask_smorests_wrappers():
    blp = Blueprint("later", __name__)

    async def view(query):
        return query

    for decorate in (blp.response(200, Thing), blp.arguments(Query(), location="query")):
        wrapper = decorate(view)
        assert "Blueprint." not in wrapper.__code__.co_qualname
        assert wrapper._apidoc


def test_head_is_answered_by_get(client):
    response = client.head("/things?size=1")
    assert response.status_code == 200
    assert response.data == b""


def test_a_resource_with_a_coroutine_method_keeps_methodviews_dispatch():
    class Plain(Resource):
        def get(self):
            return "plain"

    class Mixed(Resource):
        def get(self):
            return "plain"

        async def post(self):
            return "later"

    class Head(Resource):
        async def head(self):
            return ""

    assert Plain._direct is True
    assert Mixed._direct is False
    assert Head._direct is False
    app = Flask("mixed")
    app.add_url_rule("/", view_func=Mixed.as_view("mixed"))
    assert app.test_client().get("/").get_data(as_text=True) == "plain"
