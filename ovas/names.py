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


# Image references, as Docker and every OCI registry client parse them: the grammar of
# github.com/distribution/reference (reference.go, regexp.go), the library the Docker engine
# itself uses:
#   reference := name [":" tag] ["@" digest]
#   name      := [domain "/"] path-component ["/" path-component]*
#   domain    := host [":" port-number]; host := domain-name | "[" IPv6address "]"
#   path-component := [a-z0-9]+ (separator [a-z0-9]+)*; separator := [_.] | __ | [-]+
#   tag       := [\w][\w.-]{0,127}
#   digest    := algorithm ":" [0-9a-fA-F]{32,}
# Go's `\w` is ASCII, hence the explicit classes. A name is at most 255 characters.
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_IMAGE_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_IMAGE_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_IMAGE_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE_NAME_PATTERN = re.compile(rf"^{_IMAGE_NAME}\Z")
IMAGE_TAG_PATTERN = re.compile(rf"^{_IMAGE_TAG}\Z")
IMAGE_REFERENCE_PATTERN = re.compile(
    rf"^(?P<name>{_IMAGE_NAME})(?::{_IMAGE_TAG})?(?:@{_IMAGE_DIGEST})?\Z"
)
MAX_IMAGE_NAME = 255
IMAGE_NAME_RULE = (
    "an image name (/-separated components of lowercase letters, digits and the separators "
    ". _ __ -, after an optional registry host[:port]; at most 255 characters)"
)
IMAGE_TAG_RULE = (
    "an image tag (letters, digits, _ . and -, not starting with . or -; at most 128 characters)"
)


def is_image_name(value: str) -> bool:
    """True for an image name without tag or digest (`nvcr.io/nvidia/usd-viewer`,
    `localhost:5000/kit`), by the distribution/reference grammar above."""
    return len(value) <= MAX_IMAGE_NAME and bool(IMAGE_NAME_PATTERN.match(value))


def is_image_tag(value: str) -> bool:
    """True for an image tag (`107.3.2`, `latest`), by the distribution/reference grammar."""
    return bool(IMAGE_TAG_PATTERN.match(value))


def is_image_reference(value: str) -> bool:
    """True for a whole image reference, `name[:tag][@digest]`, by the distribution/reference
    grammar (`nvcr.io/nvidia/usd-viewer:107.3.2`, `kit@sha256:<64 hex>`)."""
    match = IMAGE_REFERENCE_PATTERN.match(value)
    return match is not None and len(match["name"]) <= MAX_IMAGE_NAME


VERSION_IMAGE_FIELDS = {"repository": "container", "tag": "container_version"}


def image_problem(repository: str, tag: str) -> tuple[str, str] | None:
    """What is wrong with the image `repository[:tag]` a version or profile names, as
    (`"repository"` or `"tag"`, why), or None when it is a valid reference. An empty
    `repository` is no problem here (a profile may set it); with an empty `tag` the
    repository may carry its own tag or digest."""
    if tag and not is_image_tag(tag):
        return "tag", f"{tag!r} is not {IMAGE_TAG_RULE}"
    if not repository:
        return None
    if tag and not is_image_name(repository):
        return "repository", f"{repository!r} is not {IMAGE_NAME_RULE}"
    if not tag and not is_image_reference(repository):
        return "repository", f"{repository!r} is not {IMAGE_NAME_RULE}"
    return None
