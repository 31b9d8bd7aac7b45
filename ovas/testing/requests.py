"""Build `SessionRequest`s and session services for tests without a web request."""

from __future__ import annotations

import time
from dataclasses import replace

from ovas.backend import Catalog, SessionBackend
from ovas.kitspec import parse_kit
from ovas.models import Clocks, Session, SessionRequest, SessionState, WarmPool
from ovas.services import CatalogService, SessionService

STANDIN_READY_DELAY = "STANDIN_READY_DELAY"
STANDIN_NEVER_READY = "STANDIN_NEVER_READY"
STANDIN_EXIT_CODE = "STANDIN_EXIT_CODE"
STANDIN_EXIT_AFTER = "STANDIN_EXIT_AFTER"
STANDIN_QUIT_ON_LEAVE = "STANDIN_QUIT_ON_LEAVE"


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
    clocks: Clocks | None = None,
    now=None,
    pool: WarmPool | None = None,
) -> SessionRequest:
    """A request for `app_id` (default: the first application), `version` (default latest)
    and `profile_id` (default: the first profile supporting them), as `POST /stream` builds
    it, with `env` added to the container's environment. `now` is the creation time; with
    `pool`, the start of one of that warm pool's sessions (its size is `pool_size`)."""
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
        clocks=clocks,
    )
    request = sessions.build_request(
        app_id,
        profile_id,
        resolved,
        username="" if pool else username,
        usd_stage_uri=usd_stage_uri,
        now=now,
        pool=pool,
    )
    return with_env(request, env) if env else request


def service_for(backend: SessionBackend, **options) -> SessionService:
    """A session service over `backend`, its catalog and its clock, as `create_app` makes one
    (`options`: retention, clocks, capacity...)."""
    return SessionService(backend, CatalogService(backend.catalog), now=backend.now, **options)


def wait_for(
    sessions: SessionService | SessionBackend,
    session_id: str,
    states: SessionState | set[SessionState],
    timeout: float = 30.0,
    interval: float = 0.1,
) -> Session:
    """Poll the session (through `sessions`, or a service over a backend) until it is in one
    of `states`, or `timeout` seconds pass; returns the session as last seen (the caller
    asserts on its state). Polling writes what the lifecycle asks, as a client's polls do."""
    if isinstance(sessions, SessionBackend):
        sessions = service_for(sessions)
    wanted = {states} if isinstance(states, SessionState) else set(states)
    deadline = time.monotonic() + timeout
    while True:
        session = sessions.get(session_id)
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
