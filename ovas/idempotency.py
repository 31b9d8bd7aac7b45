"""Retry-safe starts: `POST /stream` with an `Idempotency-Key` header (the IETF httpapi
working group's draft "The Idempotency-Key HTTP Header Field") starts at most one session per
user and key within the key's time to live; a retry answers that session as it is now.

Keys are ledger records (`idempotency.<digest of user and key>`), so they hold across
workers, replicas and restarts. Each holds the session id it started, a digest of the request
it came with (the same key with another request is refused), and when it expires.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ovas.errors import Conflict, InvalidInput
from ovas.ledger import Entry, Ledger, RecordCodec, UnknownFormat

log = logging.getLogger("ovas.idempotency")

PREFIX = "idempotency."
KEY_RECORD = RecordCodec("idempotency-key", current=1, readers={1: dict})
HEADER = "Idempotency-Key"
# The draft's value is a Structured Field String (RFC 8941): printable ASCII, in quotes;
# a bare token is taken as well, as many clients send one. At most 255 characters.
_VALUE = re.compile(r"^[\x20-\x7e]{1,255}\Z")
EXPIRE_EVERY = timedelta(minutes=10)  # a process deletes expired keys at most this often
REMEMBER_TRIES, REMEMBER_WAIT = 40, 0.05  # looks (seconds apart) for a key being created


def parse_key(header: str) -> str:
    """The key an `Idempotency-Key` header value carries (quotes taken off). Raises
    `InvalidInput` (422) for an empty value, one over 255 characters, or one with
    characters outside printable ASCII."""
    value = header.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if not _VALUE.match(value):
        raise InvalidInput(f"{HEADER} must be 1 to 255 printable ASCII characters", field=HEADER)
    return value


def request_digest(request: Mapping[str, Any]) -> str:
    """A digest of what a start asked for (the parsed body's fields), to tell a retry of
    the same request from another request reusing its key."""
    text = json.dumps(request, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Known:
    """A key already used: the session it started, the digest of its request, when it was
    first used and when it expires."""

    session_id: str
    digest: str
    made: datetime
    expires: datetime
    entry: Entry


class IdempotencyKeys:
    """The keys in `ledger`, each remembered for `ttl` (by `now`)."""

    def __init__(self, ledger: Ledger, ttl: timedelta, now: Callable[[], datetime]):
        self.ledger = ledger
        self.ttl = ttl
        self.now = now

    @staticmethod
    def record_name(username: str, key: str) -> str:
        digest = hashlib.sha256(f"{username}\n{key}".encode()).hexdigest()[:48]
        return f"{PREFIX}{digest}"

    def find(self, username: str, key: str, digest: str) -> Known | None:
        """What `username`'s `key` started, while remembered; None when the key is new
        (or expired). Raises `InvalidInput` (422) when it came with another request."""
        known = self._read(self.ledger.get(self.record_name(username, key)))
        return self._checked(known, key, digest)

    def remember(self, username: str, key: str, digest: str, session_id: str) -> Known | None:
        """Record that `key` starts `session_id`: None when this call did; else what an
        earlier request with that key started (someone was quicker). Raises
        `InvalidInput` as `find`, and `Conflict` (409) when the key's record kept changing
        under it."""
        name = self.record_name(username, key)
        now = self.now()
        fields = {
            "session": session_id,
            "digest": digest,
            "made": now.isoformat(),
            "expires": (now + self.ttl).isoformat(),
        }
        for _ in range(REMEMBER_TRIES):
            if self.ledger.create(name, KEY_RECORD.encode(fields)) is not None:
                return None
            held = self.ledger.get(name)
            known = self._read(held)
            if known is not None:
                self._checked(known, key, digest)
                return known
            if held is not None:
                self.ledger.delete(held)  # expired: a new use of the key
            else:
                # Another request's create of the key is under way (an engine whose create
                # takes several calls shows it only once done): look again shortly.
                time.sleep(REMEMBER_WAIT)
        raise Conflict(f"{HEADER} {key!r} is being used by other requests now; try again")

    def forget(self, username: str, key: str, session_id: str) -> None:
        """Forget `key` if it still names `session_id`: its start was refused, so a retry
        may start afresh."""
        held = self.ledger.get(self.record_name(username, key))
        known = self._read(held)
        if known is not None and known.session_id == session_id:
            self.ledger.delete(known.entry)

    def expire(self) -> int:
        """Delete every expired key; how many went."""
        gone = 0
        now = self.now()
        for entry in self.ledger.list(PREFIX):
            known = self._read(entry, now)
            if known is None and _ours(entry) and self.ledger.delete(entry):
                gone += 1
        return gone

    def _read(self, entry: Entry | None, now: datetime | None = None) -> Known | None:
        if entry is None:
            return None
        try:
            data = KEY_RECORD.decode(entry)
            expires = datetime.fromisoformat(data["expires"])
            made = datetime.fromisoformat(data["made"]) if "made" in data else expires - self.ttl
            known = Known(data["session"], data["digest"], made, expires, entry)
        except UnknownFormat as exc:
            log.warning("leaving the idempotency key %s alone: %s", entry.name, exc)
            never = datetime.max.replace(tzinfo=self.now().tzinfo)
            return Known("", "", never, never, entry)
        except (KeyError, ValueError):
            return None
        return known if (now or self.now()) < known.expires else None

    @staticmethod
    def _checked(known: Known | None, key: str, digest: str) -> Known | None:
        if known is None:
            return None
        if not known.session_id:
            raise InvalidInput(
                f"{HEADER} {key!r} is held by a record this release cannot read; use a new key",
                field=HEADER,
                location="header",
            )
        if known.digest != digest:
            raise InvalidInput(
                f"{HEADER} {key!r} was used for another request (another app, version, "
                "profile or stage); use a new key for a new request",
                field=HEADER,
                location="header",
            )
        return known


def _ours(entry: Entry) -> bool:
    """True unless a newer release wrote it (left alone)."""
    try:
        KEY_RECORD.decode(entry)
    except UnknownFormat:
        return False
    return True
