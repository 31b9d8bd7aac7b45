"""One container list serving every read of one backend call: the core's ledger records and
the sessions' workloads are all containers of one engine, so `GET /stream/<id>` (its record
and its Kit container), a listing (every record and workload) and a reaper's clean-up read
them in one `containers.list`, not one per kind.

A call opens a scope (`Reads.scope`) naming what it will read: ledger records under some
name prefixes, and the workloads of one session or of all. The first read the scope covers
lists the containers of all of it at once (Docker ORs the name filters); later covered reads
in the same thread take theirs from that list. Reads the scope does not cover, and every
read after a write that must see it (a ledger create or replace checking what it made),
go to the engine as before. The list is a consistent snapshot of the engine's table, taken
once: a scope is for the reads of one decision, never held across one's writes.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from backends.docker import containers as c
from backends.docker.engine import Engine

LEDGER_NAMES = "ovas-ledger-"  # `backends.docker.ledger.PREFIX`: a record's containers
LEDGER_LABEL = "ovas.ledger"  # `backends.docker.ledger.NAME`
# The containers of every session: its workload (`ovas-<uuid>`, `.pending`, `.fault`), and
# what an earlier release kept of it (`ovas-<uuid>.outcome`..., and its claims).
ANY_SESSION = ("^/ovas-[0-9a-f]{8}-", "^/ovas-(slot|user|pool|port|gpu)-")


@dataclass
class _Scope:
    ledger: tuple[str, ...]
    sessions: str | bool  # True: every session's workloads; a session id: its own
    listed: list[Mapping[str, Any]] | None = field(default=None)

    def names(self) -> list[str]:
        """The engine's name filters (regular expressions, ORed) covering the scope."""
        patterns = [f"^/{LEDGER_NAMES}{re.escape(prefix)}" for prefix in self.ledger]
        if self.sessions is True:
            patterns += ANY_SESSION
        elif self.sessions:
            patterns.append(f"^/ovas-{re.escape(self.sessions)}($|[.])")
        return patterns


class Reads:
    """Scopes of reads served by one list, per thread, on `engine`."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._local = threading.local()

    @contextlib.contextmanager
    def scope(self, ledger: Iterable[str] = (), sessions: str | bool = False) -> Iterator[None]:
        """Within it, this thread's reads of ledger records whose names start with one of
        `ledger`, and of the workloads of `sessions` (True: every session's; a session id:
        that one's), come from one list of the engine, made at the first of them. A scope
        opened within another adds nothing: the outer one serves what it covers."""
        if getattr(self._local, "current", None) is not None:
            yield
            return
        self._local.current = _Scope(tuple(ledger), sessions)
        try:
            yield
        finally:
            self._local.current = None

    @contextlib.contextmanager
    def outside(self) -> Iterator[None]:
        """Within it, this thread's reads go to the engine, as outside any scope: for a read
        that must see what happened since the scope's list was made."""
        held, self._local.current = getattr(self._local, "current", None), None
        try:
            yield
        finally:
            self._local.current = held

    def _listed(self, scope: _Scope) -> list[Mapping[str, Any]]:
        if scope.listed is None:
            scope.listed = self.engine.named(scope.names())
        return scope.listed

    def ledger(self, prefix: str) -> list[Mapping[str, Any]] | None:
        """The ledger's containers of records named `prefix`..., from this thread's scope;
        None when no scope covers them (the caller lists them itself)."""
        scope = getattr(self._local, "current", None)
        if scope is None or not any(prefix.startswith(p) for p in scope.ledger):
            return None
        return [s for s in self._listed(scope) if LEDGER_LABEL in (s.get("Labels") or {})]

    def sessions(self, session_id: str | None = None) -> list[Mapping[str, Any]] | None:
        """The containers labelled with a session (all, or `session_id`'s), from this
        thread's scope; None when no scope covers them."""
        scope = getattr(self._local, "current", None)
        if scope is None or not (scope.sessions is True or scope.sessions == session_id):
            return None
        found = []
        for summary in self._listed(scope):
            labels = summary.get("Labels") or {}
            if c.SESSION in labels and session_id in (None, labels[c.SESSION]):
                found.append(summary)
        return found
