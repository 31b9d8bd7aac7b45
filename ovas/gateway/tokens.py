"""Stream tokens: what lets a session's owner (or an admin) open its signaling socket
through the gateway, with `OVAS_GATEWAY_AUTH=token`.

A token names the session and the user it was issued to, signed with the gateway secret
(HMAC-SHA256, by itsdangerous' `URLSafeSerializer`). It carries no expiry: it is good while
its session lives, which the gateway checks at every connection. Every replica of the API
and of the gateway must share the secret: `OVAS_GATEWAY_SECRET`, else one made once and
kept in the backend's ledger (`gateway_secret`), so that all processes on one engine agree.

Its text is URL-safe base64 and dots, which a WebSocket subprotocol element may hold (RFC
6455 4.1: an RFC 7230 token), so clients may send it as `Authorization-Bearer.<token>`
(OVAS's streaming-authorization form), as an `access_token` query parameter, as an
`Authorization: Bearer` header, or in the cookie `cookie_name(session_id)`, which the API
sets for browsers whose viewer sends no credential on its signaling socket.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer

from ovas.ledger import Ledger, LedgerError, RecordCodec, UnknownFormat

SALT = "ovas.stream-token"
COOKIE_PREFIX = "ovas_stream_"
SECRET_RECORD = "gateway-secret"
SECRET = RecordCodec("gateway-secret", current=1, readers={1: dict})
log = logging.getLogger(__name__)


def issue(secret: str, session_id: str, username: str) -> str:
    """The stream token of `session_id` for `username`."""
    return URLSafeSerializer(secret, salt=SALT).dumps([session_id, username])


def cookie_name(session_id: str) -> str:
    """The cookie that holds the stream token of `session_id`: `ovas_stream_` and the id's
    first 8 characters, so that one browser holds the tokens of several sessions at once."""
    return COOKIE_PREFIX + session_id[:8]


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
