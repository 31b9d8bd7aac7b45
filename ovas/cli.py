"""`flask ovas ...`: operator commands (registered through the `flask.commands` entry point,
so `flask ovas backends` works even when the configured backend cannot be loaded)."""

from __future__ import annotations

import sys

import click
import yaml
from flask import current_app
from flask.cli import with_appcontext

from ovas import registry
from ovas.auth import ROLES, STREAMER, hash_key, new_key
from ovas.errors import OvasError


@click.group("ovas")
def ovas_cli() -> None:
    """Manage ovas: backends, the catalog, sessions."""


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
    """Report every invalid catalog document, with its file and field. Exits 1 if any.

    PATH is a catalog folder; without it, the running configuration's catalog is checked."""
    if path:
        from ovas.catalog_files import FileCatalog

        catalog = FileCatalog(path)
    else:
        catalog = _app_state().catalog
    try:
        catalog.check()
        apps = catalog.applications()
        problems = catalog.problems
    except OvasError as exc:
        problems = getattr(exc, "problems", None) or [exc.message]
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
    """Remove failed and timed-out sessions, and anything of ours that is no session."""
    try:
        removed = _app_state().reaper.run_once()
    except OvasError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"removed {len(removed)}" + "".join(f"\n  {name}" for name in removed))


@sessions_group.command("list")
def sessions_list() -> None:
    """List every session with its state."""
    try:
        items = _app_state().sessions.all()
    except OvasError as exc:
        raise click.ClickException(exc.message) from None
    for s in sorted(items, key=lambda s: s.created_time):
        click.echo(f"{s.id}  {s.state.value:<11} {s.app_id} {s.version} {s.profile} {s.username}")


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
    """Print a new key (shown once) and the entry to add to OVAS_APIKEYS_FILE."""
    key = new_key()
    entry = yaml.safe_dump([{"sha256": hash_key(key), "user": user, "roles": list(roles)}])
    click.echo(f"key: {key}", err=True)
    click.echo(entry, nl=False)


@with_appcontext
def _app_state():
    return current_app.extensions["ovas"]
