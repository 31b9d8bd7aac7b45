"""Which session a signaling request is for, and what of it goes upstream: pure functions
of the request's Host, raw path and headers, free of any web framework.

A request names its session by its Host, `<session-id>.<domain>` (any port, any case:
OVAS's route key with secure streaming), else by a path prefix `/sessions/<session-id>`,
whose rest (path and query) is what the session's socket receives. Credentials for the
gateway (`ovas.gateway.tokens`) are taken out of the subprotocol list, the query, the
`Authorization` header and the cookies, so that the session's socket never sees them; nor
does it see any other credential of the API's (`CREDENTIAL_HEADERS`, every stream token
cookie), which a Kit app, or whoever runs one, could otherwise replay against the API.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote_plus, urlsplit

from ovas.gateway.tokens import COOKIE, cookie_name
from ovas.names import is_session_id

BEARER_PROTOCOL = "Authorization-Bearer."  # OVAS's streaming-authorization subprotocol
QUERY_TOKEN = "access_token"
_PATH = re.compile(r"^/sessions/([0-9A-Fa-f-]{36})(?=[/?]|\Z)")
# Headers that end at a hop (RFC 9110 7.6.1, RFC 6455 4.1), hold the gateway's credentials,
# or that the gateway sets itself (a client's own X-Forwarded-For must not pass as ours):
# never copied upstream.
HOP_HEADERS = frozenset(
    h.lower()
    for h in (
        "Host",
        "Connection",
        "Upgrade",
        "Keep-Alive",
        "Proxy-Connection",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Content-Length",
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Version",
        "Sec-WebSocket-Protocol",
        "Sec-WebSocket-Extensions",
        "Authorization",
        "Cookie",
        "Forwarded",
        "X-Forwarded-For",
        "X-Forwarded-Proto",
        "X-Forwarded-Host",
    )
)


# The API's credentials in every mode of `ovas.auth` (their default names; `take_credentials`
# is given the configured ones too): never copied upstream.
CREDENTIAL_HEADERS = (
    "Authorization",
    "X-API-Key",
    "X-Ovas-Proxy-Secret",
    "X-Forwarded-User",
    "X-Forwarded-Roles",
)


def session_of(host: str, raw_path: str, domain: str) -> tuple[str, str] | None:
    """(session id, path and query to send upstream) that a request for `host` and
    `raw_path` (as received: percent-encoded, with its query) names, or None when it names
    no session. The session id is lower-cased; it is not known to exist."""
    name = host.strip().lower()
    if not name.startswith("["):  # an IPv6 literal names no session
        name = name.rpartition(":")[0] if ":" in name else name
        label, dot, rest = name.rstrip(".").partition(".")
        if dot and rest == domain and is_session_id(label):
            return label, raw_path or "/"
    found = _PATH.match(raw_path)
    if found and is_session_id(found.group(1).lower()):
        rest = raw_path[found.end() :]
        return found.group(1).lower(), rest if rest.startswith("/") else "/" + rest
    return None


@dataclass
class Offer:
    """What a client's request holds once the gateway's credentials are taken out."""

    path: str  # path and query for upstream, without `access_token`
    protocols: list[str]  # subprotocols offered, without `Authorization-Bearer.*`
    headers: dict[str, str]  # end-to-end headers to copy upstream, a Cookie's rest included
    credentials: list[str] = field(default_factory=list)  # sent on purpose, in the order found
    # The session's cookie: a browser sends it from any page, so it counts only from pages
    # of an allowed origin (`origin_allowed`).
    cookie: str | None = None


def take_credentials(
    headers: Mapping[str, str], path: str, session_id: str, private: Iterable[str] = ()
) -> Offer:
    """Split a request into its credentials for the gateway (subprotocol element, query
    parameter, bearer header, the session's cookie) and what is forwarded upstream: neither
    these nor `CREDENTIAL_HEADERS`, the headers named in `private` (the configured names of
    the API's credential headers) or any stream token cookie (the user's other sessions').
    `headers` is case-insensitive (e.g. multidict's CIMultiDictProxy, one value a name)."""
    credentials: list[str] = []
    protocols = []
    for element in headers.get("Sec-WebSocket-Protocol", "").split(","):
        element = element.strip()
        if element.startswith(BEARER_PROTOCOL):
            credentials.append(element[len(BEARER_PROTOCOL) :])
        elif element:
            protocols.append(element)
    base, mark, query = path.partition("?")
    kept = []
    for part in query.split("&") if mark else ():
        key, _, value = part.partition("=")
        if unquote_plus(key) == QUERY_TOKEN:
            credentials.append(unquote_plus(value))
        else:
            kept.append(part)
    path = f"{base}?{'&'.join(kept)}" if kept else base
    scheme, _, bearer = headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and bearer.strip():
        credentials.append(bearer.strip())
    dropped = HOP_HEADERS | {h.lower() for h in (*CREDENTIAL_HEADERS, *private)}
    forwarded = {k: v for k, v in headers.items() if k.lower() not in dropped}
    ours, cookie = cookie_name(session_id), None
    cookies = []
    for crumb in headers.get("Cookie", "").split(";"):
        name, _, value = crumb.strip().partition("=")
        if name == ours:
            cookie = value.strip().strip('"') or None
        elif crumb.strip() and not name.startswith(f"{COOKIE}_"):
            cookies.append(crumb.strip())
    if cookies:
        forwarded["Cookie"] = "; ".join(cookies)
    return Offer(path, protocols, forwarded, [c for c in credentials if c], cookie)


def origin_allowed(origin: str | None, domain: str, origins: Iterable[str] = ()) -> bool:
    """Whether a page of `origin` (the handshake's `Origin` header, which browsers always
    send) may use the session's cookie: its host is `domain` or lies under it, or it is one
    of `origins` (`OVAS_CORS_ORIGINS`, as `ovas.config` normalises them; `*` is not taken:
    it would let any site's page open its visitor's sessions). Without this check any page
    the user visits could open their sessions (cross-site WebSocket hijacking)."""
    if not origin:
        return False
    if origin.rstrip("/").lower() in {o for o in origins if o != "*"}:
        return True
    try:
        host = (urlsplit(origin).hostname or "").rstrip(".")
    except ValueError:
        return False
    return host == domain or host.endswith(f".{domain}")
