"""Per-request security: request ids, who is calling and whether they may, security headers,
the rate limit on starting sessions, and the audit trail."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import time
from contextlib import contextmanager

from flask import Flask, current_app, g, request
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from blueprints.edge import EdgeMiddleware, HostNames
from ovas import config, events
from ovas.auth import ADMIN, ANONYMOUS, STREAMER, VIEWER, Authenticator, Identity, NoAuth
from ovas.errors import ConfigurationError, OvasError, UserCapacityExceeded

log = logging.getLogger("ovas")
audit_log = logging.getLogger("ovas.audit")

# Reachable without credentials: probes, metrics, and the docs.
PUBLIC_ENDPOINTS = {"health.health", "health.ready", "metrics.metrics", "docs_assets.asset"}


def current_identity() -> Identity:
    return g.get("ovas_identity") or ANONYMOUS


def _rate_key() -> str:
    identity = g.get("ovas_identity")
    if identity is not None and identity is not ANONYMOUS:
        return f"user:{identity.username}"
    return f"addr:{request.remote_addr}"


class StartRateLimiter:
    """Counts session starts per caller in a moving window (the `limits` library, on which
    flask-limiter is built, used directly so no other request pays for it). Storage is
    `OVAS_RATELIMIT_STORAGE_URI`: `memory://` per process, or e.g. `redis://` shared by every
    worker."""

    def __init__(self, rule: str, storage_uri: str):
        self.rule = parse(rule) if rule else None
        self.strategy = MovingWindowRateLimiter(storage_from_string(storage_uri))

    def hit(self, key: str) -> None:
        if self.rule is None or self.strategy.hit(self.rule, "session-start", key):
            return
        reset = self.strategy.get_window_stats(self.rule, "session-start", key).reset_time
        raise RateLimited(
            f"Too many session starts: the limit is {self.rule}",
            retry_after=max(1, math.ceil(reset - time.time())),
        )


class RateLimited(UserCapacityExceeded):
    default_message = "Too many session starts; try again later"


def rate_limited() -> None:
    """Count one session start against the caller's rate limit; raise a 429 when spent."""
    current_app.extensions["ovas_rate_limiter"].hit(_rate_key())


def _required_role() -> str:
    blueprint = request.blueprint
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
    try:
        limiter = StartRateLimiter(
            app.config["START_RATE_LIMIT"], app.config["RATELIMIT_STORAGE_URI"]
        )
    except ValueError as exc:
        raise ConfigurationError(f"OVAS_START_RATE_LIMIT or its storage: {exc}") from None
    app.extensions["ovas_rate_limiter"] = limiter
    warned: list[bool] = []

    open_access = isinstance(authenticator, NoAuth)
    app.wsgi_app = EdgeMiddleware(
        app.wsgi_app,
        # The defaults of OVAS_CORS_ORIGINS: loopback origins with no authentication, where
        # any page could otherwise drive the API; every origin when credentials are needed.
        origins=app.config["CORS_ORIGINS"] or ([] if open_access else ["*"]),
        loopback_origins=open_access,
        refuse=open_access,
        hosts=HostNames(app.config["ALLOWED_HOSTS"] or _bound_names()) if open_access else None,
    )
    reaper = app.extensions["ovas"].reaper
    app.extensions["ovas"].sessions.events.subscribe(audit_event)

    @app.before_request
    def _identify() -> None:
        # Served by a WSGI server ovas has no hook in (see `ovas.app.serving`): the reaper
        # starts with the first request.
        reaper.start()
        if open_access:
            # Everyone is ANONYMOUS, which `current_identity()` answers when none is set.
            if not warned and not _loopback(request.environ.get("REMOTE_ADDR")):
                warned.append(True)
                log.warning(
                    "ovas is reached from %s with OVAS_AUTH=none: anyone who can reach it can "
                    "start and stop sessions; set OVAS_AUTH or put a gateway in front",
                    request.remote_addr,
                )
            return
        if _is_public() or request.endpoint is None:
            if request.endpoint == "health.ready":
                # Public, but an admin who says who they are is told more.
                with contextlib.suppress(OvasError):
                    g.ovas_identity = authenticator.identify(request.headers, request.remote_addr)
            return
        identity = authenticator.identify(request.headers, request.remote_addr)
        g.ovas_identity = identity
        identity.require(_required_role())


def _bound_names() -> list[str]:
    """The default of OVAS_ALLOWED_HOSTS: the bind host (loopback names are always served).
    Bound to all interfaces, ovas is served to the network by whatever name reaches it, so
    any Host is (as Jupyter Server's `allow_remote_access` defaults to true for a
    non-loopback `ip`)."""
    bound = config.bind_hosts()
    return ["*"] if any(h in config.ALL_INTERFACES for h in bound) else bound


def _loopback(address: str | None) -> bool:
    if address in ("127.0.0.1", "::1"):  # the usual case, without parsing
        return True
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


def audit_event(event: events.Event) -> None:
    """The audit lines of what happens to sessions with nobody asking: ends and removals."""
    if isinstance(event, events.SessionEnded):
        session = event.session
        fields = {
            "audit": "session.end",
            "user": "ovas",
            "session": session.id,
            "owner": session.username,
            "state": session.state.value,
            "reason": session.reason.value if session.reason else "",
        }
        _audit(fields, "ok", None, "")
    elif isinstance(event, events.SessionRemoved):
        _audit(
            {"audit": "session.remove", "user": "ovas", "session": event.session_id}, "ok", None, ""
        )


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
