"""What the signaling gateway changes in what the API answers, for every backend: the route
clients are given, who counts as connected, and who gets a stream token.

With `OVAS_GATEWAY_DOMAIN` set (the gateway is on):

- a ready session's route key is `<session id>.<domain>` (the shape OVAS gives with secure
  streaming) and its signaling route's `source_port` is `OVAS_GATEWAY_PUBLIC_PORT`; the
  media route stays the session's own, since UDP cannot go through the gateway. Clients
  such as NVIDIA's web viewer use the route key as the media host as well, so the name
  must resolve to where the session's media port is reached (the Docker host; on
  Kubernetes, the nodes running the gateway);
- the clients of a session are the signaling sockets the gateway replicas hold open
  (`ovas.gateway.presence`), for every backend, whatever the backend reports itself: the
  gateway is the way in, and a backend that counts on the session's port would count the
  gateway's own upstream connections;
- with `OVAS_GATEWAY_AUTH=token`, a session's owner and admins get its stream token
  (`ovas.gateway.tokens`); nobody does otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from ovas.auth import Identity
from ovas.errors import BackendUnavailable, OvasError
from ovas.gateway import presence, tokens
from ovas.ledger import Ledger, LedgerError
from ovas.lifecycle import Mark, Observed, Stage
from ovas.models import Session

log = logging.getLogger("ovas.sessions")


@dataclass(frozen=True)
class GatewayRules:
    """The gateway settings the API applies (`OVAS_GATEWAY_*`); off when `domain` is ""."""

    domain: str = ""
    public_port: int = 443
    auth: str = "token"  # "token" or "none"
    secret: str = ""  # OVAS_GATEWAY_SECRET; "" for the one kept in the ledger
    # The secret in use, read once per process (it never changes while a gateway uses it).
    _secret: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> GatewayRules:
        """From the app's normalised settings (`OVAS_*` without the prefix)."""
        return cls(
            domain=str(settings.get("GATEWAY_DOMAIN") or ""),
            public_port=int(settings.get("GATEWAY_PUBLIC_PORT") or 443),
            auth=str(settings.get("GATEWAY_AUTH") or "token"),
            secret=str(settings.get("GATEWAY_SECRET") or ""),
        )

    @property
    def on(self) -> bool:
        """Whether the gateway is on: `OVAS_GATEWAY_DOMAIN` is set."""
        return bool(self.domain)

    @property
    def tokens(self) -> bool:
        """Whether stream tokens are given (the gateway is on and checks them)."""
        return self.on and self.auth == "token"

    def route_key(self, session_id: str) -> str:
        """The name clients reach a session's signaling socket by: `<session id>.<domain>`."""
        return f"{session_id}.{self.domain}"

    def counts_needed(self, observed: Observed) -> bool:
        """Whether deciding `observed` reads its clients: the gateway is on, and the session
        is ready or may be now (the client clocks apply only then), its own user's, and has
        not ended."""
        record, seen = observed.record, observed.seen
        if not self.on or record.outcome is not None or record.pooled:
            return False
        return Mark.READY in record.marks or (seen.stage is Stage.RUNNING and seen.probe_ok)

    def applied(self, observed: Observed, clients: Mapping[str, int] | None) -> Observed:
        """`observed` as the lifecycle must decide it with the gateway on: routed through
        the gateway, and with its clients from `clients` (per session id, as
        `ovas.gateway.presence.read` gives them; a session absent has none; None when they
        could not be read, which the lifecycle takes as "cannot tell"). Unchanged when the
        gateway is off."""
        if not self.on:
            return observed
        seen = observed.seen
        session_id = observed.record.id
        fields: dict[str, Any] = {
            "connections": None if clients is None else clients.get(session_id, 0)
        }
        if seen.host is not None:
            fields["host"] = self.route_key(session_id)
            fields["routes"] = tuple(
                replace(r, source_port=self.public_port) if r.description == "signaling" else r
                for r in seen.routes
            )
        return Observed(observed.record, replace(seen, **fields))

    def clients(
        self, ledger: Ledger, observations: list[Observed], now: datetime
    ) -> dict[str, int] | None:
        """The clients connected through the gateway at `now`, per session id, read from
        `ledger` (one call) when deciding any of `observations` needs them
        (`counts_needed`), else {}; None when they cannot be read, which the lifecycle
        takes as "cannot tell", not "nobody": no clock ends a session for want of a ledger
        answer."""
        if not any(self.counts_needed(o) for o in observations):
            return {}
        try:
            return presence.read(ledger, now)
        except (OvasError, LedgerError) as exc:
            log.warning("the clients connected through the gateway cannot be read: %s", exc)
            return None

    def reap(self, ledger: Ledger, now: datetime, removed: dict[str, str]) -> dict[str, int] | None:
        """For a reaper's pass: the clients as `clients` gives them, with every session's
        read (one ledger call) while the gateway is on, after deleting the records no
        gateway replica renewed in time (their gateway died), each noted in `removed`."""
        if not self.on:
            return {}
        try:
            entries = ledger.list(presence.PREFIX)
            gone = {e.name for e in presence.expired(entries, now)}
            for entry in entries:
                if entry.name in gone and ledger.delete(entry):
                    removed[entry.name] = "its gateway replica stopped renewing it"
        except (OvasError, LedgerError) as exc:
            log.warning("the clients connected through the gateway cannot be read: %s", exc)
            return None
        return presence.counts(entries, now)

    def stream_tokens(
        self, ledger: Ledger, sessions: list[Session], caller: Identity | None
    ) -> None:
        """Set the `stream_token` of each of `sessions` that `caller` may have: with stream
        tokens on (`tokens`), its owner and admins get it; nobody gets one for a warm
        pool's unclaimed session, nor without a `caller`. A token names the session and
        its owner, whoever receives it (`ovas.gateway.tokens`). Raises
        `BackendUnavailable` when the secret cannot be read from `ledger`."""
        if not self.tokens or caller is None:
            return
        for session in sessions:
            if session.pooled or not session.username:
                continue
            if caller.is_admin or caller.username == session.username:
                secret = self._stream_secret(ledger)
                session.stream_token = tokens.issue(secret, session.id, session.username)

    def _stream_secret(self, ledger: Ledger) -> str:
        if "secret" not in self._secret:
            try:
                settings = {"GATEWAY_SECRET": self.secret}
                self._secret["secret"] = tokens.gateway_secret(settings, ledger)
            except LedgerError as exc:
                raise BackendUnavailable(f"The stream tokens' secret: {exc}") from None
        return self._secret["secret"]
