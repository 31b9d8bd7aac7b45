"""Build `SessionRequest`s for tests without a web request."""

from __future__ import annotations

import time
from dataclasses import replace

from ovas.backend import Backend, Catalog
from ovas.kitspec import parse_kit
from ovas.models import Session, SessionRequest, SessionState
from ovas.services import CatalogService, SessionService

STANDIN_READY_DELAY = "STANDIN_READY_DELAY"
STANDIN_NEVER_READY = "STANDIN_NEVER_READY"
STANDIN_EXIT_CODE = "STANDIN_EXIT_CODE"


def make_request(
    catalog: Catalog,
    *,
    app_id: str | None = None,
    version: str | None = None,
    profile_id: str | None = None,
    username: str = "tester",
    usd_stage_uri: str | None = None,
    env: dict[str, str] | None = None,
    start_timeout: float = 120,
    capacity: int = 0,
    user_capacity: int = 0,
) -> SessionRequest:
    """A request for `app_id` (default: the first application), `version` (default latest)
    and `profile_id` (default: the first profile supporting them), as `POST /stream` builds
    it, with `env` added to the container's environment."""
    catalogs = CatalogService(catalog)
    if app_id is None:
        app_id = catalogs.list_applications()[0].id
    resolved = catalogs.resolve_version(app_id, version).version
    if profile_id is None:
        profile_id = catalogs.list_profiles(app_id, resolved)[0].id
    sessions = SessionService(
        backend=None,  # type: ignore[arg-type]
        catalogs=catalogs,
        capacity=capacity,
        user_capacity=user_capacity,
        start_timeout=start_timeout,
    )
    request = sessions.build_request(
        app_id, profile_id, resolved, username=username, usd_stage_uri=usd_stage_uri
    )
    return with_env(request, env) if env else request


def wait_for(
    backend: Backend,
    session_id: str,
    states: SessionState | set[SessionState],
    timeout: float = 30.0,
    interval: float = 0.1,
) -> Session:
    """Poll `backend.get` until the session is in one of `states`, or `timeout` seconds pass;
    returns the session as last seen (the caller asserts on its state)."""
    wanted = {states} if isinstance(states, SessionState) else set(states)
    deadline = time.monotonic() + timeout
    while True:
        session = backend.get(session_id)
        if session.state in wanted or time.monotonic() > deadline:
            return session
        time.sleep(interval)


def with_env(request: SessionRequest, env: dict[str, str]) -> SessionRequest:
    """The same request with `env` set in `streamingKit.env` (and the parsed kit)."""
    values = dict(request.values)
    kit = dict(values.get("streamingKit") or {})
    entries = [e for e in kit.get("env") or [] if e.get("name") not in env]
    entries += [{"name": k, "value": v} for k, v in env.items()]
    kit["env"] = entries
    values["streamingKit"] = kit
    return replace(request, values=values, kit=parse_kit(values))
