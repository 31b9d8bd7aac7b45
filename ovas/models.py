"""Plain data that every layer shares: catalog entries, session requests and sessions."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

S = TypeVar("S")  # a Session, or a stand-in with its id, username and created_time


class SessionState(enum.StrEnum):
    """The `condition` of a stream, as OVAS clients read it."""

    CREATING = "creating"
    READY = "ready"
    FAILED = "failed"
    TERMINATING = "terminating"


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


@dataclass(frozen=True)
class Route:
    description: str  # "signaling" or "media"
    protocol: str  # "TCP" or "UDP"
    source_port: int  # the port a client connects to
    destination_port: int  # the port inside the Kit container


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


@dataclass
class Session:
    """A session as the backend sees it now."""

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


@dataclass(frozen=True)
class SessionQuery:
    """One page of `GET /stream`: the sessions of `username` (everyone's when None), sorted
    by `sort_by` ("created_time", or "username" then created time), `offset` and `limit`."""

    offset: int = 0
    limit: int = 50
    sort_by: str = "created_time"
    descending: bool = True
    username: str | None = None

    def select(self, sessions: Iterable[S]) -> list[S]:
        """The page out of `sessions`. Reads only `id`, `username` and `created_time`, so a
        backend may select from stand-ins that carry no state yet."""
        if self.username is not None:
            sessions = [s for s in sessions if s.username == self.username]
        if self.sort_by == "username":
            ordered = sorted(sessions, key=_by_user, reverse=self.descending)
        else:
            ordered = sorted(sessions, key=_by_time, reverse=self.descending)
        return ordered[self.offset : self.offset + self.limit]


def _by_user(session: Any) -> tuple[str, datetime, str]:
    return session.username, session.created_time, session.id


def _by_time(session: Any) -> tuple[datetime, str]:
    return session.created_time, session.id
