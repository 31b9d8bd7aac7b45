"""The two interfaces a backend plugin implements: `Catalog` (apps, versions, profiles) and
`Backend` (sessions).

Both are synchronous, return `ovas.models` objects and raise `ovas.errors` only: an SDK's
exceptions never leave a backend. Rules that hold for every backend ("latest", profile
matching, sorting, paging) live in `ovas.services`, not here.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar, Self

from ovas.errors import ApplicationNotFound, ProfileNotFound, VersionNotFound
from ovas.models import Application, Profile, Session, SessionQuery, SessionRequest, Version


class Catalog(abc.ABC):
    """Where applications, versions and profiles live (YAML files, Kubernetes objects...).

    Read methods may be called from many threads at once. Editing methods are only called
    when editing is enabled; an implementation that cannot edit leaves them raising
    `NotImplementedError`, which is answered as a 405.
    """

    @abc.abstractmethod
    def applications(self) -> list[Application]:
        """All applications, in any order."""

    @abc.abstractmethod
    def versions(self, app_id: str) -> list[Version]:
        """All versions of `app_id`, in any order. Raises `ApplicationNotFound`."""

    @abc.abstractmethod
    def profiles(self) -> list[Profile]:
        """All profiles, in any order."""

    def application(self, app_id: str) -> Application:
        """One application. Raises `ApplicationNotFound`."""
        for app in self.applications():
            if app.id == app_id:
                return app
        raise ApplicationNotFound(app_id)

    def version(self, app_id: str, version: str) -> Version:
        """One version. Raises `ApplicationNotFound` or `VersionNotFound`."""
        for candidate in self.versions(app_id):
            if candidate.version == version:
                return candidate
        raise VersionNotFound(app_id, version)

    def profile(self, profile_id: str) -> Profile:
        """One profile. Raises `ProfileNotFound`."""
        for profile in self.profiles():
            if profile.id == profile_id:
                return profile
        raise ProfileNotFound(profile_id)

    @property
    def problems(self) -> list[str]:
        """Every invalid document, as `where: field: what is wrong` (served documents are
        valid; these are skipped and reported)."""
        return []

    def check(self) -> None:
        """Raise `CatalogError` or `BackendUnavailable` if the catalog cannot be read now.
        Invalid documents alone are not a reason: they are reported in `problems`, and one
        bad document must not make every replica unready."""
        self.applications()
        self.profiles()

    # Editing. Each is atomic: it happens whole or not at all.

    def create_application(self, app: Application) -> None:
        """Add an application. Raises `Conflict` if its id exists."""
        raise NotImplementedError

    def update_application(self, app: Application) -> None:
        """Replace an application's fields. Raises `ApplicationNotFound`."""
        raise NotImplementedError

    def delete_application(self, app_id: str) -> None:
        """Remove an application and all its versions. Raises `ApplicationNotFound`."""
        raise NotImplementedError

    def create_version(self, version: Version) -> None:
        """Add a version. Raises `ApplicationNotFound`, or `Conflict` if it exists."""
        raise NotImplementedError

    def delete_version(self, app_id: str, version: str) -> None:
        """Remove a version. Raises `ApplicationNotFound` or `VersionNotFound`."""
        raise NotImplementedError


class Backend(abc.ABC):
    """Runs Kit streams. One instance serves every request of one ovas process, from many
    threads at once; several processes (gunicorn workers, replicas) may share one engine, so
    the engine, never this object's memory, is the record of which sessions exist.

    Plugins register a subclass in the `ovas.backends` entry-point group.
    """

    name: ClassVar[str] = ""
    catalog: Catalog

    @classmethod
    @abc.abstractmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Self:
        """Build from the app's settings (`OVAS_*` without the prefix: `CATALOG_PATH`,
        `DOCKER_PORT_RANGE`...). Must not contact the engine: ovas starts without one."""

    @abc.abstractmethod
    def start(self, request: SessionRequest) -> Session:
        """Begin a session and return at once, normally in state CREATING.

        Admission is atomic across processes: with `request.capacity` (all users) or
        `request.user_capacity` (this user) > 0, never more sessions than that exist at once.
        Raises `CapacityExceeded` / `UserCapacityExceeded` (nothing is left behind),
        `BackendUnavailable`.
        """

    @abc.abstractmethod
    def get(self, session_id: str) -> Session:
        """The session's current state, probing readiness for at most about a second.

        A session past its deadline that is not ready is FAILED. Raises `SessionNotFound`.
        """

    @abc.abstractmethod
    def list(self) -> list[Session]:
        """Every session, with one call to the engine (not one per session). Readiness may be
        reported from the engine's record without probing each session."""

    def page(self, query: SessionQuery) -> list[Session]:
        """One page of sessions, sorted and filtered as `query` says (`GET /stream`).

        By default `query.select(self.list())`. A backend whose engine lists its sessions'
        records more cheaply than their states overrides it to read the records of all and
        the state of only the page's sessions, in a number of calls that does not grow with
        the number of sessions."""
        return query.select(self.list())

    @abc.abstractmethod
    def stop(self, session_id: str) -> None:
        """Remove everything of the session, also while it is still starting.

        Raises `SessionNotFound` if no such session exists; stopping a session that vanished
        while stopping is not an error."""

    def reap(self, now: datetime) -> list[str]:
        """Remove failed sessions after a grace period, sessions past their deadline, and
        anything labelled as ours that belongs to no well-formed session. Returns the ids
        (or names) removed. Safe to run in several processes at once."""
        return []

    def check(self) -> None:
        """Raise `BackendUnavailable` if the engine cannot be reached now."""

    def close(self) -> None:
        """Release connections and background threads (called when the app shuts down)."""
