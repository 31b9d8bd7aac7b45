"""What every response gets, added at the WSGI level where a header costs one list append
(this runs on every poll of every client): the request id, the security headers, and CORS.

CORS: a request without `Origin` (curl, servers) gets no CORS headers; an allowed origin gets
`Access-Control-Allow-Origin` (`*` when every origin is allowed, else the origin itself with
`Vary: Origin`); a preflight also gets the allowed methods, the requested headers and a max
age. No credentials are allowed: ovas uses no cookies.
"""

from __future__ import annotations

import os
import re
import time

from ovas.logs import REQUEST_ID_KEY

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


class EdgeMiddleware:
    def __init__(self, wsgi_app, *, origins: list[str], max_age: int = 600):
        self.wsgi_app = wsgi_app
        self.any_origin = "*" in origins
        self.origins = frozenset(origins)
        self.max_age = str(max_age)

    def _cors(self, environ) -> list[tuple[str, str]]:
        origin = environ.get("HTTP_ORIGIN")
        if not origin:
            return []
        if self.any_origin:
            headers = [("Access-Control-Allow-Origin", "*")]
        elif origin in self.origins:
            headers = [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
        else:
            return []
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
        cors = self._cors(environ) if "HTTP_ORIGIN" in environ else None
        if cors:
            extra = [*extra, *((h, h[0].lower()) for h in cors)]

        def start(status, headers, exc_info=None):
            present = {name.lower() for name, _ in headers}
            headers.extend(h for h, lower in extra if lower not in present)
            headers.append(("X-Request-ID", request_id))
            return start_response(status, headers, exc_info)

        return self.wsgi_app(environ, start)
