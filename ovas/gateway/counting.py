"""The clients one gateway process relays for, per session, kept in the backend's ledger as
its presence records (`ovas.gateway.presence`).

The count changes at once in memory (the gateway's client limit reads it); one task per
session writes it to the ledger after each change, coalescing bursts, and renews it every
`renew` seconds while it is above 0. When the last client leaves, the record is deleted.
Ledger calls are synchronous engine calls: they run in threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime

from ovas.errors import OvasError
from ovas.gateway import presence
from ovas.ledger import Entry, Ledger, LedgerError

log = logging.getLogger(__name__)
RETRY = 5.0  # seconds before a failed ledger write is tried again


class Presence:
    """Per-session client counts of this replica, and the tasks that record them."""

    def __init__(
        self,
        ledger: Ledger,
        now: Callable[[], datetime],
        *,
        replica: str | None = None,
        renew: float = presence.RENEW.total_seconds(),
    ):
        self.ledger = ledger
        self.now = now
        self.replica = replica or presence.replica_id()
        self.renew = renew
        self.counts: dict[str, int] = {}
        self._entries: dict[str, Entry] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task] = {}

    def count(self, session_id: str) -> int:
        """Clients of `session_id` through this process now."""
        return self.counts.get(session_id, 0)

    def arrive(self, session_id: str) -> None:
        """One more client of `session_id` through this process; its record is written
        soon after, in the background (call it on the event loop)."""
        self.counts[session_id] = self.count(session_id) + 1
        self._kick(session_id)

    def leave(self, session_id: str) -> None:
        """One client of `session_id` fewer; the record is rewritten in the background, and
        deleted once no client is left."""
        left = self.count(session_id) - 1
        if left > 0:
            self.counts[session_id] = left
        else:
            self.counts.pop(session_id, None)
        self._kick(session_id)

    def _kick(self, session_id: str) -> None:
        if session_id not in self._tasks:
            self._wake[session_id] = asyncio.Event()
            self._tasks[session_id] = asyncio.create_task(self._keep(session_id))
        self._wake[session_id].set()

    async def _keep(self, session_id: str) -> None:
        wake = self._wake[session_id]
        while True:
            wake.clear()
            count = self.count(session_id)
            written = await asyncio.to_thread(self._write, session_id, count)
            if written and count == 0 and self.count(session_id) == 0:
                del self._tasks[session_id], self._wake[session_id]
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.renew if written else RETRY)

    def _write(self, session_id: str, count: int) -> bool:
        """Make the ledger hold `count` for `session_id` (delete the record at 0): True once
        done, False when the ledger failed (logged; the caller tries again)."""
        name = presence.record_name(session_id, self.replica)
        try:
            if count == 0:
                self._entries.pop(session_id, None)
                self.ledger.delete(name)
                return True
            data = presence.data(count, self.now())
            held = self._entries.get(session_id)
            entry = self.ledger.replace(held, data) if held is not None else None
            if entry is None:
                entry = self.ledger.create(name, data)
            if entry is None:  # ours, but not as we left it (a reaper's sweep, a retry)
                current = self.ledger.get(name)
                entry = self.ledger.replace(current, data) if current is not None else None
            if entry is None:
                raise LedgerError(f"the record {name} changed while it was written")
            self._entries[session_id] = entry
            return True
        except (OvasError, LedgerError) as exc:
            log.warning("cannot record %d clients of session %s: %s", count, session_id, exc)
            return False

    async def close(self, timeout: float = 10.0) -> None:
        """Count every session at 0 and wait (up to `timeout` seconds) for the records to be
        deleted; what cannot be deleted in time expires after `presence.TTL`."""
        self.counts.clear()
        for wake in self._wake.values():
            wake.set()
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        for task in tasks:
            task.cancel()
