"""`/health` (the process answers) and `/ready` (the backend and the catalog can be reached,
and the effective settings that matter)."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from blueprints.errors import is_insider
from ovas.errors import OvasError

blp = Blueprint("health", __name__)


@blp.get("/health")
def health():
    return jsonify(status="ok")


@blp.get("/ready")
def ready():
    state = current_app.extensions["ovas"]
    checks = {}
    for name, check in (("backend", state.backend.check), ("catalog", state.catalog.check)):
        try:
            check()
            checks[name] = "ok"
        except OvasError as exc:
            checks[name] = exc.message_for(is_insider())
            if exc.where:
                current_app.logger.warning("not ready: %s", exc.message_for(True))
        except Exception:
            current_app.logger.exception("readiness check of the %s failed", name)
            checks[name] = f"the {name} check failed unexpectedly"
    authenticator = current_app.extensions.get("ovas_authenticator")
    if authenticator is not None and authenticator.problem:
        # Still serving (with the last good configuration), so not unready: said, as catalog
        # problems are.
        checks["auth"] = authenticator.problem
    problems = [
        f"{name}: {result}" for name, result in checks.items() if result != "ok" and name != "auth"
    ]
    # Where things are (engine, folders, devices) only for an authenticated admin.
    settings = state.describe(is_insider())
    if problems:
        detail = "; ".join(problems)
        return jsonify(status="unavailable", detail=detail, checks=checks, settings=settings), 503
    # Invalid catalog documents are skipped, and warm pools the catalog cannot serve are
    # emptied; both are shown here, but do not make ovas unready.
    invalid = state.catalog.problems
    try:
        invalid = [*invalid, *state.catalogs.pool_problems()]
    except OvasError as exc:
        current_app.logger.warning("reading the warm pools for /ready: %s", exc.message)
    return jsonify(status="ok", checks=checks, catalog_problems=invalid, settings=settings)
