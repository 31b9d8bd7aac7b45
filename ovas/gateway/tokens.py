"""Stream tokens: what lets a session's owner (or an admin) open its signaling socket
through the gateway, with `OVAS_GATEWAY_AUTH=token`.

A token names the session and the user it was issued to, signed with the gateway secret
(HMAC-SHA256, by itsdangerous' `URLSafeSerializer`). It carries no expiry: it is good while
its session lives, which the gateway checks at every connection. Every replica of the API
and of the gateway must share the secret: `OVAS_GATEWAY_SECRET`, else one made once and
kept in the backend's ledger (`gateway_secret`), so that all processes on one engine agree.

Its text is URL-safe base64 and dots, which a WebSocket subprotocol element may hold (RFC
6455 4.1: an RFC 7230 token), so clients may send it as `Authorization-Bearer.<token>`
(OVAS's streaming-authorization form), as an `access_token` query parameter or as an
`Authorization: Bearer` header.

Browsers whose client sends no credential on the signaling socket (NVIDIA's web viewer
sample) get it as a cookie instead: the API's answers to a session's owner set one cookie
per session, `cookie_name(session id)`, scoped to `OVAS_GATEWAY_DOMAIN` when the API is
served under that domain, which the browser then sends with the WebSocket handshake to
`<session id>.<domain>`. One cookie per session, not one in all, so that a user's two
sessions (two tabs) each keep theirs; each lasts no longer than its session's lifetime.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer

from ovas.ledger import Ledger, LedgerError, RecordCodec, UnknownFormat

SALT = "ovas.stream-token"
COOKIE = "ovas_stream_token"  # each session's cookie is named `COOKIE_<session id>`
SECRET_RECORD = "gateway-secret"
SECRET = RecordCodec("gateway-secret", current=1, readers={1: dict})
log = logging.getLogger(__name__)


def issue(secret: str, session_id: str, username: str) -> str:
    """The stream token of `session_id` for `username`, its owner (the API gives admins
    the owner's token too, so that the gateway needs no roles to check it)."""
    return URLSafeSerializer(secret, salt=SALT).dumps([session_id, username])


def cookie_name(session_id: str) -> str:
    """The name of the cookie holding the stream token of `session_id`."""
    return f"{COOKIE}_{session_id}"


def from_cookies(cookies: Mapping[str, str], session_id: str) -> str | None:
    """The stream token a browser sent for `session_id` in `cookies` (name to value, as a
    web framework parses the Cookie header), or None."""
    return cookies.get(cookie_name(session_id)) or None


def read(secret: str, token: str) -> tuple[str, str] | None:
    """(session id, user name) that `token` was issued for; None when it was not signed
    with `secret` or is not a stream token at all."""
    try:
        value = URLSafeSerializer(secret, salt=SALT).loads(token)
    except (BadSignature, ValueError, TypeError):
        return None
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) and v for v in value):
        return value[0], value[1]
    return None


def gateway_secret(config: Mapping[str, Any], ledger: Ledger) -> str:
    """The secret stream tokens are signed with: `OVAS_GATEWAY_SECRET`, else the one kept in
    `ledger` (made by the first process to ask, with a warning that it was). Raises what
    the ledger raises (`BackendUnavailable`)."""
    configured = str(config.get("GATEWAY_SECRET") or "")
    if configured:
        return configured
    made = SECRET.encode({"secret": secrets.token_urlsafe(32)})
    entry = ledger.create(SECRET_RECORD, made)
    if entry is not None:
        log.warning(
            "OVAS_GATEWAY_SECRET is not set: stream tokens are signed with a secret made now "
            "and kept in the backend's ledger (record %s), readable by whoever can read the "
            "engine; set OVAS_GATEWAY_SECRET on every API and gateway process instead",
            SECRET_RECORD,
        )
        return made["secret"]
    held = ledger.get(SECRET_RECORD)
    if held is None:  # deleted between the two calls: make it again
        return gateway_secret(config, ledger)
    try:
        return SECRET.decode(held)["secret"]
    except (UnknownFormat, KeyError) as exc:
        raise LedgerError(f"the gateway secret record cannot be read: {exc}") from None
