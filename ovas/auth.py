"""Who is calling, and what they may do. Four modes (`OVAS_AUTH`):

- `none`: everyone is `anonymous` with every role, as NVIDIA's OVAS (put a gateway in front);
- `header`: a gateway in front says who the caller is in request headers, believed only from
  trusted proxy addresses and, when a shared secret is set, only with that secret;
- `jwt`: `Authorization: Bearer <JWT>` verified against an OIDC issuer's JWKS (signature,
  issuer, audience, expiry); roles from a configurable claim;
- `apikey`: `Authorization: Bearer <key>` or `X-API-Key: <key>`, checked against SHA-256
  hashes in a file, each with a user and roles.

Roles nest: `admin` can do all a `streamer` can, who can do all a `viewer` can.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import threading
import unicodedata
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ovas.errors import ConfigurationError, Forbidden, Unauthorized

log = logging.getLogger(__name__)

VIEWER, STREAMER, ADMIN = "viewer", "streamer", "admin"
ROLES = (VIEWER, STREAMER, ADMIN)
_RANK = {role: rank for rank, role in enumerate(ROLES)}
MAX_USERNAME = 253


@dataclass(frozen=True)
class Identity:
    username: str
    roles: frozenset[str]

    @property
    def rank(self) -> int:
        return max((_RANK[r] for r in self.roles if r in _RANK), default=-1)

    @property
    def is_admin(self) -> bool:
        return self.rank >= _RANK[ADMIN]

    def require(self, role: str) -> None:
        """Raise `Forbidden` unless this identity holds `role` or a higher one."""
        if self.rank < _RANK[role]:
            raise Forbidden(f"This needs the '{role}' role")


ANONYMOUS = Identity("anonymous", frozenset(ROLES))


def username_problem(name: str) -> str | None:
    """Why `name` (as read, surrounding blanks removed) cannot name a user; None if it can.
    The one rule for every mode and for `ovas apikey new`: 1 to `MAX_USERNAME` characters
    (a Kubernetes object name's limit), no control characters or line breaks, which would
    forge lines in the audit log."""
    if not name:
        return "is empty"
    if len(name) > MAX_USERNAME:
        return f"is longer than {MAX_USERNAME} characters"
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in name):
        return "holds a control character or a line break"
    return None


def _username(value: Any) -> str:
    name = str(value or "").strip()
    if username_problem(name):
        raise Unauthorized("The credentials name no usable user")
    return name


def _roles(value: Any) -> frozenset[str]:
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    if not isinstance(value, list | tuple | set | frozenset):
        return frozenset()
    names = (str(r).strip().lower() for r in value)
    return frozenset(r for r in names if r in _RANK)


class Authenticator:
    """Turns a request's headers and peer address into an `Identity`, or raises
    `Unauthorized`."""

    scheme = "Bearer"
    problem = ""  # what is wrong with its configuration now, for /ready ("" when nothing)

    def identify(self, headers: Mapping[str, str], remote_addr: str | None) -> Identity:
        raise NotImplementedError


class NoAuth(Authenticator):
    def identify(self, headers, remote_addr) -> Identity:
        return ANONYMOUS


def _bearer(headers: Mapping[str, str]) -> str | None:
    value = headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


class HeaderAuth(Authenticator):
    scheme = "Gateway"

    def __init__(
        self,
        *,
        user_header: str = "X-Forwarded-User",
        roles_header: str = "X-Forwarded-Roles",
        trusted_proxies: list[str] = ("127.0.0.1/32", "::1/128"),
        secret_header: str = "X-Ovas-Proxy-Secret",
        secret: str = "",
        default_roles: frozenset[str] = frozenset({STREAMER}),
    ):
        self.user_header = user_header
        self.roles_header = roles_header
        try:
            self.trusted = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]
        except ValueError as exc:
            raise ConfigurationError(f"OVAS_AUTH_TRUSTED_PROXIES: {exc}") from None
        self.secret_header = secret_header
        self.secret = secret
        self.default_roles = default_roles

    def _trusted(self, remote_addr: str | None) -> bool:
        try:
            address = ipaddress.ip_address(remote_addr or "")
        except ValueError:
            return False
        return any(address in network for network in self.trusted)

    def identify(self, headers, remote_addr) -> Identity:
        if not self._trusted(remote_addr):
            raise Unauthorized(
                "Identity headers are accepted only from trusted proxies", scheme=self.scheme
            )
        if self.secret and not hmac.compare_digest(
            headers.get(self.secret_header, "").encode(), self.secret.encode()
        ):
            raise Unauthorized("The proxy's shared secret is missing or wrong", scheme=self.scheme)
        user = headers.get(self.user_header)
        if not user:
            raise Unauthorized(f"The {self.user_header} header is missing", scheme=self.scheme)
        # The default roles stand in only for a missing header: a gateway that names roles
        # ovas does not know ("guest") grants none, never the default.
        raw = headers.get(self.roles_header)
        roles = self.default_roles if raw is None else _roles(raw)
        return Identity(_username(user), roles)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "ovas_" + secrets.token_urlsafe(32)


class _BadFile(Exception):
    """Why the keys file cannot be used, in words without its path."""


def _unreadable(exc: OSError) -> str:
    return f"cannot be read: {exc.strerror or type(exc).__name__}"


class ApiKeyAuth(Authenticator):
    """Keys in a YAML (or JSON) file: a list of `{sha256, user, roles}`. The file is read again
    when it changes, so keys can be added and revoked without a restart."""

    def __init__(self, path: str):
        if not path:
            raise ConfigurationError("OVAS_AUTH=apikey needs OVAS_APIKEYS_FILE")
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._loaded = False
        self._keys: list[tuple[bytes, Identity]] = []
        self._load()

    def _load(self) -> list[tuple[bytes, Identity]]:
        """The keys: read again when the file changed. Raises `ConfigurationError` when the
        file cannot be read or is not valid at start; once ovas serves, a file that goes bad
        (deleted, unreadable, or saved with any error, one bad entry included) is logged,
        shown in `/ready` (`problem`), and the last good keys stay in use."""
        try:
            stat = self.path.stat()
            stamp: tuple | None = (stat.st_mtime_ns, stat.st_size)
            gone = None
        except OSError as exc:
            stamp = None
            gone = "does not exist" if isinstance(exc, FileNotFoundError) else _unreadable(exc)
        with self._lock:
            if stamp is not None and stamp == self._stamp:
                return self._keys
            try:
                if gone:
                    raise _BadFile(gone)
                keys = self._read()
            except _BadFile as exc:
                if not self._loaded:
                    raise ConfigurationError(f"OVAS_APIKEYS_FILE {self.path} {exc}") from None
                # Said without the path: /ready is public.
                problem = f"OVAS_APIKEYS_FILE {exc}; the last good keys stay in use"
                if problem != self.problem:
                    log.error(
                        "OVAS_APIKEYS_FILE %s %s; the last good keys stay in use", self.path, exc
                    )
                # A bad file is read again only once it changes.
                self.problem, self._stamp = problem, stamp
                return self._keys
            self._keys, self._stamp, self._loaded, self.problem = keys, stamp, True, ""
            return keys

    def _read(self) -> list[tuple[bytes, Identity]]:
        """The file's keys. Raises `_BadFile` saying why, whatever the reason: unreadable,
        not YAML, nested past what the parser can follow, or one entry not valid."""
        try:
            entries = yaml.safe_load(self.path.read_text()) or []
        except OSError as exc:
            raise _BadFile(_unreadable(exc)) from None
        except (ValueError, yaml.YAMLError) as exc:
            raise _BadFile(f"cannot be parsed: {exc}") from None
        except (RecursionError, MemoryError):
            raise _BadFile("cannot be parsed: it nests too deep or is too large") from None
        if not isinstance(entries, list):
            raise _BadFile("is not a list of keys")
        keys = []
        for number, entry in enumerate(entries, 1):
            if not isinstance(entry, dict):
                raise _BadFile(f"is not valid: entry {number} is not a mapping")
            digest = entry.get("sha256")
            if not isinstance(digest, str) or len(digest) != 64:
                raise _BadFile(f"is not valid: entry {number} has no sha256")
            user = entry.get("user")
            problem = "is not a string" if not isinstance(user, str) else None
            problem = problem or username_problem(user.strip())
            if problem:
                raise _BadFile(f"is not valid: entry {number}: user {problem}")
            keys.append(
                (digest.lower().encode(), Identity(user.strip(), _roles(entry.get("roles"))))
            )
        return keys

    def identify(self, headers, remote_addr) -> Identity:
        key = _bearer(headers) or headers.get("X-API-Key")
        if not key:
            raise Unauthorized("An API key is required")
        digest = hash_key(key).encode()
        found = None
        for stored, identity in self._load():
            # Compare with every entry, so timing says nothing about which one matched.
            if hmac.compare_digest(stored, digest):
                found = identity
        if found is None:
            raise Unauthorized("The API key is not valid")
        return found


class JwtAuth(Authenticator):
    """OIDC bearer tokens. The JWKS is fetched from `jwks_url` (or discovered from the
    issuer's `/.well-known/openid-configuration`), cached, and fetched again when a token names
    a key it does not hold."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        jwks_url: str = "",
        roles_claim: str = "roles",
        username_claim: str = "preferred_username",
        algorithms: tuple[str, ...] = ("RS256", "ES256"),
        leeway: float = 30,
        cache_seconds: int = 300,
        refresh_cooldown: float = 30,
    ):
        import jwt  # PyJWT, with its crypto extra

        if not issuer or not audience:
            raise ConfigurationError("OVAS_AUTH=jwt needs OVAS_JWT_ISSUER and OVAS_JWT_AUDIENCE")
        self.jwt = jwt
        self.issuer = issuer
        self.audience = audience
        self.jwks_url = jwks_url
        self.roles_claim = roles_claim
        self.username_claim = username_claim
        self.algorithms = list(algorithms)
        self.leeway = leeway
        self.cache_seconds = cache_seconds
        # An unknown key id refetches the JWKS at most this often, so forged tokens cannot
        # make ovas hammer the issuer.
        self.refresh_cooldown = refresh_cooldown
        self._client = None
        self._lock = threading.Lock()

    def _jwks(self):
        with self._lock:
            if self._client is None:
                url = self.jwks_url or self._discover()
                self._client = self.jwt.PyJWKClient(
                    url,
                    cache_keys=True,
                    lifespan=self.cache_seconds,
                    timeout=5,
                    cooldown_duration=self.refresh_cooldown,
                )
            return self._client

    def _discover(self) -> str:
        """The issuer's `jwks_uri` (OpenID Connect Discovery 1.0, section 4). Raises
        `jwt.PyJWKClientConnectionError` when the issuer cannot be reached or answers
        without one, as PyJWT does for an unreachable JWKS URL."""
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                jwks_uri = json.load(answer)["jwks_uri"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise self.jwt.PyJWKClientConnectionError(
                f"the issuer's OpenID configuration could not be read: {exc}"
            ) from None
        if not isinstance(jwks_uri, str) or not jwks_uri:
            raise self.jwt.PyJWKClientConnectionError("the issuer names no jwks_uri")
        return jwks_uri

    def identify(self, headers, remote_addr) -> Identity:
        token = _bearer(headers)
        if not token:
            raise Unauthorized("A bearer token is required")
        jwt = self.jwt
        try:
            key = self._jwks().get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                key.key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("The token has expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("The token is not meant for this service") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("The token comes from an untrusted issuer") from None
        except jwt.PyJWKClientConnectionError:
            raise Unauthorized("The issuer's keys cannot be fetched right now") from None
        except jwt.PyJWTError:
            raise Unauthorized("The token is not valid") from None
        roles: Any = claims
        for part in self.roles_claim.split("."):
            roles = roles.get(part) if isinstance(roles, dict) else None
        user = claims.get(self.username_claim) or claims.get("sub")
        return Identity(_username(user), _roles(roles or []))


def build_authenticator(config: Mapping[str, Any]) -> Authenticator:
    """The authenticator `AUTH` names, from the `AUTH_*`, `JWT_*` and `APIKEYS_FILE` settings."""
    mode = str(config.get("AUTH", "none")).lower()
    if mode == "none":
        return NoAuth()
    if mode == "header":
        proxies = str(config.get("AUTH_TRUSTED_PROXIES", "127.0.0.1/32,::1/128"))
        return HeaderAuth(
            user_header=config.get("AUTH_USER_HEADER", "X-Forwarded-User"),
            roles_header=config.get("AUTH_ROLES_HEADER", "X-Forwarded-Roles"),
            trusted_proxies=[p.strip() for p in proxies.split(",") if p.strip()],
            secret_header=config.get("AUTH_PROXY_SECRET_HEADER", "X-Ovas-Proxy-Secret"),
            secret=str(config.get("AUTH_PROXY_SECRET", "") or ""),
            default_roles=_roles(config.get("AUTH_DEFAULT_ROLES", STREAMER)),
        )
    if mode == "jwt":
        return JwtAuth(
            issuer=str(config.get("JWT_ISSUER", "")),
            audience=str(config.get("JWT_AUDIENCE", "")),
            jwks_url=str(config.get("JWT_JWKS_URL", "")),
            roles_claim=str(config.get("JWT_ROLES_CLAIM", "roles")),
            username_claim=str(config.get("JWT_USERNAME_CLAIM", "preferred_username")),
            refresh_cooldown=float(config.get("JWT_REFRESH_COOLDOWN", 30)),
        )
    if mode == "apikey":
        return ApiKeyAuth(str(config.get("APIKEYS_FILE", "")))
    raise ConfigurationError(f"OVAS_AUTH must be none, header, jwt or apikey, not '{mode}'")
