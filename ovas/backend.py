"""The two interfaces the core calls: `Catalog` (apps, versions, profiles) and
`SessionBackend` (sessions, with every record of them). A plugin implements `Catalog` and,
most often, `ovas.Backend` (`ovas.workloads`), which runs workloads only and implements
`SessionBackend` over a ledger; one that keeps its sessions' records its own way subclasses
`SessionBackend` directly.

Both are synchronous, return `ovas.models` and `ovas.lifecycle` objects and raise
`ovas.errors` only: an SDK's exceptions never leave a backend. Rules that hold for every
backend ("latest", profile matching, sorting, paging, the session lifecycle and its clocks)
live in `ovas.services` (and `ovas.catalogs`, `ovas.pool_tending`) and `ovas.lifecycle`, not
here.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, Self

from ovas.errors import ApplicationNotFound, ProfileNotFound, VersionNotFound
from ovas.ledger import Ledger, MemoryLedger
from ovas.lifecycle import Mark, Observed, Outcome, Record
from ovas.models import Application, Profile, SessionQuery, SessionRequest, Version, WarmPool


def utcnow() -> datetime:
    """The time now, in UTC: the clock backends and the services use unless given another."""
    return datetime.now(UTC)


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

    def warm_pools(self) -> list[WarmPool]:
        """All warm pools (`kind: WarmPool`), in any order; none by default."""
        return []

    def describe(self, insider: bool) -> dict[str, Any]:
        """Where this catalog lives, for the startup log and `/ready`: with `insider` False
        only what anyone may read (no server paths or addresses). Reads nothing."""
        return {}

    def counts(self) -> dict[str, int]:
        """How many applications, versions and profiles are served, as
        `{"applications": n, "versions": n, "profiles": n}`. Raises what the reads raise."""
        apps = self.applications()
        versions = sum(len(self.versions(a.id)) for a in apps)
        return {"applications": len(apps), "versions": versions, "profiles": len(self.profiles())}

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


class SessionBackend(abc.ABC):
    """Runs Kit streams, and reports what its engine shows of them: backends observe, the core
    decides (`ovas.lifecycle`). One instance serves every request of one ovas process, from
    many threads at once; several processes (gunicorn workers, replicas) may share one
    engine, so the engine, never this object's memory, is the record of which sessions exist.

    A session's `Record` (what was asked, its marks, its outcome) is kept for every process
    (`ovas.Backend` keeps it in the backend's ledger). `observe*` read it with an
    `Observation` of the workload; the core then asks `mark` and `finish` to persist what it
    decided.

    `now` is the clock, a callable returning an aware UTC datetime; tests inject one.
    Plugins register a subclass in the `ovas.backends` entry-point group.
    """

    name: ClassVar[str] = ""
    # True when it implements `claim` and admits `request.pool_size`: warm pools run on it.
    keeps_warm_pools: ClassVar[bool] = False
    # Whether processes sharing one engine see the same sessions (the engine is the record);
    # a backend keeping them in its own memory says False, and runs in one process only.
    shared: ClassVar[bool] = True
    catalog: Catalog
    now: Callable[[], datetime] = staticmethod(utcnow)

    @classmethod
    @abc.abstractmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Self:
        """Build from the app's settings (`OVAS_*` without the prefix: `CATALOG_PATH`,
        `DOCKER_PORT_RANGE`...). Must not contact the engine: ovas starts without one."""

    @property
    def ledger(self) -> Ledger:
        """Where the core keeps the records it shares between processes (`ovas.ledger`). A
        backend whose engine several processes share supplies one in that engine; by default
        a `MemoryLedger`, which only this process sees (right for a backend that keeps its
        sessions in its own memory, `shared = False`)."""
        ledger = self.__dict__.get("_core_ledger")
        if ledger is None:
            ledger = self.__dict__.setdefault("_core_ledger", MemoryLedger())
        return ledger

    @ledger.setter
    def ledger(self, ledger: Ledger) -> None:
        self.__dict__["_core_ledger"] = ledger

    @abc.abstractmethod
    def start(self, request: SessionRequest) -> Observed:
        """Begin a session and return at once, normally with its workload WAITING. Records
        `request.clocks` and `request.deadline` with the session.

        Admission is atomic across processes: with `request.capacity` (all users) or
        `request.user_capacity` (this user) > 0, never more live sessions than that exist at
        once (ended and failed sessions kept for their retention do not count). A warm
        pool's start (`request.pool`, owned by nobody) is admitted against the capacity and
        `request.pool_size`: never more unclaimed sessions of that pool and version at once.
        Raises `CapacityExceeded` / `UserCapacityExceeded` (nothing is left behind) while
        what it needs is held by others, `Unsatisfiable` when this host can never give it
        (a profile asking for more GPUs than there are), `BackendUnavailable`.
        """

    @abc.abstractmethod
    def observe(self, session_id: str) -> Observed:
        """The session's record and its workload now, probing readiness for at most about a
        second. Raises `SessionNotFound`."""

    @abc.abstractmethod
    def observe_all(self) -> list[Observed]:
        """Every session, with one call to the engine (not one per session). Readiness may be
        reported from the record without probing each session."""

    def records(self) -> list[Record]:
        """Every session's record, without its workload's state: what a warm pool's claim
        reads, so a backend whose engine lists records without probing anything overrides
        it (one call). By default from `observe_all`."""
        return [o.record for o in self.observe_all()]

    def observe_page(self, query: SessionQuery) -> list[Observed]:
        """One page of sessions, sorted and filtered as `query` says (`GET /stream`).

        By default `query.select(self.observe_all())`. A backend whose engine lists its
        sessions' records more cheaply than their states overrides it to read the records of
        all and the state of only the page's sessions, in a number of calls that does not
        grow with the number of sessions."""
        return query.select(self.observe_all(), key=lambda o: o.record)

    @abc.abstractmethod
    def mark(self, session_id: str, mark: Mark, at: datetime | None) -> bool:
        """Remember `mark` at `at` with the session (None forgets it), for every process and
        restart. True when this call set it, False when it was set already (or, for None,
        was not set): the first process to mark a session READY reports it ready. A session
        gone meanwhile is not an error (False)."""

    def claim(
        self, session_id: str, username: str, at: datetime, *, user_capacity: int = 0
    ) -> bool:
        """Hand a warm pool's unclaimed session to `username` at `at`. Atomic across
        processes: of any number of calls for one session, at most one returns True; from
        then on its record says `username` and `Mark.CLAIMED` at `at`, and it no longer
        counts against its pool's `pool_size`. With `user_capacity` > 0 the user's live
        sessions are admitted as by `start`.

        False when it is claimed already, gone, ended, or no pool's. Raises
        `UserCapacityExceeded` (nothing changed), `BackendUnavailable`, and
        `NotImplementedError` where the backend keeps no warm pools."""
        raise NotImplementedError

    @abc.abstractmethod
    def finish(self, session_id: str, outcome: Outcome) -> bool:
        """The session reached `outcome`: record it, then end the workload (its container or
        pod stops) and free everything it holds (GPUs, ports, capacity slots), keeping the
        record, with its last log lines, until the core removes it with `stop`.

        Idempotent: True only for the call that recorded the outcome; later calls complete
        what an interrupted one left and return False. A session gone is not an error."""

    @abc.abstractmethod
    def stop(self, session_id: str) -> None:
        """Remove everything of the session now, also while it is still starting.

        Raises `SessionNotFound` if no such session exists; stopping a session that vanished
        while stopping is not an error."""

    def collect(self, now: datetime) -> list[str]:
        """Remove anything labelled as ours that belongs to no well-formed session, and
        complete finishes an interrupted process left undone. Returns what it removed. Safe
        to run in several processes at once."""
        return []

    def logs(self, session_id: str, tail: int = 100) -> list[str]:
        """The session's last `tail` log lines, while it is kept. Raises `SessionNotFound`."""
        self.observe(session_id)
        return []

    def check(self) -> None:
        """Raise `BackendUnavailable` if the engine cannot be reached now."""

    def describe(self, insider: bool) -> dict[str, Any]:
        """The effective settings an operator checks, for the startup log and `/ready`, as
        JSON-ready values (e.g. the engine's address without credentials, a port range,
        the GPUs found). With `insider` False, only what anyone may read: no addresses,
        paths or device names. Must not contact the engine."""
        return {}

    def close(self) -> None:
        """Release connections and background threads (called when the app shuts down)."""
