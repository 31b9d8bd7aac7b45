"""The composition root: settings, extensions, blueprints, backend. The only module of the
core that knows Flask's extensions, the blueprints and the backend registry."""

from __future__ import annotations

import atexit
import ipaddress
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Flask
from flask_smorest import Api

from blueprints import (
    applications,
    docs_assets,
    errors,
    health,
    jsonprovider,
    metrics,
    security,
    streaming,
)
from blueprints.common import ErrorSchema
from blueprints.streaming.schemas import StreamResponseSchema
from ovas import config, logs, registry
from ovas.auth import NoAuth, build_authenticator
from ovas.backend import Catalog, SessionBackend
from ovas.errors import OvasError
from ovas.gateway.rules import GatewayRules
from ovas.models import Clocks, Session
from ovas.reaper import Reaper
from ovas.services import CatalogService, SessionService

API_VERSION = "1.12.0"
log = logging.getLogger("ovas")


@dataclass
class Ovas:
    """Per-app objects, kept in `app.extensions["ovas"]`."""

    backend: SessionBackend
    catalogs: CatalogService
    sessions: SessionService
    reaper: Reaper
    # Sessions as the API shows them (the `items` of GET /stream), for the command line.
    dump_sessions: Callable[[list[Session]], list[dict]]
    auth: str = "none"

    @property
    def catalog(self) -> Catalog:
        return self.catalogs.catalog

    def describe(self, insider: bool) -> dict[str, Any]:
        """The effective settings that matter, for the startup log and `/ready`: backend and
        engine, catalog (and its counts, when it can be read), authentication, capacities.
        With `insider` False, nothing that says where things are."""
        catalog: dict[str, Any] = dict(self.catalog.describe(insider))
        try:
            catalog.update(self.catalog.counts())
        except OvasError as exc:
            catalog["unreadable"] = exc.message_for(insider)
        return {
            "backend": self.backend.name or type(self.backend).__name__,
            **self.backend.describe(insider),
            "catalog": catalog,
            "auth": self.auth,
            "capacity": self.sessions.capacity,
            "user_capacity": self.sessions.user_capacity,
        }


class OvasApi(Api):
    """flask-smorest's Api, documenting errors in ovas's (FastAPI's) shape."""

    ERROR_SCHEMA = ErrorSchema


def _api_settings(prefix: str, title: str, docs_prefix: str) -> dict[str, Any]:
    return {
        f"{prefix}API_TITLE": title,
        f"{prefix}API_VERSION": API_VERSION,
        f"{prefix}OPENAPI_VERSION": "3.0.3",
        f"{prefix}OPENAPI_URL_PREFIX": docs_prefix,
        f"{prefix}OPENAPI_JSON_PATH": "openapi.json",
        f"{prefix}OPENAPI_SWAGGER_UI_PATH": "docs",
        f"{prefix}OPENAPI_SWAGGER_UI_URL": docs_assets.URL_PREFIX + "/",
    }


def _exposed() -> bool:
    """Whether the configured bind address (`flask run --host`, gunicorn's `OVAS_BIND`)
    reaches beyond this machine."""
    return any(h != "localhost" and not _is_loopback(h) for h in config.bind_hosts())


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _workers() -> int:
    """How many worker processes serve this app: gunicorn's `workers` when under gunicorn
    (config/gunicorn.conf.py says how many in `OVAS_WORKERS`), else 1."""
    if not os.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn/"):
        return 1
    try:
        return int(os.environ.get("OVAS_WORKERS") or 1)
    except ValueError:
        return 1


def _log_start(state: Ovas) -> None:
    facts = state.describe(insider=True)
    log.info("ovas %s: %s", API_VERSION, " ".join(f"{k}={v}" for k, v in facts.items()))
    if not state.backend.shared and _workers() > 1:
        log.warning(
            "backend %s keeps its sessions in each process's memory, and %d gunicorn workers "
            "serve it: a session started through one worker is unknown to the others (404); "
            "serve it with OVAS_WORKERS=1",
            facts["backend"],
            _workers(),
        )


def serving(app: Flask) -> None:
    """The process is about to serve `app`: start what runs without requests (the reaper).
    Called by each gunicorn worker once it has loaded the app (`config/gunicorn.conf.py`),
    by `ovas serve`, and by `create_app` under `flask run`. Other WSGI servers start it on
    the first request. Idempotent; does nothing for an app that is not ovas's."""
    state = getattr(app, "extensions", {}).get("ovas")
    if isinstance(state, Ovas):
        state.reaper.start()


def _under_flask_run() -> bool:
    """True when `flask run` is loading the app to serve it in this process: not another
    `flask` command, nor the reloader's watching process (which serves nothing)."""
    import click
    from flask.cli import get_debug_flag

    context = click.get_current_context(silent=True)
    if context is None or context.command.name != "run":
        return False
    if os.environ.get("FLASK_RUN_FROM_CLI") != "true":
        return False
    reload = context.params.get("reload")
    if reload is None:
        reload = get_debug_flag()
    return not reload or os.environ.get("WERKZEUG_RUN_MAIN") == "true"


def create_app(
    test_config: Mapping[str, Any] | None = None, *, backend: SessionBackend | None = None
) -> Flask:
    """Build the ovas app: defaults, then `OVAS_*` variables, then `test_config`; then the
    extensions, the two services on both their path forms, and the backend (the given one,
    or the one `BACKEND` names). Raises `ConfigurationError` for bad settings."""
    app = Flask("ovas", static_folder=None)
    app.json = jsonprovider.OrjsonProvider(app)
    app.config.update(config.DEFAULTS)
    app.config.from_prefixed_env("OVAS")
    config.apply_environment(app.config)
    if test_config:
        app.config.update(test_config)
    config.normalise(app.config)
    app.url_map.strict_slashes = False
    logs.configure(app.config["LOG_FORMAT"], app.config["LOG_LEVEL"])
    authenticator = build_authenticator(app.config)
    if isinstance(authenticator, NoAuth) and _exposed():
        log.warning(
            "OVAS_AUTH=none: every caller may start and stop sessions, as with NVIDIA's OVAS; "
            "expose ovas beyond this machine only behind a gateway, or set OVAS_AUTH"
        )

    if backend is None:
        backend = registry.load(app.config["BACKEND"]).from_settings(app.config)
        # Lets background work (a Docker pull and start) finish or hand over on exit.
        atexit.register(backend.close)
    catalogs = CatalogService(backend.catalog, editing_enabled=app.config["EDITING_ENABLED"])
    sessions = SessionService(
        backend,
        catalogs,
        capacity=app.config["SESSION_CAPACITY"],
        user_capacity=app.config["USER_SESSION_CAPACITY"],
        start_timeout=app.config["START_TIMEOUT"],
        stage_roots=app.config["USD_PATH_ROOTS"],
        clocks=Clocks(
            connect_timeout=app.config["SESSION_CONNECT_TIMEOUT"],
            idle_timeout=app.config["SESSION_IDLE_TIMEOUT"],
            max_lifetime=app.config["SESSION_MAX_LIFETIME"],
        ),
        retention=app.config["SESSION_RETENTION"],
        pool_max_age=app.config["POOL_MAX_AGE"],
        queue_size=app.config["QUEUE_SIZE"],
        abandon_timeout=app.config["QUEUE_ABANDON_TIMEOUT"],
        idempotency_ttl=app.config["IDEMPOTENCY_TTL"],
        gateway=GatewayRules.from_settings(app.config),
        # One clock for the backend and the rules: a test injects it into the backend.
        now=backend.now,
    )
    reaper = Reaper(sessions.reap_pass, app.config["REAP_INTERVAL"])
    auth = str(app.config["AUTH"]).lower()
    dump = StreamResponseSchema(many=True).dump
    state = Ovas(backend, catalogs, sessions, reaper, dump, auth)
    app.extensions["ovas"] = state
    _log_start(state)

    app.config.update(_api_settings("APPLICATIONS_", "Application & Profile", "/applications"))
    app.config.update(_api_settings("STREAMING_", "Streaming Session", "/streaming"))
    app_api = OvasApi(app, config_prefix="APPLICATIONS_")
    stream_api = OvasApi(app, config_prefix="STREAMING_")
    # The forms clients build: `/cfg/apps...` and `/streaming/stream...`; the edge middleware
    # serves `/applications/cfg/...` and `/stream...` as these.
    app_api.register_blueprint(applications.blp)
    stream_api.register_blueprint(streaming.blp, url_prefix="/streaming/stream")
    app.register_blueprint(health.blp)
    app.register_blueprint(docs_assets.blp)
    security.init_app(app, authenticator)
    app.extensions["ovas_authenticator"] = authenticator
    errors.register(app)
    metrics.init_app(app)
    if _under_flask_run():
        serving(app)
    return app
