"""The catalog on the OVAS custom resources (`omniverse.nvidia.com/v1`) in ovas's namespace.

Reads list or get the objects on every call, so every replica answers the same at once.
Objects that are not valid are left out and reported by `check()` (and logged), as the
file catalog does. Edits write the custom resources; an update replaces the object as read,
so a concurrent edit is retried rather than lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from backends.kubernetes.client import Kind, Kube, Missing, Taken
from ovas.backend import Catalog
from ovas.errors import (
    ApplicationNotFound,
    BackendUnavailable,
    Conflict,
    ProfileNotFound,
    VersionNotFound,
)
from ovas.models import Application, Profile, Version, WarmPool
from ovas.resources import (
    API,
    APPLICATION,
    GROUP,
    PLURALS,
    POOL_API,
    POOL_GROUP,
    POOL_PLURAL,
    PROFILE,
    VERSION,
    WARM_POOL,
    application_from_resource,
    application_to_resource,
    profile_from_resource,
    version_from_resource,
    version_to_resource,
    warm_pool_from_resource,
)

log = logging.getLogger(__name__)

APPLICATIONS = Kind(APPLICATION, PLURALS[APPLICATION], GROUP, API)
VERSIONS = Kind(VERSION, PLURALS[VERSION], GROUP, API)
PROFILES = Kind(PROFILE, PLURALS[PROFILE], GROUP, API)
WARM_POOLS = Kind(WARM_POOL, POOL_PLURAL, POOL_GROUP, POOL_API)
_READERS = {
    APPLICATION: application_from_resource,
    VERSION: version_from_resource,
    PROFILE: profile_from_resource,
    WARM_POOL: warm_pool_from_resource,
}
UPDATE_ATTEMPTS = 5


class KubernetesCatalog(Catalog):
    """Applications, versions and profiles as custom resources of one namespace."""

    def __init__(self, kube: Kube, *, refusal: Callable[[Profile], str | None] | None = None):
        """`refusal`: why the backend cannot run a profile as written (None if it can); such
        profiles are served (a start says why it refuses) and reported in `problems`."""
        self.kube = kube
        self.refusal = refusal
        self._reported: set[str] = set()

    # Reading

    def _list(self, kind: Kind) -> list[dict[str, Any]]:
        try:
            return self.kube.list(kind)
        except Missing:
            raise BackendUnavailable(
                f"The {kind.kind} custom resource ({GROUP}/{API}) is not installed in the "
                "cluster; apply ovas's manifests (kubectl apply -k config/deploy)"
            ) from None

    def _parse(self, kind: Kind, objects: list[dict[str, Any]]) -> tuple[list[Any], list[str]]:
        values, problems = [], []
        for obj in objects:
            try:
                values.append(_READERS[kind.kind](obj))
            except ValueError as exc:
                name = (obj.get("metadata") or {}).get("name", "?")
                problems.append(f"{kind.kind} {self.kube.namespace}/{name}: {exc}")
        for problem in set(problems) - self._reported:
            log.error("catalog: %s", problem)
        self._reported |= set(problems)
        return values, problems

    def applications(self) -> list[Application]:
        return self._parse(APPLICATIONS, self._list(APPLICATIONS))[0]

    def application(self, app_id: str) -> Application:
        obj = self.kube.get(APPLICATIONS, app_id)
        if obj is None:
            raise ApplicationNotFound(app_id)
        found, _ = self._parse(APPLICATIONS, [obj])
        if not found:
            raise ApplicationNotFound(app_id)
        return found[0]

    def _version_objects(self, app_id: str) -> list[tuple[dict[str, Any], Version]]:
        objects = self._list(VERSIONS)
        pairs = []
        for obj in objects:
            parsed, _ = self._parse(VERSIONS, [obj])
            if parsed and parsed[0].app_id == app_id:
                pairs.append((obj, parsed[0]))
        return pairs

    def versions(self, app_id: str) -> list[Version]:
        self.application(app_id)
        return [version for _, version in self._version_objects(app_id)]

    def profiles(self) -> list[Profile]:
        return self._parse(PROFILES, self._list(PROFILES))[0]

    def profile(self, profile_id: str) -> Profile:
        obj = self.kube.get(PROFILES, profile_id)
        found = self._parse(PROFILES, [obj])[0] if obj is not None else []
        if not found:
            raise ProfileNotFound(profile_id)
        return found[0]

    def warm_pools(self) -> list[WarmPool]:
        """The namespace's `WarmPool`s (`ovas.io/v1alpha1`); none, logged once, where
        that resource is not installed (it is optional: clusters set up before it have
        none)."""
        return self._parse(WARM_POOLS, self._pools())[0]

    def _pools(self) -> list[dict[str, Any]]:
        try:
            return self.kube.list(WARM_POOLS)
        except Missing:
            if WARM_POOL not in self._reported:
                self._reported.add(WARM_POOL)
                log.warning(
                    "the WarmPool custom resource (%s/%s) is not installed: no warm pools "
                    "(kubectl apply -k config/deploy installs it)",
                    POOL_GROUP,
                    POOL_API,
                )
            return []

    @property
    def problems(self) -> list[str]:
        """Every object that is not valid, and every profile the backend cannot run as
        written (`refusal`), as `Kind namespace/name: field: what is wrong`."""
        problems = []
        for kind in (APPLICATIONS, VERSIONS, PROFILES):
            values, found = self._parse(kind, self._list(kind))
            problems += found
            if kind is PROFILES and self.refusal is not None:
                for profile in values:
                    refused = self.refusal(profile)
                    if refused:
                        where = f"{PROFILE} {self.kube.namespace}/{profile.id}"
                        problems.append(f"{where}: {refused}")
        return problems + self._parse(WARM_POOLS, self._pools())[1]

    def check(self) -> None:
        for kind in (APPLICATIONS, VERSIONS, PROFILES):
            self._list(kind)

    # Editing

    def create_application(self, app: Application) -> None:
        try:
            self.kube.create(APPLICATIONS, application_to_resource(app))
        except Taken:
            raise Conflict(f"Application '{app.id}' already exists") from None

    def update_application(self, app: Application) -> None:
        for _ in range(UPDATE_ATTEMPTS):
            current = self.kube.get(APPLICATIONS, app.id)
            if current is None:
                raise ApplicationNotFound(app.id)
            spec = application_to_resource(app)["spec"]
            updated = {**current, "spec": {**(current.get("spec") or {}), **spec}}
            try:
                self.kube.replace(APPLICATIONS, app.id, updated)
                return
            except Taken:
                continue  # changed since we read it: read again and reapply
            except Missing:
                raise ApplicationNotFound(app.id) from None
        raise Conflict(f"Application '{app.id}' keeps changing; try again")

    def delete_application(self, app_id: str) -> None:
        if self.kube.get(APPLICATIONS, app_id) is None:
            raise ApplicationNotFound(app_id)
        # Versions first: an interrupted delete leaves an application without versions,
        # never versions without their application.
        for obj, _ in self._version_objects(app_id):
            self.kube.delete(VERSIONS, obj["metadata"]["name"])
        if not self.kube.delete(APPLICATIONS, app_id):
            raise ApplicationNotFound(app_id)

    def create_version(self, version: Version) -> None:
        self.application(version.app_id)
        if any(v.version == version.version for _, v in self._version_objects(version.app_id)):
            raise Conflict(f"Version '{version.version}' of '{version.app_id}' already exists")
        try:
            self.kube.create(VERSIONS, version_to_resource(version))
        except Taken:
            raise Conflict(
                f"Version '{version.version}' of '{version.app_id}' already exists"
            ) from None

    def delete_version(self, app_id: str, version: str) -> None:
        self.application(app_id)
        names = [
            obj["metadata"]["name"]
            for obj, v in self._version_objects(app_id)
            if v.version == version
        ]
        if not names:
            raise VersionNotFound(app_id, version)
        for name in names:
            self.kube.delete(VERSIONS, name)
