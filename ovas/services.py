"""Rules that hold for every backend: version resolution, profile matching, request building,
capacity settings, session listing. Views call these; these call the `Backend` and `Catalog`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from ovas.auth import Identity
from ovas.backend import Backend, Catalog, utcnow
from ovas.errors import (
    EditingDisabled,
    InvalidInput,
    OvasError,
    ProfileNotFound,
    SessionNotFound,
    VersionNotFound,
)
from ovas.events import (
    Events,
    SessionEnded,
    SessionReady,
    SessionRemoved,
    SessionStarted,
    SessionStopped,
    StartRefused,
    StopRefused,
)
from ovas.kitspec import parse_kit, render_values
from ovas.lifecycle import Mark, Observed, clocks_for, decide
from ovas.models import (
    Application,
    Clocks,
    Profile,
    Session,
    SessionQuery,
    SessionRequest,
    Version,
)
from ovas.names import (
    APP_ID_PATTERN,
    VERSION_IMAGE_FIELDS,
    image_problem,
    is_semver,
    is_session_id,
    new_session_id,
    semver_key,
)

log = logging.getLogger("ovas.sessions")
LATEST = "latest"
STAGE_URI_SCHEMES = ("omniverse://", "http://", "https://", "s3://")
MAX_STAGE_URI = 2048


def sort_versions(versions: list[Version]) -> list[Version]:
    """Newest semver first."""
    return sorted(versions, key=lambda v: semver_key(v.version), reverse=True)


def glob_match(pattern: str, value: str) -> bool:
    """Case-sensitive shell glob (`*`, `2.*`, `usd-*`)."""
    return fnmatch.fnmatchcase(value, pattern)


def profile_supports(profile: Profile, app_id: str, version: str) -> bool:
    """True when some `supportedApplications` entry matches both. `*` as app_id or version
    stands for any (it matches every entry's glob)."""
    for entry in profile.supported_applications:
        if app_id != "*" and not glob_match(entry.name, app_id):
            continue
        if version == "*" or any(glob_match(v, version) for v in entry.versions):
            return True
    return False


def check_stage_uri(uri: str, roots: tuple[str, ...] = ()) -> None:
    """Accept `omniverse://`, `http(s)://` and `s3://` URIs, and absolute paths under one of
    `roots`; raise `InvalidInput` otherwise. The value only ever reaches `USD_PATH`."""
    field = "arguments.usd_stage_uri"
    if len(uri) > MAX_STAGE_URI:
        raise InvalidInput(f"usd_stage_uri is longer than {MAX_STAGE_URI} characters", field=field)
    if any(ord(c) < 32 or c.isspace() or ord(c) == 127 for c in uri):
        raise InvalidInput("usd_stage_uri must not hold spaces or control characters", field=field)
    if uri.lower().startswith(STAGE_URI_SCHEMES) and len(uri.split("://", 1)[1]) > 0:
        return
    if uri.startswith("/"):
        path = posixpath.normpath(uri)
        for root in roots:
            root = posixpath.normpath(root)
            if path == root or path.startswith(root.rstrip("/") + "/"):
                return
        allowed = ", ".join(roots) or "none configured"
        raise InvalidInput(
            f"usd_stage_uri paths must lie under an allowed folder ({allowed})", field=field
        )
    raise InvalidInput(
        "usd_stage_uri must be an omniverse://, http(s):// or s3:// URI, or an allowed path",
        field=field,
    )


def parse_tags(raw: list[str]) -> list[str]:
    """`?tags=a&tags=b,c` -> ["a", "b", "c"]."""
    return [t.strip() for item in raw for t in item.split(",") if t.strip()]


@dataclass
class Page:
    offset: int
    limit: int
    items: list

    @property
    def count(self) -> int:
        return len(self.items)


class CatalogService:
    """The Application & Profile service's rules."""

    def __init__(self, catalog: Catalog, *, editing_enabled: bool = False):
        self.catalog = catalog
        self.editing_enabled = editing_enabled

    # Reads

    def list_applications(self, tags: list[str] | None = None) -> list[Application]:
        wanted = set(parse_tags(tags or []))
        apps = sorted(self.catalog.applications(), key=lambda a: a.id)
        return [a for a in apps if wanted <= set(a.tags)]

    def get_application(self, app_id: str) -> Application:
        return self.catalog.application(app_id)

    def list_versions(self, app_id: str) -> list[Version]:
        return sort_versions(self.catalog.versions(app_id))

    def get_version(self, app_id: str, version: str) -> Version:
        return self.catalog.version(app_id, version)

    def resolve_version(self, app_id: str, version: str | None) -> Version:
        """`None`, empty or "latest" -> the highest semver; else that version."""
        if not version or version == LATEST:
            versions = self.list_versions(app_id)
            if not versions:
                raise VersionNotFound(app_id, LATEST)
            return versions[0]
        return self.get_version(app_id, version)

    def list_profiles(self, app_id: str, version: str) -> list[Profile]:
        if app_id != "*":
            self.get_application(app_id)
            if version != "*":
                self.get_version(app_id, version)
        elif version != "*" and not any(
            v.version == version
            for app in self.catalog.applications()
            for v in self.catalog.versions(app.id)
        ):
            raise VersionNotFound("*", version)
        profiles = sorted(self.catalog.profiles(), key=lambda p: p.id)
        return [p for p in profiles if profile_supports(p, app_id, version)]

    def get_profile(self, app_id: str, version: str, profile_id: str) -> Profile:
        for profile in self.list_profiles(app_id, version):
            if profile.id == profile_id:
                return profile
        raise ProfileNotFound(profile_id)

    # Editing

    def _editable(self) -> Catalog:
        if not self.editing_enabled:
            raise EditingDisabled()
        return self.catalog

    def create_application(self, app: Application) -> Application:
        if not APP_ID_PATTERN.match(app.id):
            raise InvalidInput(
                "id must start with a letter and hold only letters, digits and hyphens "
                "(at most 63 characters)",
                field="id",
            )
        self._editable().create_application(app)
        return app

    def update_application(self, app_id: str, changes: dict) -> Application:
        catalog = self._editable()
        if "id" in changes and changes["id"] != app_id:
            raise InvalidInput("id cannot be changed", field="id")
        current = catalog.application(app_id)
        fields = {k: changes[k] for k in ("name", "description", "tags") if k in changes}
        if "tags" in fields:
            fields["tags"] = tuple(fields["tags"])
        updated = replace(current, **fields)
        catalog.update_application(updated)
        return updated

    def delete_application(self, app_id: str) -> None:
        self._editable().delete_application(app_id)

    def create_version(self, version: Version) -> Version:
        catalog = self._editable()
        if not is_semver(version.version):
            raise InvalidInput(f"'{version.version}' is not a semantic version", field="version")
        if problem := image_problem(version.container, version.container_version):
            raise InvalidInput(problem[1], field=VERSION_IMAGE_FIELDS[problem[0]])
        catalog.application(version.app_id)
        catalog.create_version(version)
        return version

    def delete_version(self, app_id: str, version: str) -> None:
        self._editable().delete_version(app_id, version)


class SessionService:
    """The Streaming Session service's rules, over one backend: requests are checked against
    the catalog before the backend is asked; what the backend observes is decided by
    `ovas.lifecycle`, and what that decides is written back through the backend (marks,
    outcomes) and told to `events` (metrics, audit, logs listen there).

    `now` is the clock (an aware UTC datetime); tests inject one and move it."""

    def __init__(
        self,
        backend: Backend,
        catalogs: CatalogService,
        *,
        capacity: int = 0,
        user_capacity: int = 0,
        start_timeout: float = 900,
        stage_roots: tuple[str, ...] = (),
        clocks: Clocks | None = None,
        retention: float = 3600,
        now: Callable[[], datetime] = utcnow,
        events: Events | None = None,
    ):
        self.stage_roots = tuple(stage_roots)
        self.backend = backend
        self.catalogs = catalogs
        self.capacity = capacity
        self.user_capacity = user_capacity
        self.start_timeout = start_timeout
        self.clocks = clocks or Clocks()
        self.retention = timedelta(seconds=retention)
        self.now = now
        self.events = events or Events()

    def build_request(
        self,
        app_id: str,
        profile_id: str,
        version: str | None = None,
        *,
        username: str = "",
        usd_stage_uri: str | None = None,
        now: datetime | None = None,
    ) -> SessionRequest:
        """Check the request against the catalog (404 for anything unknown or unsupported)
        and render what the backend needs. Asks no backend."""
        if usd_stage_uri:
            check_stage_uri(usd_stage_uri, self.stage_roots)
        app = self.catalogs.get_application(app_id)
        resolved = self.catalogs.resolve_version(app_id, version)
        profile = self.catalogs.catalog.profile(profile_id)
        if not profile_supports(profile, app.id, resolved.version):
            raise ProfileNotFound(
                profile_id,
                f"Profile '{profile_id}' does not support {app.id} {resolved.version}",
            )
        session_id = new_session_id()
        values = render_values(profile, app, resolved, session_id, usd_stage_uri)
        try:
            kit = parse_kit(values)
            clocks = clocks_for(self.clocks, profile.annotations)
        except ValueError as exc:
            raise InvalidInput(
                f"Profile '{profile_id}' cannot run {app.id} {resolved.version}: {exc}",
                field="profile",
            ) from None
        created = now or self.now()
        return SessionRequest(
            id=session_id,
            app=app,
            version=resolved,
            profile=profile,
            username=username,
            created_time=created,
            deadline=created + timedelta(seconds=self.start_timeout),
            values=values,
            kit=kit,
            usd_stage_uri=usd_stage_uri or None,
            capacity=self.capacity,
            user_capacity=self.user_capacity,
            clocks=clocks,
        )

    def start(self, app_id: str, profile_id: str, version: str | None = None, **kw) -> Session:
        """Start a session; returns it as first decided (normally CREATING). Raises what
        `build_request` and `Backend.start` raise; every start, admitted or refused, is
        told to `events`."""
        try:
            request = self.build_request(app_id, profile_id, version, **kw)
            session = self._settle(self.backend.start(request))
        except OvasError as exc:
            self.events.emit(StartRefused(exc))
            raise
        self.events.emit(SessionStarted(session))
        return session

    def get(self, session_id: str, caller: Identity | None = None) -> Session:
        """The session in whatever state it is. Raises `SessionNotFound`, also for another
        user's session when `caller` is not an admin (indistinguishable from a missing one)."""
        if not is_session_id(session_id):
            raise SessionNotFound(session_id[:64])
        observed = self.backend.observe(session_id)
        _check_owner(observed.record.username, caller, session_id)
        return self._settle(observed)

    def list(
        self,
        *,
        limit: int = 50,
        offset: int = 0,
        sort_by: str = "created_time",
        order: str = "DESC",
        username: str | None = None,
        caller: Identity | None = None,
    ) -> Page:
        """A page of sessions; a non-admin `caller` sees only their own. Listing decides each
        session's state but writes nothing (its cost must not grow with the sessions): `get`
        and the reaper write what the lifecycle asks."""
        if caller is not None and not caller.is_admin:
            if username and username != caller.username:
                return Page(offset=offset, limit=limit, items=[])
            username = caller.username
        query = SessionQuery(
            offset=offset,
            limit=limit,
            sort_by=sort_by,
            descending=order.upper() == "DESC",
            username=username or None,
        )
        now = self.now()
        items = [decide(o, now).session for o in self.backend.observe_page(query)]
        return Page(offset=offset, limit=limit, items=items)

    def all(self) -> list[Session]:
        """Every session, as decided now (for metrics and the command line); writes nothing."""
        now = self.now()
        return [decide(o, now).session for o in self.backend.observe_all()]

    def stop(self, session_id: str, caller: Identity | None = None) -> None:
        """Remove the session now, also while it starts. Raises `SessionNotFound`."""
        try:
            if not is_session_id(session_id):
                raise SessionNotFound(session_id[:64])
            if caller is not None and not caller.is_admin:
                self.get(session_id, caller)
            self.backend.stop(session_id)
        except OvasError as exc:
            self.events.emit(StopRefused(exc))
            raise
        self.events.emit(SessionStopped(session_id))

    def reap(self) -> list[str]:
        """One pass of the reaper: decide every session now, write what that asks (ending
        those whose clock ran out), remove ended and failed sessions whose retention has
        passed, and let the backend collect what belongs to no session. Returns the ids and
        names removed. Safe in several processes at once: a session is ended once."""
        now = self.now()
        removed = []
        for observed in self.backend.observe_all():
            session_id = observed.record.id
            try:
                session = self._settle(observed, now=now)
                if session.ended_time is not None and now >= session.ended_time + self.retention:
                    with contextlib.suppress(SessionNotFound):
                        self.backend.stop(session_id)
                        removed.append(session_id)
                        self.events.emit(SessionRemoved(session_id))
            except OvasError as exc:
                log.warning("reaping session %s: %s", session_id, exc.message)
        removed.extend(self.backend.collect(now))
        return removed

    def _settle(self, observed: Observed, *, now: datetime | None = None) -> Session:
        """Decide the session, and write through the backend what the decision asks: marks,
        and the outcome of a session that has just ended. A write that fails is logged and
        left to the next reader (the decision holds meanwhile: it is made again the same)."""
        decision = decide(observed, now or self.now())
        session_id = observed.record.id
        try:
            for mark, at in decision.marks.items():
                if self.backend.mark(session_id, mark, at) and mark is Mark.READY and at:
                    self.events.emit(SessionReady(decision.session, at))
            if decision.outcome is not None and self.backend.finish(session_id, decision.outcome):
                self.events.emit(SessionEnded(decision.session))
        except OvasError as exc:
            log.warning("session %s: %s", session_id, exc.message)
        return decision.session


def _check_owner(owner: str, caller: Identity | None, session_id: str) -> None:
    if caller is not None and not caller.is_admin and owner != caller.username:
        raise SessionNotFound(session_id)
