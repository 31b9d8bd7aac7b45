"""Operator commands, two ways: `ovas ...` (the console command installed with ovas, usable
from any folder) and `flask ovas ...` (registered through the `flask.commands` entry point).
Both build the app from the `OVAS_*` environment, as the server does; `ovas backends` and
`ovas catalog check PATH` work even when the configured backend cannot be loaded."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime

import click
import yaml
from flask import current_app
from flask.cli import ScriptInfo, with_appcontext

from ovas import registry
from ovas.auth import ROLES, STREAMER, hash_key, new_key, username_problem
from ovas.errors import OvasError
from ovas.models import Session, SessionState
from ovas.services import CatalogService

COLUMNS = ("ID", "STATE", "REASON", "APP", "VERSION", "PROFILE", "USER", "AGE", "ROUTES")

_verbose_option = click.option(
    "-v", "--verbose", is_flag=True, help="Also print the server's log lines (at OVAS_LOG_LEVEL)"
)


def _print_what_was_asked(ctx: click.Context, verbose: bool) -> None:
    """A command prints what was asked: the log lines that building the app writes (the
    settings line first) are the server's, shown with `--verbose`; warnings and errors
    still reach the operator. Both `ovas` and `flask ovas` apply it, `serve` and `gateway`
    aside (a server's log is its output)."""
    if verbose or ctx.invoked_subcommand in ("serve", "gateway"):
        return
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    ctx.call_on_close(lambda: logging.disable(previous))


@click.group("ovas")
@_verbose_option
@click.pass_context
def ovas_cli(ctx: click.Context, verbose: bool) -> None:
    """Manage ovas: backends, the catalog, sessions."""
    _print_what_was_asked(ctx, verbose)


@ovas_cli.command("backends")
def backends() -> None:
    """List the backends installed in the `ovas.backends` entry-point group."""
    rows = registry.installed()
    if not rows:
        click.echo("No backends are installed.")
        return
    width = max(len(r.name) for r in rows)
    for row in rows:
        click.echo(f"{row.name:<{width}}  {row.target}  ({row.distribution})")


@ovas_cli.group("catalog")
def catalog_group() -> None:
    """Check the catalog."""


@catalog_group.command("check")
@click.argument("path", required=False, type=click.Path(file_okay=False))
def catalog_check(path: str | None) -> None:
    """Report every invalid catalog document, with its file and field, and every warm
    pool the catalog cannot serve. Exits 1 if any.

    PATH is a catalog folder; without it, the configured catalog (OVAS_CATALOG_PATH, or the
    backend's) is checked."""
    if path:
        from ovas.catalog_files import FileCatalog

        catalog = FileCatalog(path)
    else:
        catalog = _app_state().catalog
    try:
        catalog.check()
        apps = catalog.applications()
        problems = [*catalog.problems, *CatalogService(catalog).pool_problems()]
    except OvasError as exc:
        problems = getattr(exc, "problems", None) or [exc.message]
        if exc.where:
            problems = [f"{p} (at {exc.where})" for p in problems]
        apps = []
    for problem in problems:
        click.echo(f"error: {problem}", err=True)
    if problems:
        sys.exit(1)
    versions = sum(len(catalog.versions(a.id)) for a in apps)
    click.echo(
        f"ok: {len(apps)} applications, {versions} versions, {len(catalog.profiles())} profiles"
    )


@ovas_cli.group("sessions")
def sessions_group() -> None:
    """Inspect and clean up sessions."""


@sessions_group.command("reap")
def sessions_reap() -> None:
    """Apply the session clocks, remove ended and failed sessions whose retention has
    passed, and anything of ours that is no session; each removal is printed with why.
    Warm pools are left to the server's reaper, whose catalog decides what they keep."""
    try:
        removed = _app_state().sessions.reap_pass(tend_pools=False)
    except OvasError as exc:
        raise click.ClickException(exc.message) from None
    for name, why in removed.items():
        click.echo(f"removed {name}: {why}")
    click.echo(f"removed {len(removed)}")


@sessions_group.command("list")
@click.option("--state", type=click.Choice([s.value for s in SessionState]), help="Only these")
@click.option("--user", help="Only the sessions of this user")
@click.option("--app", "app_id", help="Only the sessions of this application id")
@click.option("--profile", help="Only the sessions of this profile id")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, as GET /stream's items")
def sessions_list(
    state: str | None, user: str | None, app_id: str | None, profile: str | None, as_json: bool
) -> None:
    """List sessions, oldest first: a table (AGE in seconds, minutes, hours or days; ROUTES
    as address:port/protocol once ready), or with --json the sessions as the API shows them."""
    service = _app_state().sessions
    try:
        found = service.find(state=state, username=user, app_id=app_id, profile=profile)
    except OvasError as exc:
        raise click.ClickException(exc.message) from None
    found.sort(key=lambda s: (s.created_time, s.id))
    if as_json:
        click.echo(json.dumps(_app_state().dump_sessions(found), indent=2))
        return
    if not found:
        click.echo("no sessions")
        return
    now = service.now()
    rows = [COLUMNS, *(_row(s, now) for s in found)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[-1]]).rstrip())


@sessions_group.command("logs")
@click.argument("session_id")
@click.option("--tail", default=100, show_default=True, help="How many of the last lines")
def sessions_logs(session_id: str, tail: int) -> None:
    """Print a session's container or pod log lines, while the session is kept (running,
    ended or failed)."""
    try:
        lines = _app_state().sessions.logs(session_id, tail)
    except OvasError as exc:
        raise click.ClickException(exc.message) from None
    for line in lines:
        click.echo(line)


@ovas_cli.group("apikey")
def apikey_group() -> None:
    """Make API keys for OVAS_AUTH=apikey."""


@apikey_group.command("new")
@click.option("--user", required=True, help="Who the key belongs to")
@click.option(
    "--role",
    "roles",
    multiple=True,
    type=click.Choice(ROLES),
    default=[STREAMER],
    show_default=True,
    help="A role of the key (repeatable)",
)
def apikey_new(user: str, roles: tuple[str, ...]) -> None:
    """Print a new key (shown once) and the entry to add to OVAS_APIKEYS_FILE. A user name
    the server would refuse (empty, a control character, over 253 characters) is refused
    here, before any entry is printed: one bad entry makes the whole file bad."""
    problem = username_problem(user.strip())
    if problem:
        shown = repr(user) if len(user) <= 60 else f"{user[:40]!r}..."
        raise click.BadParameter(f"{shown} {problem}", param_hint="'--user'")
    user = user.strip()
    key = new_key()
    entry = yaml.safe_dump([{"sha256": hash_key(key), "user": user, "roles": list(roles)}])
    click.echo(f"key: {key}", err=True)
    click.echo(entry, nl=False)


@with_appcontext
def _app_state():
    return current_app.extensions["ovas"]


def _row(session: Session, now: datetime) -> tuple[str, ...]:
    routes = ",".join(f"{r.source_port}/{r.protocol}" for r in session.routes)
    return (
        session.id,
        f"queued #{session.queue_position}" if session.queue_position else session.state.value,
        session.reason.value if session.reason else "-",
        session.app_id,
        session.version,
        session.profile,
        session.username or "-",
        age((now - session.created_time).total_seconds()),
        f"{session.host}:{routes}" if session.ready and session.host and routes else "-",
    )


def age(seconds: float) -> str:
    """A duration as the largest whole unit: `42s`, `5m`, `3h`, `2d` (negative is `0s`)."""
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# `ovas ...`: the same commands, plus `serve`, with the app made from the environment.


@click.group("ovas", commands=dict(ovas_cli.commands))
@_verbose_option
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Run and manage ovas. Settings come from the OVAS_* environment variables, as for the
    server (see the README's Settings)."""
    ctx.obj = ScriptInfo(create_app=_create_app, set_debug_flag=False)
    _print_what_was_asked(ctx, verbose)


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on")
@click.option("--port", default=8080, show_default=True, help="Port to listen on")
def serve(host: str, port: int) -> None:
    """Serve ovas with Flask's development server (gunicorn for production: see the README)."""
    import os

    # What `flask run --host` sets: create_app warns when OVAS_AUTH=none is exposed.
    os.environ["FLASK_RUN_HOST"] = host
    app = _create_app()
    from ovas.app import serving

    serving(app)  # clocks and pools run from now, not from the first request
    app.run(host=host, port=port, threaded=True)


@main.command("gateway")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on")
@click.option("--port", default=8443, show_default=True, help="Port to listen on")
def gateway(host: str, port: int) -> None:
    """Serve the signaling gateway: one port in front of every session's signaling socket,
    routing `<session-id>.<OVAS_GATEWAY_DOMAIN>` and `/sessions/<session-id>/...` (see the
    README's "Signaling gateway"). TLS with OVAS_GATEWAY_TLS_CERT and OVAS_GATEWAY_TLS_KEY,
    plain WebSocket without. Runs until SIGTERM or SIGINT."""
    import asyncio

    try:
        from ovas.gateway.server import serve as serve_gateway
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in ("aiohttp", "multidict", "yarl"):
            raise
        raise click.ClickException(
            f"the gateway needs {exc.name}, which is not installed: pip install 'ovas[gateway]'"
        ) from None
    app = _create_app()
    try:
        asyncio.run(serve_gateway(app, host, port))
    except OvasError as exc:
        raise click.ClickException(exc.message) from None
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _create_app():
    from ovas.app import create_app

    try:
        return create_app()
    except OvasError as exc:
        raise click.ClickException(exc.message) from None
