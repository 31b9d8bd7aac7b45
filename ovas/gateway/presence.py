"""Clients connected through the gateway, counted exactly, kept in the backend's ledger so
that the session lifecycle (connect and idle clocks, `connected`, `last_connected_time`)
works on every backend, whatever it can tell of its own.

Each gateway process (a replica) keeps one record per session it relays for:
`clients.<session id>.<replica>` (`PRESENCE` codec, format 1), holding `count`, the
signaling sockets it holds open now, and `expires`, an ISO 8601 UTC time. The gateway
writes it when a client arrives or leaves and renews it well before it expires, so the
counts of several replicas add up, and a replica that dies stops counting once its records
expire (`TTL`), instead of leaving a session "connected" for ever.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta

from ovas.ledger import Entry, Ledger, RecordCodec, UnknownFormat

PREFIX = "clients."
TTL = timedelta(seconds=45)  # a record not renewed for this long counts for nothing
RENEW = timedelta(seconds=15)  # how often a gateway renews the records it holds
PRESENCE = RecordCodec("clients", current=1, readers={1: dict})
log = logging.getLogger(__name__)


def replica_id() -> str:
    """A name for this gateway process, unique among replicas and restarts (12 hex)."""
    return uuid.uuid4().hex[:12]


def record_name(session_id: str, replica: str) -> str:
    """The ledger record name of `replica`'s client count of `session_id`:
    `clients.<session id>.<replica>`."""
    return f"{PREFIX}{session_id}.{replica}"


def counts(entries: Iterable[Entry], now: datetime) -> dict[str, int]:
    """Clients per session id, summed over the replicas' records that have not expired at
    `now` (records of a format this release cannot read are skipped and logged)."""
    found: dict[str, int] = {}
    for entry in entries:
        rest = entry.name.removeprefix(PREFIX)
        session_id, _, replica = rest.rpartition(".")
        if not entry.name.startswith(PREFIX) or not session_id or not replica:
            continue
        try:
            fields = PRESENCE.decode(entry)
            if datetime.fromisoformat(fields["expires"]) <= now:
                continue
            count = int(fields["count"])
        except (UnknownFormat, KeyError, ValueError) as exc:
            log.warning("skipping the client count record %s: %s", entry.name, exc)
            continue
        found[session_id] = found.get(session_id, 0) + max(0, count)
    return found


def read(ledger: Ledger, now: datetime) -> dict[str, int]:
    """Clients per session id through every gateway replica now: one ledger call."""
    return counts(ledger.list(PREFIX), now)


def data(count: int, now: datetime) -> dict[str, str]:
    """A replica's record of `count` clients, valid for `TTL` from `now`."""
    return PRESENCE.encode({"count": str(count), "expires": (now + TTL).isoformat()})


def expired(entries: Iterable[Entry], now: datetime) -> list[Entry]:
    """The records no replica renewed in time (their gateway died): for the reaper to
    delete."""
    gone = []
    for entry in entries:
        try:
            if datetime.fromisoformat(PRESENCE.decode(entry)["expires"]) <= now:
                gone.append(entry)
        except (UnknownFormat, KeyError, ValueError):
            continue  # not ours to judge: left alone
    return gone
