"""Settings: defaults here, overridden by `OVAS_*` environment variables, then by a test's
config. Keys are the variable names without `OVAS_` (`OVAS_SESSION_CAPACITY` ->
`SESSION_CAPACITY`)."""

from __future__ import annotations

import os
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
    "POOL_MAX_AGE": 3600,
    "CORS_ORIGINS": "*",
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
    "POOL_MAX_AGE",
)
DEFAULT_RETENTION = 3600


def as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def apply_environment(config: MutableMapping[str, Any], environ=os.environ) -> None:
    """Read the OVAS editing variable, which `from_prefixed_env` cannot see."""
    if OVAS_EDITING_VARIABLE in environ and "OVAS_EDITING_ENABLED" not in environ:
        config["EDITING_ENABLED"] = environ[OVAS_EDITING_VARIABLE]


def normalise(config: MutableMapping[str, Any]) -> None:
    """Coerce settings that came in as text; raise `ConfigurationError` naming a bad one."""
    for key in _BOOLEANS:
        config[key] = as_bool(config.get(key, False))
    # OVAS_REAP_GRACE is what OVAS_SESSION_RETENTION was called before session clocks.
    config.setdefault("SESSION_RETENTION", config.get("REAP_GRACE", DEFAULT_RETENTION))
    for key in _INTEGERS:
        try:
            value = int(config.get(key, 0))
        except (TypeError, ValueError):
            raise ConfigurationError(
                f"OVAS_{key} must be a whole number, not {config.get(key)!r}"
            ) from None
        if value < 0:
            raise ConfigurationError(f"OVAS_{key} must not be negative")
        config[key] = value
    roots = config.get("USD_PATH_ROOTS", "")
    if isinstance(roots, str):
        config["USD_PATH_ROOTS"] = tuple(r.strip() for r in roots.split(",") if r.strip())
    if config.get("LOG_FORMAT") not in ("plain", "json"):
        raise ConfigurationError("OVAS_LOG_FORMAT must be plain or json")
    origins = config.get("CORS_ORIGINS", "*")
    if isinstance(origins, str):
        config["CORS_ORIGINS"] = [o.strip() for o in origins.split(",") if o.strip()] or ["*"]
