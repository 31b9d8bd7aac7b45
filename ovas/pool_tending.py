"""The warm pools' half of the session service (`SessionService` inherits it): a start that
a pool can serve takes one of its ready sessions at once; a start that capacity refuses
takes a pooled session's place; the reaper's pass tends every pool (`ovas.pools.plan`)."""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime

from ovas import pools
from ovas.backoff import Backoff, Backoffs
from ovas.errors import CapacityExceeded, OvasError, SessionNotFound
from ovas.events import PoolClaimed, PoolMissed, SessionReady
from ovas.kitspec import parse_kit, render_values
from ovas.lifecycle import Mark
from ovas.models import Session, SessionRequest, SessionState, WarmPool

log = logging.getLogger("ovas.sessions")
NO_POOLS = ":no-pools"  # logged once: the catalog has pools, the backend keeps none


class WarmPoolTending:
    """Warm pools, for `SessionService`: uses its `backend`, `catalogs`, `events`, `now`,
    `pool_max_age`, `user_capacity`, `build_request` and `_settle`."""

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

    def _from_pool(self, request: SessionRequest, *, quiet: bool = False) -> Session | None:
        """A ready session of a warm pool `request` matches, started from the catalog's
        rendering now, claimed for its user at once; None (a miss, told to `events` for
        each pool matched unless `quiet`) when there is none to take."""
        if not type(self.backend).keeps_warm_pools:
            return None  # and the catalog's pools are not even read
        matched, digest = self._matching_pools(request)
        if not matched:
            return None
        if request.usd_stage_uri and request.usd_stage_uri != self._pool_stage(request):
            self._missed(matched, pools.MISS_STAGE, quiet)
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
            self._missed(matched, pools.MISS_NONE_READY, quiet)
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
        self._missed(matched, pools.MISS_TAKEN, quiet)
        return None

    def _missed(self, matched: list[WarmPool], reason: str, quiet: bool = False) -> None:
        if quiet:
            return
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
        self,
        sessions: list[Session],
        now: datetime,
        renderings: Mapping[str, str],
        *,
        start: bool = True,
    ) -> dict[str, str]:
        """One pass over the warm pools (`ovas.pools.plan`), from `sessions` as decided
        now and the rendering each was started from (`renderings`, by id; "" or none:
        unknown, so stale): remove what the plan says, start what it asks (not without
        `start`: while users wait in line, a pool takes no room they could have). A start
        that finds no room (capacity, ports, GPUs) or fails ends a pool's starts for this
        pass. Returns the ids removed, with why."""
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
            for _ in range(step.starts if start and not waiting and target else 0):
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
