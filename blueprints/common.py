"""What every view shares: the services of this app, the caller's identity, error schemas."""

from __future__ import annotations

import inspect
from copy import deepcopy
from functools import wraps

import flask_smorest
from flask import current_app, request
from flask.views import MethodView
from flask_smorest.utils import (
    resolve_schema_instance,
    set_status_and_headers_in_response,
    unpack_tuple_response,
)
from marshmallow import Schema, ValidationError, fields
from werkzeug.wrappers import Response

from ovas.services import CatalogService, SessionService


def catalogs() -> CatalogService:
    return current_app.extensions["ovas"].catalogs


def sessions() -> SessionService:
    return current_app.extensions["ovas"].sessions


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's Blueprint, documenting views exactly as it does, with leaner wrappers
    around the views every client polls.

    - `response`: flask-smorest's wrapper looks up the app twice and keeps each dumped result
      for ETags, which ovas does not use; this one dumps with the schema and answers with the
      app's JSON provider, as flask-smorest does, and nothing else.
    - `arguments(location="query")`: a request with no query string (most of them) loads the
      schema's defaults without webargs' parser; any query goes through webargs as before.

    A coroutine view keeps flask-smorest's own wrappers."""

    def response(self, status_code, schema=None, **kwargs):
        documented = super().response(status_code, schema, **kwargs)
        dump = schema_dump(schema)

        def decorator(func):
            slow = documented(func)
            if inspect.iscoroutinefunction(func):
                return slow

            @wraps(func)
            def wrapper(*args, **kw):
                result, status, headers = unpack_tuple_response(func(*args, **kw))
                if isinstance(result, Response):
                    set_status_and_headers_in_response(result, status, headers)
                    return result
                response = current_app.json.response(dump(result))
                set_status_and_headers_in_response(response, status, headers)
                if status is None:
                    response.status_code = status_code
                return response

            wrapper._apidoc = slow._apidoc
            return wrapper

        return decorator

    def arguments(self, schema, *, location="json", **kwargs):
        documented = super().arguments(schema, location=location, **kwargs)
        if location != "query":
            return documented
        instance = resolve_schema_instance(schema)

        def decorator(func):
            parsed = documented(func)
            if inspect.iscoroutinefunction(func):
                return parsed

            @wraps(func)
            def wrapper(*args, **kw):
                if not request.query_string:
                    try:
                        defaults = instance.load({})
                    except ValidationError:
                        return parsed(*args, **kw)  # webargs answers it, as for any query
                    return func(*args, defaults, **kw)
                return parsed(*args, **kw)

            wrapper._apidoc = parsed._apidoc
            return wrapper

        return decorator


def schema_dump(schema):
    """`schema.dump`; the identity for a response without a schema, or documented by a
    reference or a dict (flask-smorest allows those for views that return a Response)."""
    instance = resolve_schema_instance(schema)
    if isinstance(instance, Schema):
        return instance.dump
    return lambda result: result


class Resource(MethodView):
    """A MethodView made once, not once per request (ovas's views keep no state), whose
    methods are called directly when none of them is a coroutine (flask-smorest's wrappers,
    ours included, are plain functions that run a coroutine view themselves)."""

    init_every_request = False
    _direct = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        views = [getattr(cls, name.lower(), None) for name in cls.methods or ()]
        cls._direct = not any(inspect.iscoroutinefunction(view) for view in views)

    def dispatch_request(self, **kwargs):
        if not self._direct:
            return super().dispatch_request(**kwargs)
        method = request.method
        view = getattr(self, method.lower(), None)
        if view is None and method == "HEAD":
            view = getattr(self, "get", None)
        assert view is not None, f"Unimplemented method {method!r}"
        return view(**kwargs)


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


def _noop():
    pass


def document(blp, status: int, **kwargs):
    """Document an alternative response like `blp.alt_response`, without adding a wrapper
    around the view: each wrapper layer costs every request a call through `current_app`,
    and the views that clients poll carry several."""
    doc = blp.alt_response(status, **kwargs)(_noop)._apidoc

    def decorate(view):
        merged = deepcopy(getattr(view, "_apidoc", {}))
        responses = merged.setdefault("response", {}).setdefault("responses", {})
        for code, entries in doc["response"]["responses"].items():
            responses.setdefault(code, []).extend(entries)
        for code in doc.get("success_status_codes", []):
            merged.setdefault("success_status_codes", []).append(code)
        view._apidoc = merged
        return view

    return decorate


def error_responses(blp, *statuses: int):
    """Document a view's error answers: `@error_responses(blp, 404, 503)`."""

    def decorate(view):
        # Any route may answer 401 or 403 once authentication is on.
        for status in (401, 403, *statuses):
            view = document(
                blp, status, schema=ErrorSchema, description=ERROR_DESCRIPTIONS[status]
            )(view)
        return view

    return decorate
