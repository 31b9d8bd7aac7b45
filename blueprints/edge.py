"""What every response gets, added at the WSGI level where a header costs one list append
(this runs on every poll of every client): the request id, the security headers, and CORS.

CORS: a request without `Origin` (curl, servers) gets no CORS headers; an allowed origin gets
`Access-Control-Allow-Origin` (`*` when every origin is allowed, else the origin itself with
`Vary: Origin`); a preflight also gets the allowed methods, the requested headers and a max
age. No credentials are allowed: the only cookies ovas sets (a session's stream token, for
the signaling gateway, `blueprints.streaming.cookies`) reach a page from the API's own
origin only.

With no authentication (`OVAS_AUTH=none`) any web page a developer opens could otherwise drive
their local ovas, so two more rules hold there, as local development servers enforce them
(Jupyter Server's `allow_origin` / `allow_remote_access` / `local_hostnames`, Django's
`ALLOWED_HOSTS`):
- a request whose `Origin` is neither a loopback origin (`http(s)://localhost`, `127.0.0.1`,
  `[::1]`, any port), nor ovas's own (the Host it was sent to), nor named in
  `OVAS_CORS_ORIGINS`, is refused;
- a request whose `Host` is not one of this server's names (`OVAS_ALLOWED_HOSTS`) is refused,
  which defeats DNS rebinding (a hostile name that resolves to 127.0.0.1).
Refusals are JSON 403s, with the same headers as every answer.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import time
from collections.abc import Iterable
from urllib.parse import urlsplit

from ovas.logs import REQUEST_ID_KEY

log = logging.getLogger("ovas")

STARTED_KEY = "ovas.started"  # perf_counter() when the request arrived, for its latency
ASSETS_PREFIX = "/docs-assets/"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_HEADER_LIST = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~, -]{0,1024}$")

SECURITY_HEADERS = [
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Resource-Policy", "cross-origin"),
    # The docs pages run Swagger UI from our own files with one inline bootstrap script.
    (
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self' 'unsafe-inline'; "
        "style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
    ),
]
API_HEADERS = [*SECURITY_HEADERS, ("Cache-Control", "no-store")]
# (header, its name in lower case): what the edge adds unless the app has set it.
API_EXTRA = [(h, h[0].lower()) for h in API_HEADERS]
ASSET_EXTRA = [(h, h[0].lower()) for h in SECURITY_HEADERS]
ALLOWED_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
EXPOSED_HEADERS = "Retry-After, X-Request-ID, WWW-Authenticate"


def canonical_path(path: str) -> str:
    """Clients reach each service with and without its prefix (an ingress may strip it):
    `/applications/cfg/...` is served as `/cfg/...`, and `/stream...` as
    `/streaming/stream...`, the forms the OpenAPI documents describe. One set of routes then
    serves both, and metrics count both as one."""
    if path.startswith("/applications/cfg/") or path == "/applications/cfg":
        return path[len("/applications") :]
    if path.startswith("/stream/") or path == "/stream":
        return "/streaming" + path
    return path


def is_loopback_host(host: str) -> bool:
    """`localhost`, a name under `.localhost` (RFC 6761: always the loopback), or a loopback
    address (127.0.0.0/8, ::1)."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str:
    """The name in a Host header, without its port: `[::1]:8080` -> `::1`."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0].rstrip(".") if host.count(":") <= 1 else host


class HostNames:
    """The names this server answers to: loopback names always, plus `names`, each an exact
    name, `.example.com` (that domain and every name under it, as Django's ALLOWED_HOSTS), or
    `*` (any). Matching ignores case and the port."""

    def __init__(self, names: Iterable[str]):
        names = [n.lower().rstrip(".") for n in names]
        self.any = "*" in names
        self.exact = frozenset(n.strip("[]") for n in names if not n.startswith("."))
        self.suffixes = tuple(n for n in names if n.startswith("."))

    def __contains__(self, host: str) -> bool:
        if self.any or host in self.exact or is_loopback_host(host):
            return True
        return any(host.endswith(s) or host == s[1:] for s in self.suffixes)


class EdgeMiddleware:
    """`origins`: the origins `OVAS_CORS_ORIGINS` names (`*`: all). `loopback_origins`: also
    allow loopback origins and ovas's own. `refuse`: answer 403 to a request from an origin
    not allowed. `hosts`: when given, the Host names served; any other Host is refused."""

    def __init__(
        self,
        wsgi_app,
        *,
        origins: list[str],
        loopback_origins: bool = False,
        refuse: bool = False,
        hosts: HostNames | None = None,
        max_age: int = 600,
    ):
        self.wsgi_app = wsgi_app
        self.any_origin = "*" in origins
        self.origins = frozenset(origins)
        self.loopback_origins = loopback_origins
        self.refuse = refuse and not self.any_origin
        self.hosts = hosts
        self.max_age = str(max_age)

    def _allowed(self, origin: str, environ) -> bool:
        if origin in self.origins:
            return True
        if not self.loopback_origins:
            return False
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False  # `null` (a sandboxed frame, a file:// page) among others
        if is_loopback_host(parts.hostname):
            return True
        # ovas's own pages (the docs) sent from the name the browser reached it by.
        return parts.netloc.lower() == environ.get("HTTP_HOST", "").lower()

    def _cors(self, environ) -> list[tuple[str, str]] | None:
        """The CORS headers for this request; None when its origin is not allowed."""
        origin = environ.get("HTTP_ORIGIN")
        if not origin:
            return []
        if self.any_origin:
            headers = [("Access-Control-Allow-Origin", "*")]
        elif self._allowed(origin, environ):
            headers = [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
        else:
            return None
        asked = environ.get("HTTP_ACCESS_CONTROL_REQUEST_METHOD")
        if environ.get("REQUEST_METHOD") == "OPTIONS" and asked:
            headers.append(("Access-Control-Allow-Methods", ALLOWED_METHODS))
            wanted = environ.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS", "")
            if wanted and _HEADER_LIST.match(wanted):
                headers.append(("Access-Control-Allow-Headers", wanted))
            headers.append(("Access-Control-Max-Age", self.max_age))
        else:
            headers.append(("Access-Control-Expose-Headers", EXPOSED_HEADERS))
        return headers

    def __call__(self, environ, start_response):
        environ[STARTED_KEY] = time.perf_counter()
        environ["PATH_INFO"] = canonical_path(environ.get("PATH_INFO", ""))
        given = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = given if _REQUEST_ID.match(given) else os.urandom(16).hex()
        environ[REQUEST_ID_KEY] = request_id
        extra = ASSET_EXTRA if environ["PATH_INFO"].startswith(ASSETS_PREFIX) else API_EXTRA
        cors = self._cors(environ) if "HTTP_ORIGIN" in environ else []
        if cors:
            extra = [*extra, *((h, h[0].lower()) for h in cors)]

        def start(status, headers, exc_info=None):
            present = {name.lower() for name, _ in headers}
            headers.extend(h for h, lower in extra if lower not in present)
            headers.append(("X-Request-ID", request_id))
            return start_response(status, headers, exc_info)

        if self.hosts is not None:
            host = host_name(environ.get("HTTP_HOST") or environ.get("SERVER_NAME", ""))
            if host not in self.hosts:
                return refuse(start, HOST_REFUSED.format(_shown(host)))
        if cors is None and self.refuse:
            return refuse(start, ORIGIN_REFUSED.format(_shown(environ["HTTP_ORIGIN"])))
        return self.wsgi_app(environ, start)


HOST_REFUSED = (
    "The Host {} is not one of this server's names; with OVAS_AUTH=none only loopback names "
    "and those in OVAS_ALLOWED_HOSTS are served"
)
ORIGIN_REFUSED = (
    "Requests from the web page origin {} are refused while OVAS_AUTH=none; name it in "
    "OVAS_CORS_ORIGINS to allow it"
)


def _shown(value: str) -> str:
    return repr(value[:200])


def refuse(start_response, message: str) -> list[bytes]:
    """A JSON 403 answered at the edge, before the app sees the request."""
    log.info("refused: %s", message)
    body = json.dumps({"detail": message}).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    start_response("403 FORBIDDEN", headers)
    return [body]
