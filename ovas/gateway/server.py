"""The signaling gateway's server: one port in front of every session's signaling socket
(aiohttp, asyncio; run by `ovas gateway`).

Each request names a session (`ovas.gateway.routing`); the gateway asks the backend where
that session's signaling socket is, on demand (nothing to push, nothing lost on restart),
checks the caller's credential (`OVAS_GATEWAY_AUTH=token`), then opens the session's socket
and relays between the two (`ovas.gateway.relay`), counting the clients of each session in
the backend's ledger (`ovas.gateway.counting`). Everything refused is refused before any
upgrade, as JSON `{"detail": ...}`:

- 404: no such session; 410: it ended, failed or is being stopped; 503 (with Retry-After):
  it is starting, the backend cannot be reached, or its ledger holds a record this
  release cannot read (the stream token secret's, say; logged);
- 401: no credential; 403: a wrong one, another user's, or the session's cookie sent from
  a page of another site (`routing.origin_allowed`);
- 429: `OVAS_GATEWAY_MAX_CLIENTS` clients of the session already, through this process (each
  replica counts its own);
- 502: the session's socket cannot be reached or refused the upgrade.

A request that is not an upgrade gets the same answers, and 200 once it would be relayed
(a probe; never counted as a client). A Host that names no session serves `/metrics` (the
gateway's Prometheus metrics) and `/healthz`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from yarl import URL

from ovas.auth import HeaderAuth, NoAuth
from ovas.errors import ConfigurationError, OvasError, SessionNotFound
from ovas.gateway import routing, tokens
from ovas.gateway.counting import Presence
from ovas.gateway.relay import Metrics, relay
from ovas.ledger import LedgerError, UnknownFormat
from ovas.models import Session, SessionState

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0  # seconds for a client's request, and for the session's upgrade
RETRY_AFTER = 5  # seconds, while a session starts or the backend cannot be reached
# Big JWT cookies and bearer headers must fit (OVAS's portal raised these limits for them).
MAX_LINE, MAX_FIELD, MAX_HEADERS = 16384, 16384, 256
MAX_MESSAGE = 16 * 1024 * 1024  # bytes of one relayed message
UNREADABLE = "The gateway cannot read its records in the backend's ledger now"


class Refused(Exception):
    """An answer before any upgrade."""

    def __init__(self, status: int, detail: str, retry_after: int | None = None):
        super().__init__(detail)
        self.status, self.detail, self.retry_after = status, detail, retry_after


def answer(status: int, detail: str, retry_after: int | None = None) -> web.Response:
    """The JSON answer `{"detail": detail}` with HTTP `status`, and `Retry-After` (seconds)
    when `retry_after` is given."""
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return web.json_response({"detail": detail}, status=status, headers=headers)


class Gateway:
    """The gateway in front of the sessions of one ovas core: `core` is the Flask app that
    `ovas.create_app` built (its `ovas` and `ovas_authenticator` extensions and `GATEWAY_*`,
    `AUTH_*` and `CORS_ORIGINS` settings are used; its reaper is not started). `renew`:
    seconds between renewals of the client count records (default `presence.RENEW`).
    `replica`: the name this process's client count records carry (default: a random one,
    see `counting.Presence`). The attribute `max_message` is the bytes of the largest
    message relayed (`MAX_MESSAGE`); a bigger one ends the relay (1009 to its sender, 1011
    to the other side). Raises `ConfigurationError` when `OVAS_GATEWAY_DOMAIN` is unset.

    Besides stream tokens, the API's own credentials of the session's owner or an admin
    open a session with `OVAS_AUTH=jwt` or `apikey`, as a bearer credential. Not with
    `OVAS_AUTH=header`: there the API believes identity headers from its proxy's address,
    and a client's own headers would reach the gateway through the same proxy (or a TLS
    terminator beside it) unchecked; stream tokens alone open sessions then."""

    def __init__(self, core, *, renew: float | None = None, replica: str | None = None):
        config = core.config
        self.domain = config.get("GATEWAY_DOMAIN") or ""
        if not self.domain:
            raise ConfigurationError(
                "OVAS_GATEWAY_DOMAIN is not set: the gateway routes `<session-id>.<domain>`, "
                "so it needs the domain (e.g. streams.example.com)"
            )
        self.config = config
        state = core.extensions["ovas"]
        self.sessions = state.sessions
        self.backend = state.backend
        self.authenticator = core.extensions["ovas_authenticator"]
        # The API's credentials count only where each is checked on its own (see above).
        self.api_credentials = not isinstance(self.authenticator, NoAuth | HeaderAuth)
        # The configured names of the API's credential headers, never sent upstream.
        self.private_headers = tuple(
            str(config.get(key) or "")
            for key in ("AUTH_USER_HEADER", "AUTH_ROLES_HEADER", "AUTH_PROXY_SECRET_HEADER")
            if config.get(key)
        )
        self.origins = tuple(config.get("CORS_ORIGINS") or ())
        self.auth = config.get("GATEWAY_AUTH", "token")
        self.max_clients = int(config.get("GATEWAY_MAX_CLIENTS") or 4)
        self.metrics = Metrics()
        extra = {"renew": renew} if renew is not None else {}
        self.presence = Presence(self.backend.ledger, self.backend.now, replica=replica, **extra)
        self._secret: str | None = None
        self._starting: dict[str, int] = {}  # upgrades under way, per session
        self._relays: set[tuple[web.WebSocketResponse, object]] = set()
        self.max_message = MAX_MESSAGE
        self._client: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    # Serving

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_shutdown.append(self._close_relays)
        return app

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> int:
        """Serve on `host`:`port` (0: any free port); returns the port bound."""
        self._client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),  # one upstream socket per client: no cap
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=HANDSHAKE_TIMEOUT),
            auto_decompress=False,
            # One client's session must never send cookies another's upstream set.
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._runner = web.AppRunner(
            self.application(),
            max_line_size=MAX_LINE,
            max_field_size=MAX_FIELD,
            max_headers=MAX_HEADERS,
            # aiohttp closes a connection that has not sent a whole request in this time,
            # from its first byte: the bound on a client's handshake.
            keepalive_timeout=HANDSHAKE_TIMEOUT,
            handle_signals=False,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context, backlog=1024)
        await site.start()
        return self._runner.addresses[0][1]

    async def stop(self, timeout: float = 10.0) -> None:
        """Close every relayed socket (code 1001), stop serving, and delete this process's
        client counts (waiting up to `timeout` seconds for the ledger)."""
        if self._runner is not None:
            await self._runner.cleanup()  # calls _close_relays, then ends the handlers
        await self.presence.close(timeout)
        if self._client is not None:
            await self._client.close()

    async def _close_relays(self, app: web.Application) -> None:
        closing = []
        for client, session in list(self._relays):
            closing += [client.close(code=1001, message=b"gateway shutting down")]
            closing += [session.close(code=1001, message=b"gateway shutting down")]
        await asyncio.gather(*closing, return_exceptions=True)

    # Requests

    async def handle(self, request: web.Request) -> web.StreamResponse:
        route = routing.session_of(request.host, request.raw_path, self.domain)
        if route is None:
            return self._own(request)
        session_id, path = route
        offer = routing.take_credentials(request.headers, path, session_id, self.private_headers)
        upgrade = request.headers.get("Upgrade", "").strip().lower() == "websocket"
        try:
            address = await self._admit(request, session_id, offer)
            if not upgrade:
                if request.method not in ("GET", "HEAD"):
                    raise Refused(405, "Open a WebSocket here (GET with Upgrade: websocket)")
                return answer(200, "The session is ready: open a WebSocket here")
            return await self._relay(request, session_id, address, offer)
        except Refused as refused:
            if upgrade:
                self.metrics.handshakes.labels(str(refused.status)).inc()
            return answer(refused.status, refused.detail, refused.retry_after)

    def _own(self, request: web.Request) -> web.Response:
        if request.path == "/metrics":
            body = generate_latest(self.metrics.registry)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
        if request.path == "/healthz":
            return web.json_response({"status": "ok"})
        return answer(
            404,
            f"No session is named here: connect to <session-id>.{self.domain} or to "
            "/sessions/<session-id>/...",
        )

    async def _admit(
        self, request: web.Request, session_id: str, offer: routing.Offer
    ) -> tuple[str, int]:
        """Where the session's signaling socket is, once the caller may reach it now.
        Raises `Refused`."""
        try:
            session, address = await asyncio.to_thread(self.sessions.signaling, session_id)
        except SessionNotFound:
            raise Refused(404, f"Session '{session_id}' not found") from None
        except OvasError as exc:  # BackendUnavailable, mostly
            raise Refused(503, exc.message, RETRY_AFTER) from None
        except (LedgerError, UnknownFormat) as exc:
            log.error("session %s cannot be admitted: the ledger: %s", session_id, exc)
            raise Refused(503, UNREADABLE, RETRY_AFTER) from None
        if self.auth == "token":
            await self._check_access(request, session, offer)
        if session.state.final or session.state is SessionState.TERMINATING:
            why = f" ({session.reason.value})" if session.reason else ""
            raise Refused(410, f"Session '{session_id}' is {session.state.value}{why}")
        if address is None:
            raise Refused(503, f"Session '{session_id}' is starting", RETRY_AFTER)
        taken = self.presence.count(session_id) + self._starting.get(session_id, 0)
        if taken >= self.max_clients:
            raise Refused(
                429,
                f"Session '{session_id}' has {taken} clients through this gateway, its most "
                "(OVAS_GATEWAY_MAX_CLIENTS)",
                RETRY_AFTER,
            )
        return address

    async def _check_access(
        self, request: web.Request, session: Session, offer: routing.Offer
    ) -> None:
        """Pass when one of the request's credentials is a stream token of this session, or
        the API's credentials of its owner or an admin (see the class). The session's
        cookie counts only from a page of an allowed origin. Raises `Refused` (401, 403,
        503 when the secret's record cannot be read)."""
        credentials = list(offer.credentials)
        if offer.cookie is not None:
            origin = request.headers.get("Origin")
            if routing.origin_allowed(origin, self.domain, self.origins):
                credentials.append(offer.cookie)
            elif not credentials:
                raise Refused(
                    403,
                    f"The session's cookie is taken only from pages of {self.domain} (or of "
                    f"OVAS_CORS_ORIGINS), not from {(origin or 'no origin')[:100]!r}",
                )
        if not credentials:
            raise Refused(
                401,
                "A stream token is required: as the subprotocol Authorization-Bearer.<token>, "
                "the access_token query parameter, an Authorization: Bearer header, or the "
                "session's cookie",
            )
        secret = await self._stream_secret()
        for credential in credentials:
            named = tokens.read(secret, credential) if secret else None
            if named is not None and named[0] == session.id:
                return
        if self.api_credentials:
            for credential in credentials:
                if await asyncio.to_thread(self._owner_or_admin, request, session, credential):
                    return
        raise Refused(403, f"The credential does not open session '{session.id}'")

    def _owner_or_admin(self, request: web.Request, session: Session, credential: str) -> bool:
        # The credential alone: none of the client's other headers is the API's business.
        headers = CIMultiDict(Authorization=f"Bearer {credential}")
        try:
            identity = self.authenticator.identify(headers, request.remote)
        except OvasError:
            return False
        return identity.is_admin or identity.username == session.username

    async def _stream_secret(self) -> str | None:
        """The stream token secret, read once; None while the backend cannot be reached.
        Raises `Refused` (503) when its record cannot be read (logged)."""
        if self._secret is None:
            try:
                self._secret = await asyncio.to_thread(
                    tokens.gateway_secret, self.config, self.backend.ledger
                )
            except OvasError as exc:
                log.warning("the stream token secret cannot be read now: %s", exc.message)
            except (LedgerError, UnknownFormat) as exc:
                log.error("the stream token secret cannot be read: %s", exc)
                raise Refused(503, UNREADABLE, RETRY_AFTER) from None
        return self._secret

    async def _relay(
        self, request: web.Request, session_id: str, address: tuple[str, int], offer: routing.Offer
    ) -> web.StreamResponse:
        host, port = address
        # Sent as received: yarl would otherwise normalise its escapes.
        url = URL(f"ws://{host}:{port}{offer.path}", encoded=True)
        headers = {
            **offer.headers,
            "X-Forwarded-For": request.remote or "",
            "X-Forwarded-Proto": "wss" if request.secure else "ws",
            "X-Forwarded-Host": request.host,
        }
        self._starting[session_id] = self._starting.get(session_id, 0) + 1
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                upstream = await self._client.ws_connect(
                    url,
                    protocols=offer.protocols,
                    headers=headers,
                    autoclose=False,
                    autoping=False,
                    compress=0,
                    max_msg_size=self.max_message,
                    decode_text=False,
                )
        except aiohttp.WSServerHandshakeError as exc:
            log.info("session %s refused the upgrade: %s %s", session_id, exc.status, exc.message)
            raise Refused(502, f"Session '{session_id}' refused the connection") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.info("session %s cannot be reached at %s: %r", session_id, url, exc)
            raise Refused(502, f"Session '{session_id}' cannot be reached") from None
        finally:
            self._starting[session_id] -= 1
            if not self._starting[session_id]:
                del self._starting[session_id]
        # From here the client counts, until it leaves.
        self.presence.arrive(session_id)
        self.metrics.open.inc()
        client = web.WebSocketResponse(
            protocols=(upstream.protocol,) if upstream.protocol else (),
            autoclose=False,
            autoping=False,
            compress=False,
            max_msg_size=self.max_message,
            decode_text=False,
        )
        pair = (client, upstream)
        self._relays.add(pair)
        try:
            await client.prepare(request)
            self.metrics.handshakes.labels("101").inc()
            await relay(client, upstream, self.metrics)
        finally:
            self._relays.discard(pair)
            if not upstream.closed:
                await upstream.close(code=1001)
            self.metrics.open.dec()
            self.presence.leave(session_id)
        return client


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server TLS context from PEM files. Raises `ConfigurationError` naming the setting
    when they cannot be read or do not match."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            f"OVAS_GATEWAY_TLS_CERT {cert!r} and OVAS_GATEWAY_TLS_KEY {key!r} cannot be used: {exc}"
        ) from None
    return context


async def serve(core, host: str, port: int) -> None:
    """Serve the gateway of `core` until SIGTERM or SIGINT, then close every relayed socket
    and delete this process's client counts. Raises `ConfigurationError` for bad settings."""
    import signal

    config = core.config
    context = None
    if config.get("GATEWAY_TLS_CERT"):
        context = tls_context(config["GATEWAY_TLS_CERT"], config["GATEWAY_TLS_KEY"])
    gateway = Gateway(core)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    bound = await gateway.start(host, port, context)
    facts = {
        "domain": gateway.domain,
        "auth": gateway.auth,
        "tls": "on" if context else "off",
        "max_clients": gateway.max_clients,
        "replica": gateway.presence.replica,
    }
    log.info("ovas gateway on %s:%d: %s", host, bound, json.dumps(facts))
    try:
        await stopping.wait()
    finally:
        log.info("ovas gateway stopping: closing %d relayed sockets", len(gateway._relays))
        await gateway.stop()
