"""Id and name rules that the core and every backend share: session ids, application and
profile ids, semantic versions. Pure; backends import these, never `ovas.services`."""

from __future__ import annotations

import re
import uuid

import semver

# An application id, as OVAS's editing routes accept it.
# Each ends in \Z, not $: `$` also matches before a final newline ("default\n").
APP_ID_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,62}\Z")
# A profile id is a Kubernetes object name (RFC 1123 subdomain).
PROFILE_ID_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?\Z")
# A version as a request names it: semver, `latest`, or empty (the newest).
VERSION_PATTERN = re.compile(r"^[0-9A-Za-z.+-]{0,128}\Z")
SESSION_ID_PATTERN = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z"
)
MAX_VERSION = 128


def new_session_id() -> str:
    """A new session id: a random UUID (version 4), as OVAS gives."""
    return str(uuid.uuid4())


def is_session_id(value: str) -> bool:
    """True for a lowercase UUID4 string, the only form ovas hands out."""
    return bool(SESSION_ID_PATTERN.match(value))


def is_semver(value: str) -> bool:
    """True for a semantic version (semver.org 2.0.0) of at most 128 characters."""
    return len(value) <= MAX_VERSION and semver.Version.is_valid(value)


def semver_key(version: str) -> tuple[int, semver.Version | str]:
    """A sort key: versions that are not semver sort before every semver one, by text."""
    if is_semver(version):
        return (1, semver.Version.parse(version))
    return (0, version)
