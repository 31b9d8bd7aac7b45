"""What every view shares: the services of this app, the caller's identity, error schemas."""

from __future__ import annotations

import flask_smorest
from flask import current_app
from flask.views import MethodView
from marshmallow import Schema, fields, missing
from webargs.core import is_json as is_json_mimetype
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import BadRequest

from ovas.services import CatalogService, SessionService


def catalogs() -> CatalogService:
    return current_app.extensions["ovas"].catalogs


def sessions() -> SessionService:
    return current_app.extensions["ovas"].sessions


class JsonBodies(FlaskParser):
    """webargs' Flask parser, reading JSON bodies as FastAPI (and so OVAS) does: a body with
    no Content-Type that parses as JSON is JSON (`curl -d` sends none); another Content-Type
    is a 422 naming it (on `["header", "Content-Type"]`). A body that cannot be parsed,
    nested too deep included, is a 400 (answered as a 422 by `blueprints.errors`), never an
    error of the parser."""

    def load_json(self, req, schema):
        data = req.get_data(cache=True)
        if not data:
            return missing
        if req.mimetype and not is_json_mimetype(req.mimetype):
            message = f"The body's Content-Type is {req.mimetype}; send application/json"
            flask_smorest.abort(422, messages={"headers": {"Content-Type": [message]}})
        try:
            return current_app.json.loads(data)
        except (ValueError, RecursionError, UnicodeDecodeError):
            raise BadRequest("The request body is not valid JSON") from None


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's Blueprint, with ovas's JSON bodies (`JsonBodies`)."""

    ARGUMENTS_PARSER = JsonBodies()


class Resource(MethodView):
    """A MethodView made once, not once per request: ovas's views keep no state."""

    init_every_request = False


class ErrorSchema(Schema):
    detail = fields.Raw(
        required=True,
        metadata={
            "description": "A human-readable message; for 422, a list of "
            '{"loc": [...], "msg": str, "type": str} naming each invalid field.'
        },
    )


ERROR_DESCRIPTIONS = {
    401: "Missing or invalid credentials",
    403: "The caller lacks the role this needs",
    404: "Not found",
    405: "Editing is disabled",
    409: "Already exists",
    410: "The session failed; the body is the session, with the reason in status.message",
    422: "The request is not valid",
    429: "Your limit of sessions, or of session starts per minute, is reached (see Retry-After)",
    503: "No capacity (see Retry-After), or the session backend cannot be reached",
}


def error_responses(blp, *statuses: int):
    """Document a view's error answers: `@error_responses(blp, 404, 503)`."""

    def decorate(view):
        # Any route may answer 401 or 403 once authentication is on.
        for status in (401, 403, *statuses):
            view = blp.alt_response(
                status, schema=ErrorSchema, description=ERROR_DESCRIPTIONS[status]
            )(view)
        return view

    return decorate
