"""Per-request security: request ids, who is calling and whether they may, security headers,
the rate limit on starting sessions, and the audit trail."""

from __future__ import annotations

import ipaddress
import logging
import re
import uuid
from contextlib import contextmanager, nullcontext

from flask import Flask, current_app, g, request
from flask_limiter import Limiter

from ovas.auth import ADMIN, ANONYMOUS, STREAMER, VIEWER, Authenticator, Identity, NoAuth
from ovas.errors import OvasError

log = logging.getLogger("ovas")
audit_log = logging.getLogger("ovas.audit")

# Reachable without credentials: probes, metrics, and the docs.
PUBLIC_ENDPOINTS = {"health.health", "health.ready", "metrics.metrics", "docs_assets.asset"}
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
    # The docs pages run Swagger UI from our own files with one inline bootstrap script.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self' 'unsafe-inline'; "
        "style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'"
    ),
}


def current_identity() -> Identity:
    return g.get("ovas_identity") or ANONYMOUS


def _rate_key() -> str:
    identity = g.get("ovas_identity")
    if identity is not None and identity is not ANONYMOUS:
        return f"user:{identity.username}"
    return f"addr:{request.remote_addr}"


def rate_limited():
    """A context that counts one session start against the caller's rate limit and raises a
    429 when it is spent (`OVAS_START_RATE_LIMIT`; empty turns it off)."""
    rule = current_app.config["START_RATE_LIMIT"]
    if not rule:
        return nullcontext()
    return current_app.extensions["ovas_limiter"].limit(rule, key_func=_rate_key)


def _required_role() -> str:
    blueprint = (request.blueprint or "").split("-")[0]
    if request.method in ("GET", "HEAD"):
        return VIEWER
    if blueprint == "applications":
        return ADMIN
    return STREAMER


def _is_public() -> bool:
    endpoint = request.endpoint or ""
    if request.method == "OPTIONS" or endpoint in PUBLIC_ENDPOINTS:
        return True
    # flask-smorest's OpenAPI document and Swagger UI pages.
    return endpoint.endswith(("openapi_json", "openapi_swagger_ui"))


def init_app(app: Flask, authenticator: Authenticator) -> None:
    # One limiter per app: its storage (memory, or OVAS_RATELIMIT_STORAGE_URI such as redis://
    # shared by every worker) belongs to this app alone.
    app.extensions["ovas_limiter"] = Limiter(
        key_func=_rate_key, app=app, default_limits=[], headers_enabled=True
    )
    warned: list[bool] = []

    @app.before_request
    def _identify() -> None:
        given = request.headers.get("X-Request-ID", "")
        g.request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        if isinstance(authenticator, NoAuth):
            g.ovas_identity = ANONYMOUS
            if not warned and not _loopback(request.remote_addr):
                warned.append(True)
                log.warning(
                    "ovas is reached from %s with OVAS_AUTH=none: anyone who can reach it can "
                    "start and stop sessions; set OVAS_AUTH or put a gateway in front",
                    request.remote_addr,
                )
            return
        if _is_public() or request.endpoint is None:
            return
        identity = authenticator.identify(request.headers, request.remote_addr)
        g.ovas_identity = identity
        identity.require(_required_role())

    @app.after_request
    def _headers(response):
        response.headers["X-Request-ID"] = g.get("request_id", "")
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if request.blueprint != "docs_assets":
            response.headers.setdefault("Cache-Control", "no-store")
        return response


def _loopback(address: str | None) -> bool:
    try:
        return ipaddress.ip_address(address or "").is_loopback
    except ValueError:
        return False


@contextmanager
def audited(action: str, **target):
    """Log one audit line for `action` on `target`: who, what, when (the line's time), outcome.
    The caller may add to the yielded fields (a new session's id, say)."""
    fields = {"audit": action, "user": current_identity().username, **target}
    try:
        yield fields
    except OvasError as exc:
        _audit(fields, "error", exc.http_status, exc.message)
        raise
    except Exception:
        _audit(fields, "error", 500, "unexpected error")
        raise
    _audit(fields, "ok", None, "")


def _audit(fields: dict, outcome: str, status: int | None, reason: str) -> None:
    described = " ".join(f"{k}={v}" for k, v in fields.items() if k not in ("audit", "user"))
    extra = {**fields, "outcome": outcome}
    if status is not None:
        extra.update(status=status, reason=reason)
    audit_log.info(
        "%s by %s: %s%s %s",
        fields["audit"],
        fields["user"],
        outcome,
        f" ({status}: {reason})" if status else "",
        described,
        extra=extra,
    )
