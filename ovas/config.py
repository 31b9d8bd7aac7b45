"""Settings: defaults here, overridden by `OVAS_*` environment variables, then by a test's
config. Keys are the variable names without `OVAS_` (`OVAS_SESSION_CAPACITY` ->
`SESSION_CAPACITY`)."""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ovas.bounds import (
    BODY_BYTES,
    CLIENTS,
    DEADLINE,
    PORT,
    SECONDS,
    SESSIONS,
    THREADS,
    WORKERS,
    Bounds,
)
from ovas.errors import ConfigurationError

DEFAULT_RETENTION = 3600

# NVIDIA's OVAS spells this one setting its own way; honour it too.
OVAS_EDITING_VARIABLE = "NV.OV.SVC.APPLICATIONS.ENDPOINTS.EDITING.ENABLED"


@dataclass(frozen=True)
class Setting:
    """One setting: `name` is the environment variable; `default` the value used when it
    is unset (None: no value); `shown` the default as the README writes it, when that is
    not the value itself. `key` is the app config key (the name without `OVAS_`); settings
    read by something other than the app (gunicorn, an SDK) have none. `bounds`: the range
    of a duration or a count (`ovas.bounds`), refused outside it at startup."""

    name: str
    meaning: str
    default: Any = None
    shown: str | None = None
    app: bool = True
    bounds: Bounds | None = None

    @property
    def key(self) -> str | None:
        return self.name.removeprefix("OVAS_") if self.app else None

    def default_text(self) -> str:
        if self.shown is not None:
            return self.shown
        if self.default is None or self.default == "":
            return ""
        value = str(self.default).lower() if isinstance(self.default, bool) else self.default
        return f"`{value}`"


def _sample_catalog() -> Path:
    """The sample catalog of a source checkout or editable install (`config/catalog` next
    to the `ovas` package), found wherever ovas is started from."""
    return Path(__file__).resolve().parents[1] / "config" / "catalog"


# Every setting ovas reads, once: the app's defaults come from here, and the README's table
# is checked against it (tests/test_settings_table.py).
SETTINGS: tuple[Setting, ...] = (
    Setting(
        "OVAS_BACKEND",
        "backend name from entry-point group `ovas.backends`, or `module:Class`",
        "docker",
    ),
    Setting(
        "OVAS_CATALOG_PATH",
        "folder of catalog YAML for the file catalog (Docker backend)",
        str(_sample_catalog()),
        "the sample `config/catalog` of the checkout ovas runs from",
    ),
    Setting(
        "OVAS_EDITING_ENABLED",
        "editing routes on (`NV.OV.SVC.APPLICATIONS.ENDPOINTS.EDITING.ENABLED` too)",
        False,
    ),
    Setting(
        "OVAS_SESSION_CAPACITY",
        "most sessions at once, all users (0 = only the backend's own limits); 503 beyond",
        0,
        bounds=SESSIONS,
    ),
    Setting(
        "OVAS_USER_SESSION_CAPACITY",
        "most sessions at once per user (0 = no limit); 429 beyond",
        0,
        bounds=SESSIONS,
    ),
    Setting(
        "OVAS_START_RATE_LIMIT",
        "session starts per user (empty turns it off); 429 beyond",
        "30/minute",
    ),
    Setting(
        "OVAS_RATELIMIT_STORAGE_URI",
        "where the rate limit counts (`memory://` is per process; `redis://…` shares one "
        "count between workers)",
        "memory://",
    ),
    Setting(
        "OVAS_START_TIMEOUT",
        "seconds a session may take to become ready before it fails (it cannot be turned off)",
        900,
        bounds=DEADLINE,
    ),
    Setting(
        "OVAS_SESSION_CONNECT_TIMEOUT",
        "seconds a ready session may wait for its first client before it ends "
        "(`connect_timeout`; 0 = off)",
        300,
        bounds=SECONDS,
    ),
    Setting(
        "OVAS_SESSION_IDLE_TIMEOUT",
        "seconds a session may have no client before it ends (`idle_timeout`; 0 = off)",
        300,
        bounds=SECONDS,
    ),
    Setting(
        "OVAS_SESSION_MAX_LIFETIME",
        "seconds after its creation any session ends (`max_lifetime`; 0 = off)",
        28800,
        bounds=SECONDS,
    ),
    Setting(
        "OVAS_SESSION_RETENTION",
        "seconds an ended or failed session stays visible, holding nothing, before it is removed",
        DEFAULT_RETENTION,
        bounds=SECONDS,
    ),
    Setting("OVAS_REAP_GRACE", "the older name of `OVAS_SESSION_RETENTION`", None, bounds=SECONDS),
    Setting(
        "OVAS_REAP_INTERVAL",
        "seconds between passes of the reaper, which applies the clocks and the retention, "
        "and tends the warm pools (0 = off)",
        30,
        bounds=SECONDS,
    ),
    Setting(
        "OVAS_QUEUE_SIZE",
        "most starts waiting in line when the capacity or the GPUs are taken (0 = no line: "
        "503 when full); 503 beyond",
        100,
        bounds=SESSIONS,
    ),
    Setting(
        "OVAS_QUEUE_ABANDON_TIMEOUT",
        "seconds a queued start may go without anyone asking for its status before it is "
        "dropped (`abandoned`)",
        180,
        bounds=DEADLINE,
    ),
    Setting(
        "OVAS_IDEMPOTENCY_TTL",
        "seconds a start's `Idempotency-Key` is remembered: the same user and key answer "
        "the same session",
        86400,
        bounds=DEADLINE,
    ),
    Setting(
        "OVAS_POOL_MAX_AGE",
        "seconds after which an unclaimed warm pool session is renewed (0 = never)",
        3600,
        bounds=SECONDS,
    ),
    Setting(
        "OVAS_USD_PATH_ROOTS",
        "folders an absolute `usd_stage_uri` may lie under, comma-separated",
        "/app/samples",
    ),
    Setting(
        "OVAS_MAX_CONTENT_LENGTH",
        "largest request body, in bytes; 413 beyond",
        64 * 1024,
        bounds=BODY_BYTES,
    ),
    Setting(
        "OVAS_CORS_ORIGINS",
        "allowed browser origins, comma-separated (`*`: any); with `OVAS_AUTH=none` other "
        "origins are refused (403)",
        "",
        shown="loopback origins (any port) while `OVAS_AUTH=none`; `*` with authentication",
    ),
    Setting(
        "OVAS_ALLOWED_HOSTS",
        "with `OVAS_AUTH=none`, the Host names this server answers to besides the loopback "
        "names and the bind host: names, addresses, `.domain` (and its subdomains) or `*`; "
        "other Hosts are refused (403)",
        "",
        shown="loopback names and the bind host (any, when bound to all interfaces)",
    ),
    Setting("OVAS_AUTH", "`none`, `header`, `jwt` or `apikey` (see Security)", "none"),
    Setting("OVAS_AUTH_USER_HEADER", "`header`: the header naming the user", "X-Forwarded-User"),
    Setting(
        "OVAS_AUTH_ROLES_HEADER",
        "`header`: the header listing the roles, comma-separated",
        "X-Forwarded-Roles",
    ),
    Setting(
        "OVAS_AUTH_TRUSTED_PROXIES",
        "`header`: CIDRs whose headers are believed",
        "127.0.0.1/32,::1/128",
    ),
    Setting(
        "OVAS_AUTH_PROXY_SECRET",
        "`header`: a shared secret the gateway must send too (empty: none)",
        "",
    ),
    Setting(
        "OVAS_AUTH_PROXY_SECRET_HEADER",
        "`header`: the header carrying that secret",
        "X-Ovas-Proxy-Secret",
    ),
    Setting(
        "OVAS_AUTH_DEFAULT_ROLES", "`header`: roles of a user the headers give none", "streamer"
    ),
    Setting("OVAS_JWT_ISSUER", "`jwt`: the OIDC issuer", ""),
    Setting("OVAS_JWT_AUDIENCE", "`jwt`: the audience tokens must name", ""),
    Setting(
        "OVAS_JWT_JWKS_URL",
        "`jwt`: where the signing keys are",
        "",
        shown="discovered from the issuer",
    ),
    Setting(
        "OVAS_JWT_ROLES_CLAIM",
        "`jwt`: the claim holding the roles (dotted, e.g. `realm_access.roles`)",
        "roles",
    ),
    Setting(
        "OVAS_JWT_USERNAME_CLAIM",
        "`jwt`: the claim naming the user (else `sub`)",
        "preferred_username",
    ),
    Setting(
        "OVAS_JWT_REFRESH_COOLDOWN",
        "`jwt`: seconds between fetches of the keys for an unknown key id",
        30,
        bounds=SECONDS,
    ),
    Setting(
        "OVAS_APIKEYS_FILE",
        "`apikey`: a YAML list of `{sha256, user, roles}`, read again when it changes",
        "",
    ),
    Setting("OVAS_LOG_FORMAT", "`plain` or `json` (one object a line)", "plain"),
    Setting("OVAS_LOG_LEVEL", "the log level", "INFO"),
    Setting("DOCKER_HOST", "Docker engine (the SDK's own variable)", None, "local socket", False),
    Setting("OVAS_DOCKER_PUBLIC_HOST", "address put in `routes`", "127.0.0.1"),
    Setting("OVAS_DOCKER_PORT_RANGE", "host ports handed to sessions", "31000-31999"),
    Setting(
        "OVAS_DOCKER_GPUS",
        "`auto`, `none`, device indexes/UUIDs `0,1`, or CDI names `nvidia.com/gpu=0`",
        "auto",
    ),
    Setting("OVAS_DOCKER_BIND_ADDRESS", "host address session ports are published on", "127.0.0.1"),
    Setting(
        "OVAS_DOCKER_PROBE_HOST",
        "where ovas probes a session's published ports",
        "",
        shown="the bind address",
    ),
    Setting(
        "KUBECONFIG",
        "cluster config outside a cluster (in-cluster config is used inside a pod)",
        None,
        app=False,
    ),
    Setting(
        "OVAS_KUBERNETES_NAMESPACE", "namespace of catalog objects and sessions", "omni-streaming"
    ),
    Setting("OVAS_KUBERNETES_SESSION_MODE", "`pod` or `helmrelease`", "pod"),
    Setting(
        "OVAS_KUBERNETES_PUBLIC_HOST",
        "address given to clients for NodePort sessions",
        "",
        shown="the pod's node IP",
    ),
    Setting(
        "OVAS_KUBERNETES_HELM_REPOSITORY",
        "Flux HelmRepository for a `helm_chart` without `repo/`",
        "omniverse",
    ),
    Setting("OVAS_KUBERNETES_CONTEXT", "kubeconfig context", "", shown="the current one"),
    Setting(
        "OVAS_KUBERNETES_BASE_DOMAIN",
        "with it, a pod session's route key is `<session-id>.<base domain>` (OVAS's secure "
        "streaming endpoints), and its Service is annotated for external-dns",
        "",
        shown="none: routes by address",
    ),
    Setting(
        "OVAS_GATEWAY_DOMAIN",
        "the signaling gateway is on: a ready session's route key is `<session-id>.<domain>` "
        "and its signaling port the gateway's (`ovas gateway`; see the README)",
        "",
        shown="none: the gateway is off",
    ),
    Setting(
        "OVAS_GATEWAY_PUBLIC_PORT",
        "the port clients reach the gateway on (a TLS terminator's, when one is in front)",
        443,
        bounds=PORT,
    ),
    Setting("OVAS_GATEWAY_TLS_CERT", "the gateway's certificate (PEM file)", "", shown="none"),
    Setting(
        "OVAS_GATEWAY_TLS_KEY",
        "the gateway's private key (PEM file); without a certificate and key it serves plain "
        "WebSocket, for use behind a TLS terminator that keeps the Host header",
        "",
        shown="none",
    ),
    Setting(
        "OVAS_GATEWAY_AUTH",
        "who may open a session's signaling socket: `token` (its owner and admins, with a "
        "stream token or the API's credentials) or `none` (anyone who knows the session id)",
        "token",
    ),
    Setting(
        "OVAS_GATEWAY_SECRET",
        "the key stream tokens are signed with, the same in every process and replica",
        "",
        shown="one made once and kept in the backend's ledger (a warning says so)",
    ),
    Setting(
        "OVAS_GATEWAY_MAX_CLIENTS",
        "most signaling sockets open at once to one session through the gateway; 429 beyond",
        4,
        bounds=CLIENTS,
    ),
    Setting(
        "OVAS_BIND",
        "gunicorn: address and port",
        "127.0.0.1:8080",
        shown="`127.0.0.1:8080` (`0.0.0.0:8080` in the image)",
        app=False,
    ),
    Setting(
        "OVAS_WORKERS",
        "gunicorn: worker processes",
        None,
        shown="2 x CPUs + 1, at most 8",
        app=False,
        bounds=WORKERS,
    ),
    Setting("OVAS_THREADS", "gunicorn: threads per worker", 4, app=False, bounds=THREADS),
    Setting(
        "OVAS_TIMEOUT",
        "gunicorn: seconds before a silent worker is replaced",
        30,
        app=False,
        bounds=SECONDS,
    ),
    Setting(
        "OVAS_KEEPALIVE",
        "gunicorn: seconds an idle keep-alive connection stays open (more than any proxy's)",
        75,
        app=False,
        bounds=SECONDS,
    ),
    Setting(
        "OVAS_FORWARDED_ALLOW_IPS",
        "gunicorn: proxies trusted to say a request came over https",
        "127.0.0.1,::1",
        app=False,
    ),
    Setting(
        "PROMETHEUS_MULTIPROC_DIR",
        "gunicorn: where workers keep their metrics",
        None,
        shown="a fresh temporary folder",
        app=False,
    ),
)

DEFAULTS: dict[str, Any] = {
    s.key: s.default
    for s in SETTINGS
    # SESSION_RETENTION: unless only the older OVAS_REAP_GRACE is set (see normalise).
    if s.key and s.default is not None and s.key != "SESSION_RETENTION"
}
DEFAULTS["JSON_SORT_KEYS"] = False


def settings_table() -> str:
    """SETTINGS as the README's Markdown table."""
    rows = ["| Variable | Meaning | Default |", "|---|---|---|"]
    rows += [f"| `{s.name}` | {describe(s)} | {s.default_text()} |" for s in SETTINGS]
    return "\n".join(rows)


def describe(setting: Setting) -> str:
    """What the setting means, with its range when it has one (the README table's words)."""
    if setting.bounds is None:
        return setting.meaning
    return f"{setting.meaning} (range {setting.bounds.low} to {setting.bounds.high})"


# Yes/no settings (read by `as_bool`); the others are text or, with bounds, numbers.
BOOLEANS = ("EDITING_ENABLED",)
BOUNDED = {s.key: s for s in SETTINGS if s.key and s.bounds}


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
    for key in BOOLEANS:
        config[key] = as_bool(config.get(key, False), key)
    # OVAS_REAP_GRACE is what OVAS_SESSION_RETENTION was called before session clocks.
    if config.get("REAP_GRACE") is not None:
        config["REAP_GRACE"] = number(BOUNDED["REAP_GRACE"], config["REAP_GRACE"])
    config.setdefault("SESSION_RETENTION", config.get("REAP_GRACE", DEFAULT_RETENTION))
    for key, setting in BOUNDED.items():
        if config.get(key) is not None or setting.default is not None:
            config[key] = number(setting, config.get(key, 0))
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
    config["GATEWAY_DOMAIN"] = str(config.get("GATEWAY_DOMAIN") or "").strip().lower()
    if config["GATEWAY_DOMAIN"] and not _GATEWAY_DOMAIN.match(config["GATEWAY_DOMAIN"]):
        raise ConfigurationError(
            f"OVAS_GATEWAY_DOMAIN {config['GATEWAY_DOMAIN']!r} is not a DNS name "
            "(e.g. streams.example.com)"
        )
    config["GATEWAY_AUTH"] = str(config.get("GATEWAY_AUTH") or "token").strip().lower()
    if config["GATEWAY_AUTH"] not in ("token", "none"):
        raise ConfigurationError("OVAS_GATEWAY_AUTH must be token or none")
    if bool(config.get("GATEWAY_TLS_CERT")) != bool(config.get("GATEWAY_TLS_KEY")):
        raise ConfigurationError(
            "OVAS_GATEWAY_TLS_CERT and OVAS_GATEWAY_TLS_KEY go together: set both or neither"
        )


# RFC 1123 host names of two labels or more, lower case: what a wildcard record can serve.
_GATEWAY_DOMAIN = re.compile(
    r"^(?=.{1,200}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$"
)


def number(setting: Setting, value: Any) -> int:
    """A bounded setting's value (`Setting.bounds`), from text or a number. Raises
    `ConfigurationError` naming the variable and the largest allowed. `from_prefixed_env`
    reads values as JSON, so `1.5` and `true` arrive as a float and a bool: refused, never
    rounded or counted as 1."""
    assert setting.bounds is not None
    try:
        return setting.bounds.read(value, setting.name)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


def gunicorn_number(name: str, default: int, environ=os.environ) -> int:
    """The value of gunicorn's bounded setting `name` (`OVAS_WORKERS`...) from `environ`, or
    `default` when unset or empty. Raises `ConfigurationError` as `number` does."""
    value = environ.get(name, "").strip()
    if not value:
        return default
    return number(next(s for s in SETTINGS if s.name == name), value)


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
