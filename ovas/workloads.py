"""`ovas.Backend`: a backend that only runs workloads, with the core keeping every record of
its sessions over its ledger (`ovas.ledger`).

A subclass implements `from_settings` and four workload methods (two more are optional):

- `run_workload(request)`: start the session's workload and return at once;
- `observe_workload(session_id)`: what the engine shows of one workload, None if none;
- `observe_workloads()`: every workload of ours, by session id, in one engine call;
- `stop_workload(session_id)`: remove it; idempotent;
- `workload_logs(session_id, tail)` and `workload_clients(session_id)` (None: cannot tell).

Everything else `SessionBackend` asks is written here, once, over `ledger`:

- `session.<id>`: the session's `Record` (what was asked, clocks, marks, outcome, pool,
  rendering, and the last log lines once it ended), format 1 (`ovas.session_records`);
- `slot.all.<n>`, `slot.user.<digest>.<n>`, `slot.pool.<digest>.<n>`: one place of the
  capacity, of a user's capacity, of a warm pool's size, each taken by create-if-absent
  (format 1), so never more sessions hold places than there are, across
  every process sharing the ledger;
- `slot.<kind>.<name>`: a named place the subclass says a workload needs (`places`): a GPU
  by its device id, a host port of a range; the names taken reach `run_workload` as
  `request.places`, so no two live sessions ever hold one GPU.

A workload is started only once its places are taken, and its record is written once it
runs; a workload with neither record nor place belongs to no session and `collect` stops it.

A backend whose earlier releases kept their records in the engine itself (annotations,
objects of their own) returns them from `earlier_records`: the core adopts each session
that has no `session.<id>` record yet, with the places it held, at a process's first use,
in `collect` and when one session is not found, so an upgrade costs no session.
"""

from __future__ import annotations

import abc
import contextlib
import itertools
import logging
import random
import re
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from ovas.backend import Catalog, SessionBackend
from ovas.errors import (
    BackendUnavailable,
    CapacityExceeded,
    Conflict,
    OvasError,
    SessionNotFound,
    UserCapacityExceeded,
)
from ovas.ledger import Entry, Ledger, LedgerError, UnknownFormat
from ovas.lifecycle import Mark, Observation, Observed, Outcome, Record, Stage
from ovas.models import SessionQuery, SessionRequest, pool_key
from ovas.session_records import SESSION_RECORD, SLOT_RECORD, digest, encode_session

log = logging.getLogger(__name__)

SESSION_PREFIX = "session."
SLOT_PREFIX = "slot."
CAS_TRIES = 20  # compare-and-swap rounds before a mark or claim gives up (BackendUnavailable)
LOG_TAIL = 100  # log lines a finished session keeps


PLAIN_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")


@dataclass(frozen=True)
class Places:
    """Named places of one kind that a workload holds while its session lives.

    `kind` (a-z, e.g. "gpu", "port-tcp") names them; `names` are every place of the kind the
    host has, in the order they are to be taken (a GPU's device id, a host port); `need` is
    how many the workload takes. `refusal(free)` builds what a start raises when fewer than
    `need` are free (`free`: those of `names` it found free, in their order):
    `CapacityExceeded` with its `resource` while others hold them; a start needing more
    than there are raises `Unsatisfiable` first, from `refusal` (given every name) as well."""

    kind: str
    names: Sequence[str]
    need: int
    refusal: Callable[[Sequence[str]], OvasError]


def place_name(kind: str, name: str) -> str:
    """The ledger name of the place `name` of `kind`: `slot.<kind>.<name>` when `name` is a
    plain DNS label, else `slot.<kind>.<digest of name>` (a CDI device name holds '/')."""
    return f"{SLOT_PREFIX}{kind}.{name if PLAIN_NAME.match(name) else digest(name)}"


@dataclass(frozen=True)
class EarlierRecord:
    """A session as an earlier release of a backend recorded it in the engine itself, for
    the core to adopt (`Backend.earlier_records`): its `record` (with its outcome,
    marks and `node` where known), the last log lines of one that ended (`logs`), the kinds
    of place it was admitted against (`places`: `"all"`, `"user"`, `"pool"`), which it
    holds again, and the named places it holds (`named`: each `Places` says which `names` it
    may take, in order, and how many, `need`; its `refusal` is not used)."""

    record: Record
    logs: tuple[str, ...] = ()
    places: frozenset[str] = frozenset()
    named: Sequence[Places] = ()


def _user_scope(username: str) -> str:
    """The scope of `username`'s places: `slot.user.<scope><n>`."""
    return digest(username) + "."


def _pool_scope(pool: str, key: str) -> str:
    """The scope of a warm pool's places per `key` (`models.pool_key`): `slot.pool.<scope><n>`."""
    return digest(pool, key) + "."


def _justified(name: str, record: Record | None) -> bool:
    """Whether the place `name` is one its session, of `record`, holds: any while it lives,
    but a pool's place only while it is unclaimed, and a user's only once it is a user's."""
    kind = name.split(".")[1]
    if record is None or record.outcome is not None or kind == "start":
        return False
    if kind in ("pool", "user"):
        return (kind == "pool") == record.pooled
    return True


class Backend(SessionBackend):
    """A `SessionBackend` whose subclasses run workloads only; see the module's docstring.

    `ledger` must be one every process sharing the engine sees (a backend of one process
    may keep the default `MemoryLedger`). `slot_grace` (seconds) is how long a place held by
    no live session is kept before `collect` frees it: the time a start may take between
    taking its places and writing its record."""

    keeps_warm_pools = True
    slot_grace: float = 60.0

    def __init__(
        self,
        catalog: Catalog,
        *,
        ledger: Ledger | None = None,
        now: Callable[[], datetime] | None = None,
    ):
        self.catalog = catalog
        if ledger is not None:
            self.ledger = ledger
        if now is not None:
            self.now = now

    # What a subclass implements

    @abc.abstractmethod
    def run_workload(self, request: SessionRequest) -> None:
        """Start the workload of session `request.id` from `request.kit` and return at once,
        labelled so that `observe_workloads` finds it under that id. Raises
        `BackendUnavailable`, or another `OvasError` saying why it cannot run."""

    @abc.abstractmethod
    def observe_workload(self, session_id: str) -> Observation | None:
        """What the engine shows of one workload now (probing readiness for at most about a
        second), or None when it has none. Never `Stage.GONE`: that is None."""

    @abc.abstractmethod
    def observe_workloads(self) -> Mapping[str, Observation]:
        """Every workload of ours, by session id, in one engine call; readiness may come
        from the engine's own health check without probing each."""

    @abc.abstractmethod
    def stop_workload(self, session_id: str) -> None:
        """Remove the workload (and what it holds: ports, GPUs). Idempotent: none is fine."""

    def workload_logs(self, session_id: str, tail: int) -> list[str]:
        """The workload's last `tail` log lines (none by default, or when it has none)."""
        return []

    def places(self, request: SessionRequest) -> Sequence[Places]:
        """The named places `request`'s workload needs besides the session slots (its GPUs,
        its host ports); none by default. The core takes them before `run_workload`, frees
        them when the session ends, and passes their names as `request.places[kind]`.
        Raises `Unsatisfiable` for a request this host can never grant."""
        return ()

    def workload_clients(self, session_id: str) -> int | None:
        """Clients connected to the workload's signaling port now; None (the default) when
        it cannot tell, and then only the max lifetime ends a ready session."""
        return None

    def observe_workloads_of(self, session_ids: Collection[str]) -> Mapping[str, Observation]:
        """The workloads of `session_ids` (at least), by session id: what a page of sessions
        reads. By default `observe_workloads()`; a backend whose engine selects workloads by
        id overrides it, in a number of engine calls that does not grow with the ids."""
        return self.observe_workloads()

    def workload_node(self, session_id: str) -> str:
        """Where the workload runs now (a node's name), kept in the session's record
        (`Record.node`) when it is first marked ready; "" (the default) when the backend
        cannot tell or need not. At most one engine call. Raises `OvasError`, which the
        core logs and records nothing for."""
        return ""

    def explain_workload(self, record: Record, seen: Observation | None) -> Observation | None:
        """What the workload of a live session (no outcome) shows in the light of its
        record: `seen` as `observe_workload(s)` found it (None: no workload) by default. A
        backend overrides it to say why a workload vanished (a `Stage.FAULT` naming the
        cause, e.g. `Reason.NODE_LOST` when `record.node` no longer exists), or that one
        whose engine objects remain is gone for good (`Stage.GONE` with a detail, or None).
        May make an engine call for a workload that vanished; raises nothing else."""
        return seen

    # Records an earlier release kept in the engine

    def earlier_records(self, session_id: str | None = None) -> list[EarlierRecord]:
        """Sessions an earlier release of this backend recorded in the engine itself (labels,
        annotations, objects of its own), not yet forgotten (`forget_earlier_record`): of
        every session, in a number of engine calls that does not grow with them, or of
        `session_id` alone. Only records that read whole; of a format it cannot read, none.
        Reads only. None by default (a backend that never kept records in its engine).

        The core adopts each whose session has no `session.<id>` record yet: it holds the
        places the session held (live ones only), creates the record (create-if-absent),
        then calls `forget_earlier_record`; from then on the ledger's record is the
        session's. Called at a process's first use of the backend, in `collect` while a
        pass found some or a workload has no record, and when a session is not found."""
        return []

    def forget_earlier_record(self, session_id: str) -> None:
        """The core keeps the session's record now: see to it that `earlier_records` no
        longer returns it (without removing or replacing what the session runs on), so a
        session stopped later is never adopted again. Idempotent; nothing by default.
        Raises `OvasError`, which the core logs (the next pass forgets it again)."""

    def _first_use(self) -> None:
        """Adopt every earlier record, once per process, before anything reads or admits."""
        if self.__dict__.get("_earlier_read"):
            return
        with self.__dict__.setdefault("_earlier_lock", threading.Lock()):
            if not self.__dict__.get("_earlier_read"):
                self._adopt()
                self.__dict__["_earlier_read"] = True

    def _adopt(self, session_id: str | None = None) -> dict[str, Record]:
        """Adopt what `earlier_records(session_id)` returns (see there): the records of those
        sessions, by id, whether this call or another process adopted each."""
        found = self.earlier_records(session_id)
        if session_id is None:
            self.__dict__["_earlier_due"] = bool(found)
        adopted = {}
        for earlier in found:
            record = earlier.record
            taken = [] if record.outcome is not None else self._hold_places(earlier)
            made = self.ledger.create(
                SESSION_PREFIX + record.id, encode_session(record, earlier.logs)
            )
            if made is None:  # recorded already: by another process, or before a crash
                self._give_back(earlier, taken)
            else:
                log.info("session %s: its earlier release's record is the ledger's now", record.id)
            adopted[record.id] = record
            try:
                self.forget_earlier_record(record.id)
            except OvasError as exc:
                log.warning("session %s: its earlier record stays (%s)", record.id, exc.message)
        return adopted

    def _give_back(self, earlier: EarlierRecord, taken: list[Entry]) -> None:
        """Give back what an adoption that lost took: its slots (the winner holds its own),
        and of its named places those beyond what the session needs besides the ones others
        took for it (the winner took its own before it won, skipping any this adoption held:
        those stay, or the session would hold fewer than it uses)."""
        mine = {entry.name for entry in taken}
        keep: dict[str, int] = {}
        for wanted in earlier.named:
            others = sum(
                entry.data.get("session") == earlier.record.id and entry.name not in mine
                for entry in self.ledger.list(f"{SLOT_PREFIX}{wanted.kind}.")
            )
            keep[wanted.kind] = max(0, wanted.need - others)
        for entry in taken:
            kind = entry.name.split(".")[1]
            if keep.get(kind, 0) > 0:
                keep[kind] -= 1
            else:
                self.ledger.delete(entry)

    def _hold_places(self, earlier: EarlierRecord) -> list[Entry]:
        """The places of the kinds `earlier` held, each the first free one of its scope
        (however many are held: a session admitted before counts, whatever the limit now),
        and its named places, as far as free ones are left (a shortfall is logged)."""
        record = earlier.record
        scopes = {
            "all": "",
            "user": _user_scope(record.username),
            "pool": _pool_scope(record.pool, pool_key(record.version, record.rendering)),
        }
        data = SLOT_RECORD.encode({"session": record.id, "taken": self.now().isoformat()})
        taken = []
        for kind in sorted(earlier.places & scopes.keys()):
            if kind != "all" and (kind == "pool") != record.pooled:
                continue  # as `_justified` keeps them: a pool's while unclaimed, else a user's
            prefix = f"{SLOT_PREFIX}{kind}.{scopes[kind]}"
            held = {e.name for e in self.ledger.list(prefix)}
            for _ in range(CAS_TRIES):  # a create lost (or a list not fresh) moves on
                free = next(f"{prefix}{n}" for n in itertools.count() if f"{prefix}{n}" not in held)
                entry = self.ledger.create(free, data)
                if entry is not None:
                    taken.append(entry)
                    break
                held.add(free)
        for wanted in earlier.named:
            got, _ = self._take_names(wanted, record.id)
            taken += got
            if len(got) < wanted.need:
                log.warning(
                    "session %s holds %d %s places, of which only %d are free to record: "
                    "starts may be admitted beside it that cannot run",
                    record.id,
                    wanted.need,
                    wanted.kind,
                    len(got),
                )
        return taken

    # Records

    def _read_record(self, entry: Entry) -> tuple[Record, tuple[str, ...]] | None:
        try:
            return SESSION_RECORD.decode(entry)
        except UnknownFormat as exc:
            log.warning("%s; it is left alone", exc)
        except (KeyError, ValueError) as exc:
            log.warning("record %s cannot be read (%s); it is left alone", entry.name, exc)
        return None

    def _session_entries(
        self, listed: list[Entry] | None = None
    ) -> dict[str, tuple[Entry, Record, tuple[str, ...]]]:
        """The sessions' records, by id: from the ledger, or among `listed` (as read)."""
        self._first_use()
        read = {}
        for entry in self.ledger.list(SESSION_PREFIX) if listed is None else listed:
            if not entry.name.startswith(SESSION_PREFIX):
                continue
            known = self._read_record(entry)
            if known is not None:
                read[known[0].id] = (entry, *known)
        return read

    def _session_entry(self, session_id: str) -> tuple[Entry, Record, tuple[str, ...]]:
        self._first_use()
        entry = self.ledger.get(SESSION_PREFIX + session_id)
        if entry is None and self._adopt(session_id):
            entry = self.ledger.get(SESSION_PREFIX + session_id)
        known = self._read_record(entry) if entry is not None else None
        if known is None:
            raise SessionNotFound(session_id)
        return (entry, *known)

    def _combined(self, session_id: str, record: Record, seen: Observation | None) -> Observation:
        if record.outcome is not None:
            return Observation(Stage.GONE)
        seen = self.explain_workload(record, seen)
        if seen is None:
            return Observation(Stage.GONE, detail="its workload is gone")
        running = seen.stage is Stage.RUNNING and seen.probe_ok
        if running and seen.connections is None and not record.pooled:
            seen = replace(seen, connections=self.workload_clients(session_id))
        return seen

    # Places

    def _take_place(self, kind: str, scope: str, size: int, session_id: str) -> Entry | None:
        """One of the `size` places `slot.<kind>.<scope><n>`, or None when all are held."""
        self._first_use()
        prefix = f"{SLOT_PREFIX}{kind}.{scope}"
        held = {e.name for e in self.ledger.list(prefix)}
        free = [f"{prefix}{n}" for n in range(size) if f"{prefix}{n}" not in held]
        if len(held) >= size:
            return None
        data = SLOT_RECORD.encode({"session": session_id, "taken": self.now().isoformat()})
        for name in random.sample(free, len(free)):
            entry = self.ledger.create(name, data)
            if entry is not None:
                return entry
        return None

    def _user_place(self, username: str, capacity: int, session_id: str) -> Entry | None:
        if not capacity:
            return None
        taken = self._take_place("user", _user_scope(username), capacity, session_id)
        if taken is None:
            raise UserCapacityExceeded(
                f"User '{username}' already has {capacity} sessions", retry_after=30
            )
        return taken

    def _take_names(self, wanted: Places, session_id: str) -> tuple[list[Entry], list[str]]:
        """Up to `wanted.need` places of `wanted.names`, in their order, skipping those held:
        the places taken, and the names that were free (taken ones included)."""
        held = {e.name for e in self.ledger.list(f"{SLOT_PREFIX}{wanted.kind}.")}
        taken: list[Entry] = []
        for name in wanted.names:
            if len(taken) == wanted.need:
                break
            ledger_name = place_name(wanted.kind, name)
            if ledger_name in held:
                continue
            fields = {"session": session_id, "taken": self.now().isoformat(), "place": name}
            entry = self.ledger.create(ledger_name, SLOT_RECORD.encode(fields))
            if entry is None:
                held.add(ledger_name)  # another start took it meanwhile
            else:
                taken.append(entry)
        return taken, [n for n in wanted.names if place_name(wanted.kind, n) not in held]

    def _take_named(self, wanted: Places, session_id: str) -> list[Entry]:
        """`wanted.need` places of `wanted.names`, in their order, skipping those held, or
        raises `wanted.refusal(free)` having taken none."""
        if wanted.need <= 0:
            return []
        if wanted.need > len(wanted.names):
            raise wanted.refusal(list(wanted.names))
        taken, free = self._take_names(wanted, session_id)
        if len(taken) < wanted.need:
            for entry in taken:
                self.ledger.delete(entry)
            raise wanted.refusal(free)
        return taken

    def _free_places(self, session_id: str) -> None:
        for entry in self.ledger.list(SLOT_PREFIX):
            if entry.data.get("session") == session_id:
                self.ledger.delete(entry)

    # SessionBackend

    def start(self, request: SessionRequest) -> Observed:
        self._first_use()
        record = Record.of(request)
        taken: list[Entry] = []
        ran = False
        wanted = self.places(request)
        try:
            if request.pool and request.pool_size:
                scope = _pool_scope(request.pool, request.pool_key)
                place = self._take_place("pool", scope, request.pool_size, request.id)
                if place is None:
                    raise CapacityExceeded(
                        f"Warm pool '{request.pool}' has its {request.pool_size} sessions",
                        retry_after=30,
                    )
                taken.append(place)
            elif not request.pool:
                place = self._user_place(request.username, request.user_capacity, request.id)
                taken += [place] if place else []
            if request.capacity:
                place = self._take_place("all", "", request.capacity, request.id)
                if place is None:
                    raise CapacityExceeded(
                        f"All {request.capacity} session slots are in use", retry_after=30
                    )
                taken.append(place)
            named: dict[str, tuple[str, ...]] = {}
            for places in wanted:
                got = self._take_named(places, request.id)
                taken += got
                named[places.kind] = tuple(e.data["place"] for e in got)
            if not taken:  # a place all the same, so that `collect` knows a start runs
                pending = self.ledger.create(
                    f"{SLOT_PREFIX}start.{request.id}",
                    SLOT_RECORD.encode({"session": request.id, "taken": self.now().isoformat()}),
                )
                taken += [pending] if pending else []
            if self.ledger.get(SESSION_PREFIX + request.id) is not None:
                raise Conflict(f"Session {request.id} exists already")  # its workload runs
            ran = True
            self.run_workload(replace(request, places=named) if named else request)
            if self.ledger.create(SESSION_PREFIX + request.id, encode_session(record)) is None:
                raise Conflict(f"Session {request.id} exists already")
        except BaseException:
            if ran:
                with contextlib.suppress(OvasError):
                    self.stop_workload(request.id)
            for entry in taken:
                self.ledger.delete(entry)
            raise
        if taken and taken[0].name.startswith(f"{SLOT_PREFIX}start."):
            self.ledger.delete(taken[0])
        return Observed(record, Observation(Stage.WAITING, detail="Starting the workload"))

    def observe(self, session_id: str) -> Observed:
        _, record, _ = self._session_entry(session_id)
        seen = None if record.outcome else self.observe_workload(session_id)
        return Observed(record, self._combined(session_id, record, seen))

    def observe_all(self) -> list[Observed]:
        entries = self._session_entries()
        workloads = self.observe_workloads()
        return [
            Observed(record, self._combined(sid, record, workloads.get(sid)))
            for sid, (_, record, _) in entries.items()
        ]

    def records(self) -> list[Record]:
        return [record for _, record, _ in self._session_entries().values()]

    def observe_page(self, query: SessionQuery) -> list[Observed]:
        page = query.select(self.records(), key=lambda r: r)
        live = [r.id for r in page if r.outcome is None]
        workloads = self.observe_workloads_of(live) if live else {}
        return [Observed(r, self._combined(r.id, r, workloads.get(r.id))) for r in page]

    def _change_record(
        self,
        session_id: str,
        change: Callable[[Record], Record | None],
        logs: tuple[str, ...] | None = None,
    ) -> bool:
        """Compare-and-swap `change(record)` (and `logs`, when given) into the session's
        record until it holds: True when written, False when `change` says None or the
        session is gone. Raises `BackendUnavailable` after `CAS_TRIES` lost rounds."""
        for _ in range(CAS_TRIES):
            try:
                entry, record, kept = self._session_entry(session_id)
            except SessionNotFound:
                return False
            changed = change(record)
            if changed is None:
                return False
            data = encode_session(changed, kept if logs is None else logs)
            if self.ledger.replace(entry, data) is not None:
                return True
        raise BackendUnavailable(f"The record of session {session_id} keeps changing")

    def mark(self, session_id: str, mark: Mark, at: datetime | None) -> bool:
        node = self._node(session_id) if mark is Mark.READY and at is not None else ""

        def marked(record: Record) -> Record | None:
            changed = record.marked(mark, at)
            return replace(changed, node=node) if changed is not None and node else changed

        return self._change_record(session_id, marked)

    def _node(self, session_id: str) -> str:
        try:
            return self.workload_node(session_id)
        except OvasError as exc:
            log.warning("session %s: where its workload runs is not known: %s", session_id, exc)
            return ""

    def claim(
        self, session_id: str, username: str, at: datetime, *, user_capacity: int = 0
    ) -> bool:
        def claimed(record: Record) -> Record | None:
            if not record.pooled or record.outcome is not None:
                return None
            return replace(record.marked(Mark.CLAIMED, at), username=username)

        try:
            _, record, _ = self._session_entry(session_id)
        except SessionNotFound:
            return False
        if claimed(record) is None:
            return False
        place = self._user_place(username, user_capacity, session_id)
        won = False
        try:
            won = self._change_record(session_id, claimed)
        finally:
            if not won and place is not None:
                self.ledger.delete(place)
        if won:
            prefix = f"{SLOT_PREFIX}pool."
            for entry in self.ledger.list(prefix):
                if entry.data.get("session") == session_id:
                    self.ledger.delete(entry)
        return won

    def finish(self, session_id: str, outcome: Outcome) -> bool:
        try:
            _, record, _ = self._session_entry(session_id)
        except SessionNotFound:
            self.stop_workload(session_id)
            return False
        written = False
        if record.outcome is None:
            logs: tuple[str, ...] = ()
            try:
                logs = tuple(self.workload_logs(session_id, LOG_TAIL))
            except OvasError as exc:
                log.warning("the logs of session %s cannot be read: %s", session_id, exc)
            try:
                written = self._change_record(
                    session_id,
                    lambda r: replace(r, outcome=outcome) if r.outcome is None else None,
                    logs,
                )
            except (OvasError, LedgerError) as exc:
                log.error(
                    "the outcome of session %s (%s) cannot be recorded (%s); its workload "
                    "is stopped all the same",
                    session_id,
                    outcome.reason.value,
                    exc,
                )
                self.stop_workload(session_id)
                self._free_places(session_id)
                raise
        self.stop_workload(session_id)
        self._free_places(session_id)
        return written

    def stop(self, session_id: str) -> None:
        entry = self.ledger.get(SESSION_PREFIX + session_id)
        if entry is None and self._adopt(session_id):
            entry = self.ledger.get(SESSION_PREFIX + session_id)
        if entry is None:
            if self.observe_workload(session_id) is None:
                raise SessionNotFound(session_id)
        else:
            self.ledger.delete(entry.name)
        self.stop_workload(session_id)
        self._free_places(session_id)

    def logs(self, session_id: str, tail: int = 100) -> list[str]:
        _, record, kept = self._session_entry(session_id)
        if record.outcome is not None:
            return list(kept[-tail:]) if tail > 0 else []
        return self.workload_logs(session_id, tail)

    def collect(self, now: datetime) -> list[str]:
        """Free places held by no live session once `slot_grace` has passed since they were
        taken, stop workloads with neither record nor place, and stop the workloads of
        sessions with an outcome (a finish interrupted). Returns the ledger names and the
        session ids of what it removed."""
        # Read in the order a start writes backwards (a start takes its places, runs its
        # workload, then writes its record), so a start under way is never taken for none;
        # places and records in one list.
        workloads = self.observe_workloads()
        self._first_use()
        listed = self.ledger.list()
        places = [e for e in listed if e.name.startswith(SLOT_PREFIX)]
        entries = self._session_entries(listed)
        sessions = {sid: record for sid, (_, record, _) in entries.items()}
        if self.__dict__.get("_earlier_due", True) or not workloads.keys() <= sessions.keys():
            sessions |= {i: r for i, r in self._adopt().items() if i not in sessions}
        grace = timedelta(seconds=self.slot_grace)
        removed, holders = [], set()
        # A record this release cannot read (a newer format) is a session all the same: its
        # workload and places are left alone, as are places it cannot read.
        unread = {
            e.name.removeprefix(SESSION_PREFIX)
            for e in listed
            if e.name.startswith(SESSION_PREFIX)
            and e.name.removeprefix(SESSION_PREFIX) not in sessions
        }
        holders |= unread
        for entry in places:
            try:
                fields = SLOT_RECORD.decode(entry)
                holder, taken = fields["session"], datetime.fromisoformat(fields["taken"])
            except (UnknownFormat, KeyError, ValueError):
                holders.add(entry.data.get("session", ""))
                continue  # not a place this release wrote: left alone
            held = holder in unread or _justified(entry.name, sessions.get(holder))
            if held or now - taken < grace:
                holders.add(holder)
            elif self.ledger.delete(entry):
                removed.append(entry.name)
        for session_id in workloads:
            record = sessions.get(session_id)
            if record is None and session_id not in holders:
                # Recorded meanwhile (another process adopted or started it): it lives.
                if self.ledger.get(SESSION_PREFIX + session_id) is not None:
                    continue
            elif not (record and record.outcome):
                continue
            self.stop_workload(session_id)
            removed.append(session_id)
        return removed


# The name `Backend` had in the release before it became `ovas.Backend`; plugins may use either.
WorkloadBackend = Backend
