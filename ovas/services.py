"""Rules that hold for every backend: version resolution, profile matching, request building,
capacity settings, session listing. Views call these; these call the `Backend` and `Catalog`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import posixpath
import random
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from ovas import pools
from ovas.auth import ADMIN, Identity
from ovas.backend import Backend, Catalog, utcnow
from ovas.backoff import Backoff, Backoffs
from ovas.errors import (
    CapacityExceeded,
    EditingDisabled,
    Forbidden,
    InvalidInput,
    OvasError,
    ProfileNotFound,
    SessionNotFound,
    UserCapacityExceeded,
    VersionNotFound,
)
from ovas.events import (
    Events,
    PoolClaimed,
    PoolMissed,
    SessionEnded,
    SessionReady,
    SessionRemoved,
    SessionStarted,
    SessionStopped,
    StartRefused,
    StopRefused,
)
from ovas.gateway.rules import GatewayRules
from ovas.kitspec import parse_kit, render_values
from ovas.ledger import RecordCodec
from ovas.lifecycle import Decision, Mark, Observed, clocks_for, decide
from ovas.models import (
    Application,
    Clocks,
    Profile,
    Session,
    SessionQuery,
    SessionRequest,
    SessionState,
    Version,
    WarmPool,
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
NO_POOLS = ":no-pools"  # logged once: the catalog has pools, the backend keeps none
LOG_TAIL = 100  # log lines given when not told how many
# A session's removal is recorded in the ledger while a process removes it (`_remove_once`).
REMOVAL_PREFIX = "removal."
REMOVAL = RecordCodec("removal", current=1, readers={1: dict})
REMOVAL_GRACE = timedelta(seconds=120)
FREE_EVERY = timedelta(seconds=5)  # a refused start frees what ended sessions hold, this often
MAX_LOG_TAIL = 10000
_READ = object()  # `_settle` reads the clients connected through the gateway itself


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
    `roots`; raise `InvalidInput` otherwise. The value only ever reaches `USD_PATH`.

    A path must lie under a root as written and after each percent-decoding of it (Kit's
    asset resolvers take `/app/samples/%2e%2e/x` as `/app/samples/../x`, and a reader that
    decodes twice takes `%252e` as a dot), so no encoded `..` or `/` leaves the roots."""
    field = "arguments.usd_stage_uri"
    if len(uri) > MAX_STAGE_URI:
        raise InvalidInput(f"usd_stage_uri is longer than {MAX_STAGE_URI} characters", field=field)
    _check_characters(uri, field)
    if uri.lower().startswith(STAGE_URI_SCHEMES) and len(uri.split("://", 1)[1]) > 0:
        return
    if uri.startswith("/"):
        for form in _decodings(uri, field):
            _check_characters(form, field)
            path = posixpath.normpath(form)
            if not any(_lies_under(path, posixpath.normpath(root)) for root in roots):
                allowed = ", ".join(roots) or "none configured"
                raise InvalidInput(
                    f"usd_stage_uri paths must lie under an allowed folder ({allowed})",
                    field=field,
                )
        return
    raise InvalidInput(
        "usd_stage_uri must be an omniverse://, http(s):// or s3:// URI, or an allowed path",
        field=field,
    )


MAX_DECODINGS = 3  # percent-decodings of a stage path followed; one more is refused


def _decodings(path: str, field: str) -> list[str]:
    """`path`, then each percent-decoding of it while one changes it. Raises `InvalidInput`
    for a path still encoded after `MAX_DECODINGS` decodings."""
    forms = [path]
    while (decoded := urllib.parse.unquote(forms[-1])) != forms[-1]:
        if len(forms) > MAX_DECODINGS:
            raise InvalidInput("usd_stage_uri is percent-encoded over and over", field=field)
        forms.append(decoded)
    return forms


def _check_characters(text: str, field: str) -> None:
    if any(ord(c) < 32 or c.isspace() or ord(c) == 127 for c in text):
        raise InvalidInput("usd_stage_uri must not hold spaces or control characters", field=field)


def _lies_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


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

    def pool_target(self, pool: WarmPool) -> tuple[Version, str]:
        """What `pool` keeps now: its version (the newest for "latest") and the digest of
        its sessions' rendering (`ovas.pools.rendering`). Raises `OvasError` when the
        catalog cannot serve it: its application, version or profile not found, the
        profile not supporting the version (`ProfileNotFound`) or not rendering for it
        (`InvalidInput`)."""
        app = self.get_application(pool.application)
        version = self.resolve_version(pool.application, pool.version)
        profile = self.catalog.profile(pool.profile)
        if not profile_supports(profile, app.id, version.version):
            raise ProfileNotFound(
                profile.id, f"Profile '{profile.id}' does not support {app.id} {version.version}"
            )
        try:
            return version, pools.rendering(app, version, profile)
        except ValueError as exc:
            raise InvalidInput(
                f"Profile '{profile.id}' cannot run {app.id} {version.version}: {exc}",
                field="profile",
            ) from None

    def pool_problems(self) -> list[str]:
        """Each warm pool the catalog cannot serve now, as `warm pool <name>: why`, by
        name (its sessions are removed, `ovas.pools`). Raises what the catalog's reads
        raise."""
        problems = []
        for pool in sorted(self.catalog.warm_pools(), key=lambda p: p.name):
            try:
                self.pool_target(pool)
            except OvasError as exc:
                problems.append(f"warm pool {pool.name}: {exc.message}")
        return problems

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

    `now` is the clock (an aware UTC datetime); tests inject one and move it. `gateway`
    says how the signaling gateway changes what is answered (`ovas.gateway.rules`)."""

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
        pool_max_age: float = 3600,
        now: Callable[[], datetime] = utcnow,
        events: Events | None = None,
        gateway: GatewayRules | None = None,
    ):
        self.gateway = gateway or GatewayRules()
        self.stage_roots = tuple(stage_roots)
        self.backend = backend
        self.catalogs = catalogs
        self.capacity = capacity
        self.user_capacity = user_capacity
        self.start_timeout = start_timeout
        self.clocks = clocks or Clocks()
        self.retention = timedelta(seconds=retention)
        self.pool_max_age = pool_max_age
        self.now = now
        self.events = events or Events()
        self._freed_at: datetime | None = None  # see `_freed_room`
        # What was logged once: pool names, and NO_POOLS (no pool name holds a colon).
        self._pool_warned: set[str] = set()

    def build_request(
        self,
        app_id: str,
        profile_id: str,
        version: str | None = None,
        *,
        username: str = "",
        usd_stage_uri: str | None = None,
        now: datetime | None = None,
        pool: WarmPool | None = None,
    ) -> SessionRequest:
        """Check the request against the catalog (404 for anything unknown or unsupported)
        and render what the backend needs. Asks no backend. With `pool`, the start of one
        of that warm pool's sessions, for nobody."""
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
            rendering = pools.rendering(app, resolved, profile) if pool else ""
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
            user_capacity=0 if pool else self.user_capacity,
            clocks=clocks,
            pool=pool.name if pool else "",
            pool_size=pool.size if pool else 0,
            rendering=rendering,
        )

    def start(
        self,
        app_id: str,
        profile_id: str,
        version: str | None = None,
        *,
        caller: Identity | None = None,
        **kw,
    ) -> Session:
        """Start a session; returns it as first decided: READY when a warm pool's session
        was taken (`ovas.pools`), else normally CREATING, with its stream token when
        `caller` may have it (`stream_tokens`). When capacity is short, a pool's unclaimed
        session makes room for it. Raises what `build_request` and `Backend.start` raise;
        every start, admitted or refused, is told to `events`."""
        try:
            request = self.build_request(app_id, profile_id, version, **kw)
            session = self._from_pool(request)
            if session is None:
                session = self._settle(self._start_on_demand(request))
        except OvasError as exc:
            self.events.emit(StartRefused(exc))
            raise
        self.events.emit(SessionStarted(session))
        self.stream_tokens([session], caller)
        return session

    def _start_on_demand(self, request: SessionRequest) -> Observed:
        """Start `request`; when capacity refuses it, first free what sessions that ended
        since anyone looked still hold (their outcome unrecorded: a container that exited),
        and what the backend's clean-up removes (claims of a workload removed by hand),
        then, for the shared capacity, a warm pool's place."""
        try:
            return self.backend.start(request)
        except CapacityExceeded as exc:
            refused = exc
        if self._freed_room():
            try:
                return self.backend.start(request)
            except CapacityExceeded as exc:
                refused = exc
        if isinstance(refused, UserCapacityExceeded) or not self._shrink_pools():
            raise refused
        return self.backend.start(request)

    def _freed_room(self) -> bool:
        """Free what ended sessions and removed workloads still hold (`_settle_ended`, then
        the backend's clean-up), at most once every `FREE_EVERY` in this process: it reads
        every session, which refused starts in a burst must not repeat. True if it freed
        anything."""
        now = self.now()
        if self._freed_at is not None and now - self._freed_at < FREE_EVERY:
            return False
        self._freed_at = now
        return self._settle_ended() or bool(self.backend.collect(now))

    def _settle_ended(self) -> bool:
        """Decide every session now and record the outcome of those that ended, which frees
        what they hold (slots, GPUs, ports). True if any did."""
        now, ended = self.now(), False
        observations = self.backend.observe_all()
        clients = self._clients(observations, now)
        for observed in observations:
            if observed.record.outcome is not None:
                continue
            if self._settle(observed, now=now, clients=clients).state.final:
                ended = True
        return ended

    # Warm pools

    def warm_pools(self) -> list[WarmPool]:
        """The catalog's warm pools, by name."""
        return sorted(self.catalogs.catalog.warm_pools(), key=lambda p: p.name)

    def _pool_target(self, pool: WarmPool) -> tuple[str | None, str, str]:
        """`pool`'s version and rendering now (`CatalogService.pool_target`), as
        (version, digest, ""); (None, "", why) when the catalog cannot serve it."""
        try:
            version, digest = self.catalogs.pool_target(pool)
        except OvasError as exc:
            return None, "", exc.message
        return version.version, digest, ""

    def _matching_pools(self, request: SessionRequest) -> tuple[list[WarmPool], str]:
        """Every pool `request` matches (its application, profile and resolved version), and
        the rendering their sessions must have been started from to be handed out: the
        request's own, read from the catalog as it is now."""
        found = []
        for pool in self.warm_pools():
            if (
                pool.application == request.app.id
                and pool.profile == request.profile.id
                and pool.size > 0
                and self._pool_version(pool) == request.version.version
            ):
                found.append(pool)
        if not found:
            return [], ""
        try:
            return found, pools.rendering(request.app, request.version, request.profile)
        except ValueError:
            return [], ""  # build_request refused such a request already

    def _pool_version(self, pool: WarmPool) -> str | None:
        try:
            return self.catalogs.resolve_version(pool.application, pool.version).version
        except OvasError:
            return None

    def _from_pool(self, request: SessionRequest) -> Session | None:
        """A ready session of a warm pool `request` matches, started from the catalog's
        rendering now, claimed for its user at once; None (a miss, told to `events` for
        each pool matched) when there is none to take."""
        if not type(self.backend).keeps_warm_pools:
            return None  # and the catalog's pools are not even read
        matched, digest = self._matching_pools(request)
        if not matched:
            return None
        if request.usd_stage_uri and request.usd_stage_uri != self._pool_stage(request):
            self._missed(matched, pools.MISS_STAGE)
            return None
        names = {pool.name for pool in matched}
        candidates = [
            r
            for r in self.backend.records()
            if r.pooled
            and r.pool in names
            and r.version == request.version.version
            and r.rendering == digest
            and r.outcome is None
            and Mark.READY in r.marks
        ]
        if not candidates:
            self._missed(matched, pools.MISS_NONE_READY)
            return None
        now = self.now()
        # In a random order, so that starts at once in several processes rarely collide.
        for record in random.sample(candidates, len(candidates)):
            # Only a live session is handed out: one whose container or pod ended since a
            # pass saw it ready (a daemon restart, a kill) is settled here and left for the
            # pool's pass to replace.
            try:
                if not self._settle(self.backend.observe(record.id), now=now).ready:
                    continue
            except SessionNotFound:
                continue
            claimed = self.backend.claim(
                record.id, request.username, now, user_capacity=self.user_capacity
            )
            if not claimed:
                continue
            log.info(
                "session %s of warm pool %s is %s's now", record.id, record.pool, request.username
            )
            with contextlib.suppress(SessionNotFound):
                session = self._settle(self.backend.observe(record.id))
                self.events.emit(PoolClaimed(record.pool, session))
                if session.ready:
                    self.events.emit(SessionReady(session, now))
                return session
        self._missed(matched, pools.MISS_TAKEN)
        return None

    def _missed(self, matched: list[WarmPool], reason: str) -> None:
        for pool in matched:
            self.events.emit(PoolMissed(pool.name, reason))

    def _pool_stage(self, request: SessionRequest) -> str:
        """The profile's own USD_PATH, which a pooled session runs with."""
        values = render_values(request.profile, request.app, request.version, request.id, None)
        return parse_kit(values).env_dict.get("USD_PATH", "")

    def _shrink_pools(self) -> bool:
        """Remove one unclaimed pooled session (one still starting, else the oldest), so an
        on-demand start may have its place. True if one went."""
        pooled = [r for r in self.backend.records() if r.pooled and r.outcome is None]
        pooled.sort(key=lambda r: (Mark.READY in r.marks, -r.created_time.timestamp()))
        for record in pooled:
            if self._remove_pooled(record.id):
                log.info(
                    "removed session %s of warm pool %s: an on-demand start needs its place",
                    record.id,
                    record.pool,
                )
                return True
        return False

    def _remove_pooled(self, session_id: str) -> bool:
        """Claim an unclaimed pooled session for the pool itself, then remove it: a user's
        claim at the same moment wins it whole or never sees it. True if it went."""
        try:
            if not self.backend.claim(session_id, pools.POOL_OWNER, self.now()):
                return False
            self.backend.stop(session_id)
        except SessionNotFound:
            return False
        return True

    def tend_pools(
        self, sessions: list[Session], now: datetime, renderings: Mapping[str, str]
    ) -> dict[str, str]:
        """One pass over the warm pools (`ovas.pools.plan`), from `sessions` as decided
        now and the rendering each was started from (`renderings`, by id; "" or none:
        unknown, so stale): remove what the plan says, start what it asks. A start that
        finds no room (capacity, ports, GPUs) or fails ends a pool's starts for this pass.
        Returns the ids removed, with why."""
        catalog_pools = self.warm_pools()
        if catalog_pools and not type(self.backend).keeps_warm_pools:
            if NO_POOLS not in self._pool_warned:
                self._pool_warned.add(NO_POOLS)
                log.warning("the %s backend keeps no warm pools", type(self.backend).name)
            return {}
        removed: dict[str, str] = {}
        names = {p.name for p in catalog_pools}
        members: dict[str, list[Session]] = {}
        for session in sessions:
            if session.pooled:
                members.setdefault(session.pool, []).append(session)
        for name in set(members) - names:
            for session in members[name]:
                self._remove_pooled_quietly(session.id, f"warm pool {name} is gone", removed)
        backoffs = Backoffs(self.backend.ledger)
        # Read with pools only: a pass without them costs no ledger call (the back-offs
        # of pools gone meanwhile are deleted by the next pass that has pools).
        held = backoffs.load() if catalog_pools else {}
        backoffs.forget(names, held)
        for pool in catalog_pools:
            target, digest, problem = self._pool_target(pool)
            if target is None and pool.name not in self._pool_warned:
                self._pool_warned.add(pool.name)
                log.warning("warm pool %s: the catalog cannot serve it: %s", pool.name, problem)
            mine = members.get(pool.name, [])
            stale = {m.id for m in mine if renderings.get(m.id, "") != digest}
            step = pools.plan(
                pool, target, mine, now, self.pool_max_age, stale=stale, problem=problem
            )
            self._back_off(pool, mine, now, backoffs, held)
            for session_id in step.done:
                with contextlib.suppress(SessionNotFound):
                    self.backend.stop(session_id)  # failed or ended: nobody can claim it
                    removed[session_id] = f"warm pool {pool.name}'s session failed or ended"
            for session_id in step.stops:
                self._remove_pooled_quietly(session_id, step.why[session_id], removed)
            waiting = backoffs.waiting(pool.name, held, now)
            for _ in range(step.starts if not waiting and target else 0):
                if not self._start_pooled(pool, target, step.pool_size, now):
                    break
        return removed

    def _back_off(
        self,
        pool: WarmPool,
        members: list[Session],
        now: datetime,
        backoffs: Backoffs,
        held: dict[str, Backoff],
    ) -> None:
        """A pool whose sessions fail starts its next round 30 s after the failed one
        started, then twice as long each time (up to 10 minutes), until one is ready: a
        broken image or profile must not churn the engine, nor fill the log. The back-off
        is in the ledger (`ovas.backoff`): every process and replica keeps the same one."""
        failed = [m for m in members if m.state is SessionState.FAILED]
        if any(m.ready for m in members):
            backoffs.clear(pool.name, held)
        if not failed:
            return
        seconds = backoffs.failed(pool.name, [m.created_time for m in failed], held)
        if seconds is None:
            return  # counted already, by this process or another
        log.warning(
            "warm pool %s: %d session(s) failed (%s); starting again in %.0f s",
            pool.name,
            len(failed),
            failed[0].message,
            seconds,
        )

    def _remove_pooled_quietly(self, session_id: str, why: str, removed: dict[str, str]) -> None:
        try:
            if self._remove_pooled(session_id):
                removed[session_id] = why
        except OvasError as exc:
            log.warning("removing session %s of a warm pool: %s", session_id, exc.message)

    def _start_pooled(self, pool: WarmPool, version: str, pool_size: int, now: datetime) -> bool:
        try:
            request = self.build_request(
                pool.application, pool.profile, version, now=now, pool=replace(pool, size=pool_size)
            )
            session = self._settle(self.backend.start(request), now=now)
        except CapacityExceeded:
            return False
        except OvasError as exc:
            if pool.name not in self._pool_warned:
                self._pool_warned.add(pool.name)
                log.warning("warm pool %s cannot start a session: %s", pool.name, exc.message)
            return False
        self._pool_warned.discard(pool.name)
        log.info("warm pool %s started session %s", pool.name, session.id)
        return True

    def get(self, session_id: str, caller: Identity | None = None) -> Session:
        """The session in whatever state it is. Raises `SessionNotFound`, also for another
        user's session when `caller` is not an admin (indistinguishable from a missing one)."""
        if not is_session_id(session_id):
            raise SessionNotFound(session_id[:64])
        observed = self.backend.observe(session_id)
        _check_owner(observed.record.username, caller, session_id)
        session = self._settle(observed)
        self.stream_tokens([session], caller)
        return session

    def signaling(self, session_id: str) -> tuple[Session, tuple[str, int] | None]:
        """For the signaling gateway: the session as decided now (its state and owner),
        and where its signaling socket is reached, (host, TCP port), once it is ready (None
        before, or when the backend cannot say). Raises `SessionNotFound`."""
        if not is_session_id(session_id):
            raise SessionNotFound(session_id[:64])
        observed = self.backend.observe(session_id)
        session = self._settle(observed)
        return session, observed.seen.signaling if session.ready else None

    def list(
        self,
        *,
        limit: int = 50,
        offset: int = 0,
        sort_by: str = "created_time",
        order: str = "DESC",
        username: str | None = None,
        pooled: bool = False,
        state: SessionState | str | None = None,
        app_id: str | None = None,
        profile: str | None = None,
        caller: Identity | None = None,
    ) -> Page:
        """A page of sessions; a non-admin `caller` sees only their own. Warm pools'
        unclaimed sessions are listed only with `pooled`, to an admin (`Forbidden` to
        others). Listing decides each session's state but writes nothing (its cost must not
        grow with the sessions): `get` and the reaper write what the lifecycle asks.
        `state`, `app_id` and `profile` keep the sessions matching them (see `find`), at
        the cost of deciding every session."""
        if pooled and caller is not None and not caller.is_admin:
            raise Forbidden("Only an admin may list the warm pools' sessions")
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
            pooled=pooled,
        )
        if state or app_id or profile:
            found = self.find(state=state, username=username, app_id=app_id, profile=profile)
            items = query.select(found)
        else:
            now = self.now()
            items = [d.session for d in self._decide_all(self.backend.observe_page(query), now)]
        self.stream_tokens(items, caller)
        return Page(offset=offset, limit=limit, items=items)

    def all(self) -> list[Session]:
        """Every session, as decided now (for metrics and the command line); writes nothing."""
        now = self.now()
        return [d.session for d in self._decide_all(self.backend.observe_all(), now)]

    def _decide_all(self, observations: list[Observed], now: datetime) -> list[Decision]:
        clients = self._clients(observations, now)
        return [decide(self.gateway.applied(o, clients), now) for o in observations]

    def _clients(self, observations: list[Observed], now: datetime) -> dict[str, int] | None:
        return self.gateway.clients(self.backend.ledger, observations, now)

    def stream_tokens(self, sessions: list[Session], caller: Identity | None) -> None:
        """Give each of `sessions` its stream token where `caller` may have it
        (`GatewayRules.stream_tokens`)."""
        self.gateway.stream_tokens(self.backend.ledger, sessions, caller)

    def find(
        self,
        *,
        state: SessionState | str | None = None,
        username: str | None = None,
        app_id: str | None = None,
        profile: str | None = None,
    ) -> list[Session]:
        """Every session, as decided now, that matches each filter given (None or empty:
        any): its state (a `SessionState` or its value, e.g. "failed"), owner, app id and
        profile id. Writes nothing. Raises `InvalidInput` for an unknown state."""
        if state and not isinstance(state, SessionState):
            try:
                state = SessionState(str(state).lower())
            except ValueError:
                known = ", ".join(s.value for s in SessionState)
                raise InvalidInput(f"state must be one of {known}", field="state") from None
        wanted = {"state": state, "username": username, "app_id": app_id, "profile": profile}
        wanted = {k: v for k, v in wanted.items() if v}
        return [s for s in self.all() if all(getattr(s, k) == v for k, v in wanted.items())]

    def logs(self, session_id: str, tail: int = LOG_TAIL, caller: Identity | None = None):
        """The last `tail` (1 to `MAX_LOG_TAIL`) log lines of the session's container or pod,
        oldest first, for as long as the session is kept (running, ended or failed), as a
        list of str. Admins only: raises `Forbidden` for another `caller`; `SessionNotFound`;
        `InvalidInput` for a bad `tail`."""
        if caller is not None:
            caller.require(ADMIN)
        if not is_session_id(session_id):
            raise SessionNotFound(session_id[:64])
        if not 1 <= tail <= MAX_LOG_TAIL:
            raise InvalidInput(f"tail must be 1 to {MAX_LOG_TAIL}", field="tail")
        return self.backend.logs(session_id, tail)

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
        """One pass of the reaper (`reap_pass`), tending the warm pools too: the ids and
        names removed."""
        return list(self.reap_pass())

    def reap_pass(self, *, tend_pools: bool = True) -> dict[str, str]:
        """One pass of the reaper: decide every session now, write what that asks (ending
        those whose clock ran out), remove ended and failed sessions whose retention has
        passed, and let the backend collect what belongs to no session; with `tend_pools`,
        then the warm pools' pass (`tend_pools`). Returns each id or name removed, with
        why, in the order removed. Without `tend_pools` no warm pool's unclaimed session is
        touched: what a pool keeps is decided by the catalog, which only the server's pass
        is sure to read as the server does. Safe in several processes at once: a session
        is ended once."""
        now = self.now()
        removed: dict[str, str] = {}
        sessions = []
        renderings = {}
        observations = self.backend.observe_all()
        clients = self.gateway.reap(self.backend.ledger, now, removed)
        for observed in observations:
            session_id = observed.record.id
            try:
                session = self._settle(observed, now=now, clients=clients)
                sessions.append(session)
                renderings[session_id] = observed.record.rendering
                if session.pooled:
                    continue  # the pool's own pass removes them
                expired = session.ended_time is not None and (
                    now >= session.ended_time + self.retention
                )
                if expired and self._remove_once(session_id, now):
                    removed[session_id] = (
                        f"{session.state.value} ({session.reason}) at "
                        f"{session.ended_time.isoformat(timespec='seconds')}, and kept "
                        f"for its retention of {self.retention.total_seconds():g} s"
                    )
                    self.events.emit(SessionRemoved(session_id))
            except OvasError as exc:
                log.warning("reaping session %s: %s", session_id, exc.message)
        if tend_pools:
            removed.update(self.tend_pools(sessions, now, renderings))
        for name in self.backend.collect(now):
            removed[name] = "it belongs to no session, or to one that has ended"
        return removed

    def _remove_once(self, session_id: str, now: datetime) -> bool:
        """Remove a session whose retention has passed, in one process only: of passes in
        several processes that decided to at once, the one that records the removal in the
        ledger (`removal.<id>`) does it, so it is audited and logged once. A removal record
        older than `REMOVAL_GRACE` is of a process that died halfway: it is taken over.
        True when this call removed the session."""
        ledger = self.backend.ledger
        name = f"{REMOVAL_PREFIX}{session_id}"
        entry = ledger.create(name, REMOVAL.encode({}))
        if entry is None:
            held = ledger.get(name)
            if held is None or now - held.created < REMOVAL_GRACE or not ledger.delete(held):
                return False
            entry = ledger.create(name, REMOVAL.encode({}))
            if entry is None:
                return False
        try:
            self.backend.stop(session_id)
            return True
        except SessionNotFound:
            return False
        finally:
            ledger.delete(entry)

    def _settle(
        self, observed: Observed, *, now: datetime | None = None, clients: object = _READ
    ) -> Session:
        """Decide the session, and write through the backend what the decision asks: marks,
        and the outcome of a session that has just ended. A write that fails is logged and
        left to the next reader (the decision holds meanwhile: it is made again the same).
        `clients`: as `GatewayRules.clients` gives them, read here unless given."""
        now = now or self.now()
        if clients is _READ:
            clients = self._clients([observed], now)
        decision = decide(self.gateway.applied(observed, clients), now)
        session_id = observed.record.id
        try:
            for mark, at in decision.marks.items():
                written = self.backend.mark(session_id, mark, at)
                # A warm pool's session is ready for its user when claimed, not before.
                if written and mark is Mark.READY and at and not decision.session.pooled:
                    self.events.emit(SessionReady(decision.session, at))
            if decision.outcome is not None and self.backend.finish(session_id, decision.outcome):
                self.events.emit(SessionEnded(decision.session))
        except OvasError as exc:
            log.warning("session %s: %s", session_id, exc.message)
        return decision.session


def _check_owner(owner: str, caller: Identity | None, session_id: str) -> None:
    if caller is not None and not caller.is_admin and owner != caller.username:
        raise SessionNotFound(session_id)
