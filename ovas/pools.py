"""Warm pools: sessions started ahead of demand, for matching starts to take at once.

A `WarmPool` of the catalog asks for `size` sessions of one application version and profile.
Its sessions are ordinary sessions of the backend, started by ovas for nobody (`pool` set,
`username` empty) and handed whole to a start that matches (`Backend.claim`, atomic across
processes). What to do with a pool is decided here from what the reaper's pass saw, purely,
so every process decides alike; `ovas.pool_tending` (part of `SessionService`) does it.

The rules, for each pool and its target version (the pool's, or the newest for "latest"):

1. Its sessions that failed or ended are removed: the pool replaces them.
2. Sessions of another version than the target, or started from another rendering of it
   than the catalog's now (`rendering`: a profile or version edited since, or a session
   recorded before renderings were), are never handed out; of those ready, as many stay as
   the target's ready sessions fall short of `size` (they go once their replacements are
   ready); those still starting go at once.
3. Up to `size` sessions of the target start, each admitted against the capacity, GPUs and
   the pool's own count (`pool_size`), so processes filling one pool at once never pass it.
4. A ready session older than `max_age` is renewed: one replacement starts, admitted as the
   `size + 1`-th, and the oldest beyond `size` ready sessions goes once it is ready.
5. Sessions of a pool no longer in the catalog, or that the catalog cannot serve (its
   application, version or profile gone, the profile not supporting the version, or not
   rendering for it), are removed.

Whatever removes a pool's session claims it first (for `POOL_OWNER`), so a user's claim at
the same moment either wins it whole or never sees it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ovas.kitspec import parse_kit, render_values
from ovas.lifecycle import CLOCK_ANNOTATIONS, clocks_for
from ovas.models import Application, Clocks, Profile, Session, Version, WarmPool

# Whom a pool's session is claimed for when the pool itself removes it.
POOL_OWNER = "ovas:pool"
# Why a matching start found no pooled session to take (`ovas_pool_misses{reason}`).
MISS_NONE_READY = "none_ready"  # none of the pool's sessions is ready now
MISS_TAKEN = "taken"  # every ready one was claimed by another start meanwhile
MISS_STAGE = "usd_stage_uri"  # the start asks for another stage than the profile's own


@dataclass
class Plan:
    """What one pass does to a pool: `starts` new sessions admitted with `pool_size`, the
    failed or ended sessions to remove (`done`), and the live ones (`stops`, with why in
    `why`)."""

    pool: WarmPool
    starts: int = 0
    pool_size: int = 0
    done: list[str] = field(default_factory=list)
    stops: list[str] = field(default_factory=list)
    why: dict[str, str] = field(default_factory=dict)

    def stop(self, sessions: Iterable[Session], why: str) -> None:
        for session in sessions:
            if session.id not in self.why:
                self.stops.append(session.id)
                self.why[session.id] = why


def rendering(app: Application, version: Version, profile: Profile) -> str:
    """The digest (hex) of what a warm pool's session of `app` at `version` with `profile`
    runs, as the catalog renders it now: the profile's chart values with the version mapped
    in (with the profile's own `USD_PATH`, without the session's name), every field of the
    version (image, chart) and the profile's clock annotations. Equal digests run the same.
    Raises ValueError, naming the field, when the profile cannot run the version."""
    values = render_values(profile, app, version, "", None)
    parse_kit(values)
    clocks_for(Clocks(), profile.annotations)
    clocks = {a: str(profile.annotations[a]) for a in CLOCK_ANNOTATIONS if a in profile.annotations}
    rendered = {"values": _plain(values), "version": asdict(version), "clocks": clocks}
    text = json.dumps(rendered, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _plain(value: Any) -> Any:
    """`value` with every mapping key a string, so that it serialises sorted (YAML allows
    keys of mixed types)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def plan(
    pool: WarmPool,
    target: str | None,
    members: list[Session],
    now: datetime,
    max_age: float,
    *,
    stale: Collection[str] = (),
    problem: str = "",
) -> Plan:
    """The pass for `pool`: `members` are its unclaimed sessions as decided now (any state),
    `target` the version to keep (None: the catalog cannot serve the pool, for `problem`),
    `stale` the ids of members started from another rendering than the catalog's now.
    `max_age` in seconds, 0 = never renew. See the module's rules."""
    result = Plan(pool, pool_size=pool.size, done=[m.id for m in members if m.state.final])
    live = [m for m in members if not m.state.final]
    if target is None:
        result.stop(live, f"the catalog cannot serve its pool: {problem or 'no version'}")
        return result
    old = [m for m in live if m.version != target]
    edited = [m for m in live if m.version == target and m.id in stale]
    current = [m for m in live if m.version == target and m.id not in stale]
    ready = _oldest_first(m for m in current if m.ready)
    starting = [m for m in current if not m.ready]
    result.stop((m for m in old if not m.ready), f"{target} is the pool's version now")
    result.stop((m for m in edited if not m.ready), "the catalog renders its profile anew")
    stale_ready = _oldest_first(m for m in [*old, *edited] if m.ready)
    keep = max(0, pool.size - len(ready))
    result.stop(stale_ready[: max(0, len(stale_ready) - keep)], "a current session replaces it")
    if len(ready) > pool.size:
        result.stop(ready[: len(ready) - pool.size], "the pool has enough ready sessions")
        ready = ready[len(ready) - pool.size :]
    # A shrunk pool: more starting than it could use, even while renewing one.
    surplus = len(ready) + len(starting) - (pool.size + 1)
    if surplus > 0 and starting:
        surplus = min(surplus, len(starting))
        result.stop(_oldest_first(starting)[-surplus:], "the pool is smaller now")
        starting = _oldest_first(starting)[:-surplus]
    missing = pool.size - len(ready) - len(starting)
    if missing > 0:
        result.starts = missing
        return result
    age = timedelta(seconds=max_age)
    aged = max_age > 0 and any(now - m.created_time >= age for m in ready)
    if aged and not starting and pool.size > 0:
        result.starts, result.pool_size = 1, pool.size + 1
    return result


def _oldest_first(sessions: Iterable[Session]) -> list[Session]:
    return sorted(sessions, key=lambda s: (s.created_time, s.id))
