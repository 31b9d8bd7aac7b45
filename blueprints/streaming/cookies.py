"""A session's stream token as a cookie, for browsers whose client sends no credential on
the signaling socket (NVIDIA's web viewer sample: `authenticate: false`).

The owner's answers about a session set its cookie (`ovas.gateway.tokens.cookie_name`)
with `Domain=<OVAS_GATEWAY_DOMAIN>`, so that the browser sends it with the WebSocket
handshake to `<session id>.<domain>`. A browser keeps a cookie only from a host that lies
in its domain, so it is set only when the API is served under the gateway's domain (its
Host is the domain or ends with `.<domain>`); and a page's `fetch` stores cookies only from
its own origin (no CORS credentials are allowed), so the viewer must be served from the
API's origin (or through the same proxy). Attributes:

- `HttpOnly`: no script reads it;
- `SameSite=Lax`: `<session id>.<domain>` and the API's host are one site, so the
  handshake carries it, while other sites' pages never make the browser send it
  (`None` would, and needs nothing `Lax` does not give here);
- `Secure` when the API was reached over HTTPS (as gunicorn sees it behind a proxy,
  `OVAS_FORWARDED_ALLOW_IPS`), which a browser then sends to `wss://` only; a plain
  HTTP API (development) sets it without, or the browser would drop it;
- `Max-Age`: until the session's max lifetime ends it (none without one); stopping the
  session expires it.
"""

from __future__ import annotations

from datetime import datetime
from urllib.parse import urlsplit

from flask import request
from werkzeug.http import dump_cookie

from ovas.gateway import tokens
from ovas.models import Session


def _domain(domain: str) -> str | None:
    """`domain` when this request's Host lies in it, else None."""
    if not domain:
        return None
    try:
        host = (urlsplit(f"//{request.host}").hostname or "").rstrip(".")
    except ValueError:
        return None
    return domain if host == domain or host.endswith(f".{domain}") else None


def set_cookie(session: Session, owner: str, domain: str, now: datetime) -> dict[str, str]:
    """The `Set-Cookie` header handing `session`'s stream token to the browser of `owner`,
    the caller, as response headers; {} unless the caller owns the session, it has a token
    and has not ended, and the API is served under `domain`."""
    where = _domain(domain)
    token = session.stream_token
    if where is None or token is None or owner != session.username or session.state.final:
        return {}
    max_age = None
    if session.expires_time is not None:
        max_age = max(1, int((session.expires_time - now).total_seconds()))
    value = dump_cookie(
        tokens.cookie_name(session.id),
        token,
        max_age=max_age,
        domain=where,
        path="/",
        secure=request.is_secure,
        httponly=True,
        samesite="Lax",
    )
    return {"Set-Cookie": value}


def expire_cookie(session_id: str, domain: str) -> dict[str, str]:
    """The `Set-Cookie` header that makes a browser forget the cookie of a session being
    stopped; {} unless the API is served under `domain`."""
    where = _domain(domain)
    if where is None:
        return {}
    value = dump_cookie(
        tokens.cookie_name(session_id),
        "",
        max_age=0,
        domain=where,
        path="/",
        secure=request.is_secure,
        httponly=True,
        samesite="Lax",
    )
    return {"Set-Cookie": value}
