"""Settings: defaults here, overridden by `OVAS_*` environment variables, then by a test's
config. Keys are the variable names without `OVAS_` (`OVAS_SESSION_CAPACITY` ->
`SESSION_CAPACITY`)."""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import MutableMapping
from typing import Any

from ovas.errors import ConfigurationError

# NVIDIA's OVAS spells this one setting its own way; honour it too.
OVAS_EDITING_VARIABLE = "NV.OV.SVC.APPLICATIONS.ENDPOINTS.EDITING.ENABLED"

DEFAULTS: dict[str, Any] = {
    "BACKEND": "docker",
    "CATALOG_PATH": "config/catalog",
    "EDITING_ENABLED": False,
    "SESSION_CAPACITY": 0,
    "USER_SESSION_CAPACITY": 0,
    "START_TIMEOUT": 900,
    "SESSION_CONNECT_TIMEOUT": 300,
    "SESSION_IDLE_TIMEOUT": 300,
    "SESSION_MAX_LIFETIME": 28800,
    # SESSION_RETENTION: 3600, unless only the older OVAS_REAP_GRACE is set (see normalise).
    "REAP_INTERVAL": 30,
    # Empty: loopback origins (any port) while AUTH is none, `*` with authentication.
    "CORS_ORIGINS": "",
    # Empty: loopback names and the bind host (any name when bound to all interfaces); only
    # checked while AUTH is none.
    "ALLOWED_HOSTS": "",
    "AUTH": "none",
    "START_RATE_LIMIT": "30/minute",
    "RATELIMIT_STORAGE_URI": "memory://",
    "USD_PATH_ROOTS": "/app/samples",
    "LOG_FORMAT": "plain",
    "LOG_LEVEL": "INFO",
    "DOCKER_PUBLIC_HOST": "127.0.0.1",
    "DOCKER_PORT_RANGE": "31000-31999",
    "DOCKER_GPUS": "auto",
    "DOCKER_BIND_ADDRESS": "127.0.0.1",
    "DOCKER_PROBE_HOST": "",
    "KUBERNETES_NAMESPACE": "omni-streaming",
    "KUBERNETES_SESSION_MODE": "pod",
    # Request bodies of this API are small; refuse anything larger outright.
    "MAX_CONTENT_LENGTH": 64 * 1024,
    "JSON_SORT_KEYS": False,
}

_BOOLEANS = ("EDITING_ENABLED",)
_INTEGERS = (
    "SESSION_CAPACITY",
    "USER_SESSION_CAPACITY",
    "START_TIMEOUT",
    "SESSION_CONNECT_TIMEOUT",
    "SESSION_IDLE_TIMEOUT",
    "SESSION_MAX_LIFETIME",
    "SESSION_RETENTION",
    "REAP_INTERVAL",
)
DEFAULT_RETENTION = 3600


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def as_bool(value: Any, name: str = "") -> bool:
    """A yes/no setting: true/false, yes/no, on/off, 1/0 (any case). Raises
    `ConfigurationError` naming `OVAS_<name>` for anything else."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ConfigurationError(f"OVAS_{name} must be true or false, not {value!r}")


def apply_environment(config: MutableMapping[str, Any], environ=os.environ) -> None:
    """Read the OVAS editing variable, which `from_prefixed_env` cannot see."""
    if OVAS_EDITING_VARIABLE in environ and "OVAS_EDITING_ENABLED" not in environ:
        config["EDITING_ENABLED"] = environ[OVAS_EDITING_VARIABLE]


def normalise(config: MutableMapping[str, Any]) -> None:
    """Coerce settings that came in as text; raise `ConfigurationError` naming a bad one."""
    for key in _BOOLEANS:
        config[key] = as_bool(config.get(key, False), key)
    # OVAS_REAP_GRACE is what OVAS_SESSION_RETENTION was called before session clocks.
    config.setdefault("SESSION_RETENTION", config.get("REAP_GRACE", DEFAULT_RETENTION))
    for key in _INTEGERS:
        config[key] = _whole(config.get(key, 0), key)
    if _whole(config.get("MAX_CONTENT_LENGTH"), "MAX_CONTENT_LENGTH") == 0:
        raise ConfigurationError("OVAS_MAX_CONTENT_LENGTH must be more than 0")
    config["MAX_CONTENT_LENGTH"] = _whole(config["MAX_CONTENT_LENGTH"], "MAX_CONTENT_LENGTH")
    level = str(config.get("LOG_LEVEL", "INFO")).upper()
    if level not in LOG_LEVELS:
        raise ConfigurationError(f"OVAS_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
    config["LOG_LEVEL"] = level
    roots = config.get("USD_PATH_ROOTS", "")
    if isinstance(roots, str):
        config["USD_PATH_ROOTS"] = tuple(r.strip() for r in roots.split(",") if r.strip())
    if config.get("LOG_FORMAT") not in ("plain", "json"):
        raise ConfigurationError("OVAS_LOG_FORMAT must be plain or json")
    config["CORS_ORIGINS"] = [_origin(o) for o in _items(config.get("CORS_ORIGINS"))]
    config["ALLOWED_HOSTS"] = [_host(h) for h in _items(config.get("ALLOWED_HOSTS"))]


def _whole(value: Any, key: str) -> int:
    """A whole number of at least 0. `from_prefixed_env` reads values as JSON, so `1.5` and
    `true` arrive as a float and a bool: refused, never rounded or counted as 1."""
    if isinstance(value, str):
        value = value.strip()
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"OVAS_{key} must be a whole number, not {value!r}") from None
    if number < 0:
        raise ConfigurationError(f"OVAS_{key} must not be negative")
    return number


def _items(value: Any) -> list[str]:
    if isinstance(value, str):
        value = value.split(",")
    return [str(v).strip() for v in value or () if str(v).strip()]


def _origin(value: str) -> str:
    """`*` or a web origin as browsers send it: scheme://host[:port], nothing after it."""
    parts = urllib.parse.urlsplit(value)
    if value == "*" or (
        parts.scheme in ("http", "https")
        and parts.hostname
        and parts.path in ("", "/")
        and not (parts.query or parts.fragment or parts.username)
        and _port_ok(parts)
    ):
        return value if value == "*" else value.rstrip("/").lower()
    raise ConfigurationError(
        f"OVAS_CORS_ORIGINS: {value!r} is not a web origin (scheme://host[:port], e.g. "
        "http://localhost:5173) or *"
    )


def _port_ok(parts: urllib.parse.SplitResult) -> bool:
    try:
        parts.port  # noqa: B018 (raises ValueError for a port that is not one)
    except ValueError:
        return False
    return True


_LABEL = r"[a-z0-9]([a-z0-9-]*[a-z0-9])?"
_HOST = re.compile(rf"^(\*|\.?{_LABEL}(\.{_LABEL})*|\[?[0-9a-f:.]+\]?)\Z")


def _host(value: str) -> str:
    """A host name, an address, `.domain` (it and every name under it) or `*`."""
    host = value.lower().rstrip(".") if value != "." else value
    if _HOST.match(host):
        return host
    raise ConfigurationError(
        f"OVAS_ALLOWED_HOSTS: {value!r} is not a host name, an address, .domain or * "
        "(no scheme or port)"
    )


ALL_INTERFACES = ("0.0.0.0", "::")


def bind_hosts(environ=os.environ) -> list[str]:
    """The addresses ovas is told to listen on: `flask run`'s FLASK_RUN_HOST and gunicorn's
    OVAS_BIND (host:port), as given; [] when neither is set."""
    hosts = []
    for variable in ("FLASK_RUN_HOST", "OVAS_BIND"):
        value = environ.get(variable, "").strip()
        if variable == "OVAS_BIND" and value.startswith("unix:"):
            continue
        if variable == "OVAS_BIND":
            value = value.rsplit(":", 1)[0] if value.count(":") == 1 or "]" in value else value
        if value:
            hosts.append(value.strip("[]"))
    return hosts
