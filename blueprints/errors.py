"""One error shape for every answer, as FastAPI (and so OVAS) gives it: `{"detail": ...}`;
a validation failure is a 422 whose `detail` lists `{"loc", "msg", "type"}`."""

from __future__ import annotations

import logging

from flask import Flask, g, jsonify
from werkzeug.exceptions import BadRequest, HTTPException

from ovas.auth import ANONYMOUS
from ovas.errors import InvalidInput, OvasError

log = logging.getLogger("ovas")

_LOCATIONS = {"json": "body", "query": "query", "view_args": "path", "headers": "header"}
_MISSING = "Missing data for required field."


def validation_detail(messages: dict) -> list[dict]:
    """webargs' nested error messages -> FastAPI's list of {loc, msg, type}."""
    detail: list[dict] = []

    def walk(node, loc: list) -> None:
        if isinstance(node, dict):
            for key, child in node.items():
                walk(child, loc if key == "_schema" else [*loc, key])
        elif isinstance(node, list | tuple) and all(isinstance(m, str) for m in node):
            for msg in node:
                kind = "missing" if msg == _MISSING else "value_error"
                detail.append({"loc": loc, "msg": msg, "type": kind})
        elif isinstance(node, list | tuple):
            for child in node:
                walk(child, loc)
        else:
            detail.append({"loc": loc, "msg": str(node), "type": "value_error"})

    for location, errors in messages.items():
        walk(errors, [_LOCATIONS.get(location, location)])
    return detail


def is_insider() -> bool:
    """Whether this request's caller may read where ovas's engines are: an authenticated
    admin (with `OVAS_AUTH=none` every caller is anonymous, and is not one)."""
    identity = g.get("ovas_identity")
    return identity is not None and identity is not ANONYMOUS and identity.is_admin


def _json(status: int, detail, headers=None):
    response = jsonify(detail=detail)
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def register(app: Flask) -> None:
    @app.errorhandler(OvasError)
    def ovas_error(exc: OvasError):
        g.ovas_error = exc  # for metrics: which error a request was answered with
        if exc.http_status >= 500 and (exc.detail or exc.where):
            log.warning("%s: %s", exc.message_for(True), exc.detail or "")
        if isinstance(exc, InvalidInput):
            where = exc.location
            loc = [where, *exc.field.split(".")] if exc.field and where == "body" else [where]
            if exc.field and where != "body":
                loc.append(exc.field)
            return _json(422, [{"loc": loc, "msg": exc.message, "type": "value_error"}])
        return _json(exc.http_status, exc.message_for(is_insider()), exc.headers)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        messages = (getattr(exc, "data", None) or {}).get("messages")
        if exc.code == 422 and isinstance(messages, dict):
            return _json(422, validation_detail(messages))
        if isinstance(exc, BadRequest) or exc.code == 400:
            # Clients treat only statuses above 400 as failures: a body that cannot be read
            # is a validation failure like any other.
            msg = "The request body is not valid JSON"
            return _json(422, [{"loc": ["body"], "msg": msg, "type": "json_invalid"}])
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
        return _json(exc.code or 500, exc.description or exc.name, headers)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unhandled error")
        return _json(500, "Internal server error")
