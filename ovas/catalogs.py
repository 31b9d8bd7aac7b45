"""The Application & Profile service's rules, over one `Catalog`: "latest", profile matching
(shell globs over app ids and versions), sorting, tags, what a warm pool can be served from,
and the editing routes' checks. Views call these; these call the catalog."""

from __future__ import annotations

import fnmatch
from dataclasses import replace

from ovas import pools
from ovas.backend import Catalog
from ovas.errors import (
    EditingDisabled,
    InvalidInput,
    OvasError,
    ProfileNotFound,
    VersionNotFound,
)
from ovas.models import Application, Profile, Version, WarmPool
from ovas.names import (
    APP_ID_PATTERN,
    VERSION_IMAGE_FIELDS,
    image_problem,
    is_semver,
    semver_key,
)

LATEST = "latest"


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


def parse_tags(raw: list[str]) -> list[str]:
    """`?tags=a&tags=b,c` -> ["a", "b", "c"]."""
    return [t.strip() for item in raw for t in item.split(",") if t.strip()]


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
