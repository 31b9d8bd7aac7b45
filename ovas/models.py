"""Plain data that every layer shares: catalog entries, session requests and sessions."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from ovas.bounds import after

S = TypeVar("S")  # a Session, or a stand-in with its id, username and created_time


class SessionState(enum.StrEnum):
    """The `condition` of a stream, as OVAS clients read it."""

    QUEUED = "queued"  # waiting in line for capacity (`ovas.queueing`); holds nothing
    CREATING = "creating"
    READY = "ready"
    FAILED = "failed"  # a fault ended it: `reason` says which
    ENDED = "ended"  # it ended with no fault: the app quit after it was ready, or a clock
    TERMINATING = "terminating"

    @property
    def final(self) -> bool:
        """True for FAILED and ENDED: the session will never run again."""
        return self in (SessionState.FAILED, SessionState.ENDED)


class Reason(enum.StrEnum):
    """Why a session ended or failed, as `reason` in a StreamResponse and in metrics.

    The first four and `ABANDONED` end a session without a fault (`ENDED`); the rest are
    faults (`FAILED`).
    """

    APP_EXITED = "app_exited"  # the Kit app quit by itself (exit code 0) after it was ready
    CONNECT_TIMEOUT = "connect_timeout"  # ready, and nobody ever connected
    IDLE_TIMEOUT = "idle_timeout"  # the last client left long enough ago
    MAX_LIFETIME = "max_lifetime"  # the session reached its maximum age
    START_TIMEOUT = "start_timeout"  # not ready by its start deadline
    IMAGE_PULL = "image_pull"  # the image cannot be pulled
    EXITED = "exited"  # the Kit app exited with an error (or before it was ready)
    OOM = "oom"  # the Kit app was killed for want of memory
    EVICTED = "evicted"  # the node evicted the session (memory, disk pressure...)
    UNSCHEDULABLE = "unschedulable"  # no node can ever run the session as asked
    NO_GPU = "no_gpu"  # no GPU the session asks for can be had
    CREATE_FAILED = "create_failed"  # the engine refused to create or start the container
    CRASH_LOOP = "crash_loop"  # the Kit app keeps crashing
    INSTALL_FAILED = "install_failed"  # the session's Helm chart cannot be installed
    LOST = "lost"  # the session's container or pod was removed outside ovas
    PREEMPTED = "preempted"  # the scheduler removed the session for a pod of higher priority
    NODE_LOST = "node_lost"  # the session's node stopped answering, shut down or was deleted
    ABANDONED = "abandoned"  # queued, and nobody asked for its status for the abandon timeout

    @property
    def fault(self) -> bool:
        """True when the reason is a fault (the session is FAILED, not ENDED)."""
        return self not in _NOT_FAULTS


_NOT_FAULTS = frozenset(
    {
        Reason.APP_EXITED,
        Reason.CONNECT_TIMEOUT,
        Reason.IDLE_TIMEOUT,
        Reason.MAX_LIFETIME,
        Reason.ABANDONED,
    }
)


@dataclass(frozen=True)
class Application:
    id: str
    name: str
    description: str = ""
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Version:
    app_id: str
    version: str
    container: str = ""
    container_version: str = ""
    helm_chart: str = ""
    helm_chart_version: str = ""


@dataclass(frozen=True)
class SupportedApplication:
    """One `spec.supportedApplications` entry: globs over app ids and versions."""

    name: str
    versions: tuple[str, ...] = ("*",)


@dataclass(frozen=True)
class Profile:
    id: str
    name: str
    description: str = ""
    supported_applications: tuple[SupportedApplication, ...] = ()
    chart_mappings: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    chart_values: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    # `metadata.annotations`: `ovas/connect-timeout` and the other session clocks.
    annotations: dict[str, str] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class WarmPool:
    """A `WarmPool` (`ovas.io/v1alpha1`): keep `size` sessions of `application` at `version`
    (a semver, or "latest": the newest as the catalog changes) with `profile` started ahead
    of demand, for matching starts to take at once."""

    name: str
    application: str
    version: str
    profile: str
    size: int


@dataclass(frozen=True)
class Route:
    description: str  # "signaling" or "media"
    protocol: str  # "TCP" or "UDP"
    source_port: int  # the port a client connects to
    destination_port: int  # the port inside the Kit container


@dataclass(frozen=True)
class Clocks:
    """A session's clocks, in seconds; 0 turns one off. See `ovas.lifecycle`."""

    connect_timeout: float = 300  # ready, and no client ever connected
    idle_timeout: float = 300  # since the last client left
    max_lifetime: float = 28800  # since the session was created

    def expires(self, created: datetime) -> datetime | None:
        """When the max lifetime ends a session created at `created`; None without one (or
        when that is past year 9999)."""
        return after(created, self.max_lifetime) if self.max_lifetime else None


def pool_key(version: str, rendering: str) -> str:
    """What a warm pool's places are counted per, with the pool's name: `version`, and the
    `rendering` digest after a '#' when there is one (`SessionRequest.pool_key`)."""
    return f"{version}#{rendering}" if rendering else version


@dataclass(frozen=True)
class SessionRequest:
    """Everything a backend needs to start one session, already checked against the catalog.

    `values` are the profile's chart values with the version's fields mapped in
    (see `ovas.kitspec.render_values`); `kit` is their `streamingKit` part, parsed.
    """

    id: str
    app: Application
    version: Version
    profile: Profile
    username: str
    created_time: datetime
    deadline: datetime  # the session fails if it is not ready by then
    values: dict[str, Any]
    kit: Any  # ovas.kitspec.KitSpec (typed loosely to keep this module import-free)
    usd_stage_uri: str | None = None
    capacity: int = 0  # most sessions at once, all users; 0 = no limit of ours
    user_capacity: int = 0  # most sessions at once for this username; 0 = no limit
    clocks: Clocks = field(default_factory=Clocks)
    pool: str = ""  # the warm pool this session is started for, owned by nobody until claimed
    pool_size: int = 0  # with `pool`: most unclaimed sessions of that pool and key at once
    rendering: str = ""  # with `pool`: the digest of what it runs (`ovas.pools.rendering`)
    # The named places the core took for it, by kind: a `Backend`'s GPUs' device ids,
    # host ports... (`ovas.workloads.Places`); empty for a backend that takes its own.
    places: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def pool_key(self) -> str:
        """What a warm pool's places (`pool_size`) are counted per, with the pool's name:
        its version and rendering. A catalog edit thus opens new places, and replacements
        start while the sessions they replace are kept (`ovas.pools`)."""
        return pool_key(self.version.version, self.rendering)


@dataclass
class Session:
    """A session as clients see it now: decided by `ovas.lifecycle` from what the backend
    observed. `connected` is None when the backend cannot tell whether a client is."""

    id: str
    app_id: str
    version: str
    profile: str
    username: str
    created_time: datetime
    state: SessionState = SessionState.CREATING
    message: str = ""
    host: str | None = None
    routes: tuple[Route, ...] = ()
    reason: Reason | None = None  # why it ended or failed; None while alive
    connected: bool | None = None
    last_connected_time: datetime | None = None
    expires_time: datetime | None = None  # when the max lifetime ends it
    ended_time: datetime | None = None
    pool: str = ""  # a warm pool's session not claimed yet: the pool's name
    # What opens its signaling socket through the gateway (`ovas.gateway.tokens`), set for
    # its owner and admins only (`SessionService.stream_tokens`); None for anyone else.
    stream_token: str | None = None
    # While QUEUED: its place in line, 1 = next (`ovas.queueing`); None otherwise.
    queue_position: int | None = None

    @classmethod
    def of(cls, request: SessionRequest, **fields) -> Session:
        """The session a request describes, with `fields` (state, message...) set."""
        return cls(
            id=request.id,
            app_id=request.app.id,
            version=request.version.version,
            profile=request.profile.id,
            username=request.username,
            created_time=request.created_time,
            **fields,
        )

    @property
    def ready(self) -> bool:
        return self.state is SessionState.READY

    @property
    def pooled(self) -> bool:
        """True while it is a warm pool's, unclaimed."""
        return bool(self.pool)


@dataclass(frozen=True)
class SessionQuery:
    """One page of `GET /stream`: the sessions of `username` (everyone's when None), sorted
    by `sort_by` ("created_time", or "username" then created time), `offset` and `limit`.
    Warm pools' unclaimed sessions are left out, or with `pooled` are the only ones kept."""

    offset: int = 0
    limit: int = 50
    sort_by: str = "created_time"
    descending: bool = True
    username: str | None = None
    pooled: bool = False

    def select(self, sessions: Iterable[S], key: Callable[[S], Any] | None = None) -> list[S]:
        """The page out of `sessions`. Reads only `id`, `username`, `created_time` and
        `pooled` (of `key(item)` when given), so a backend may select from stand-ins that
        carry no state yet, or from its observations."""
        of = key or (lambda item: item)
        items = [s for s in sessions if bool(getattr(of(s), "pooled", False)) == self.pooled]
        if self.username is not None:
            items = [s for s in items if of(s).username == self.username]
        order = _by_user if self.sort_by == "username" else _by_time
        ordered = sorted(items, key=lambda s: order(of(s)), reverse=self.descending)
        return ordered[self.offset : self.offset + self.limit]


def _by_user(session: Any) -> tuple[str, datetime, str]:
    return session.username, session.created_time, session.id


def _by_time(session: Any) -> tuple[datetime, str]:
    return session.created_time, session.id
