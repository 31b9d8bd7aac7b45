"""The ledger: where the core keeps its records, in the engine a backend runs on.

A record is a small mapping of names to strings, under a name that is unique in the engine.
Four operations, each one engine call, are all the core needs to keep admission, claims and
shared state correct across any number of processes, replicas and hosts, with no lock held
across a round trip (see ARCHITECTURE.md, "The core keeps the records, over a ledger"):

- `create` if absent, atomically: of any number of creates of one name, one wins;
- `replace` if unchanged: a compare-and-swap on the entry's `version`;
- `list` every entry (or those under a prefix) in one call, whatever their number;
- `delete`, unconditionally or only while an entry is unchanged.

Each backend supplies a ledger in its own engine (Docker: never-started record containers;
Kubernetes: ConfigMaps); `MemoryLedger` serves one process. `ovas.testing.LedgerContract`
holds every implementation to the same behaviour.

Every record carries a format version (`FORMAT_KEY`): `RecordCodec` writes the current one,
reads older ones it knows, and leaves newer or unknown ones alone (`UnknownFormat`), so an
upgrade, or a newer replica running beside an older one, never costs a session.
"""

from __future__ import annotations

import abc
import itertools
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Generic, TypeVar

# A name fits a Docker container name and a Kubernetes object name once prefixed: a DNS
# subdomain (RFC 1123, as Kubernetes checks object names), dot-separated parts each starting
# and ending with a letter or digit. `\Z`, not `$`, which would let a final newline through.
NAME_PATTERN = re.compile(
    r"^(?=.{1,200}\Z)[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\Z"
)
KEY_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,62}\Z")
MAX_VALUE = 4000  # characters of one value: what a Docker label holds comfortably
FORMAT_KEY = "format"  # every record's format version, written by `RecordCodec`
T = TypeVar("T")


class LedgerError(ValueError):
    """A name, key or value a ledger cannot hold; the message says which and why."""


@dataclass(frozen=True)
class Entry:
    """One record as the engine holds it now.

    `version` is opaque and changes with every replace: `replace` and `delete` given this
    entry succeed only while the engine still holds exactly it. `created` is when the entry
    was first made, by the engine's clock (UTC)."""

    name: str
    data: Mapping[str, str]
    version: str
    created: datetime = field(default_factory=lambda: datetime.now(UTC))


def check_record(name: str, data: Mapping[str, str]) -> None:
    """Raise `LedgerError` unless `name` matches `NAME_PATTERN`, every key `KEY_PATTERN`,
    and every value is a str of at most `MAX_VALUE` characters."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise LedgerError(
            f"ledger name {name!r} is not 1 to 200 of a-z, 0-9, '.' and '-' in dot-separated "
            "parts that start and end with a-z or 0-9"
        )
    for key, value in data.items():
        if not isinstance(key, str) or not KEY_PATTERN.match(key):
            raise LedgerError(f"ledger key {key!r} of {name} is not a-z, 0-9 and '_'")
        if not isinstance(value, str) or len(value) > MAX_VALUE:
            raise LedgerError(f"ledger value {key} of {name} is not a str of <= {MAX_VALUE}")


class Ledger(abc.ABC):
    """Records in an engine. Synchronous; safe from many threads and processes at once;
    raises `ovas.errors.BackendUnavailable` when the engine cannot be reached and
    `LedgerError` for a name or data it cannot hold, nothing else."""

    @abc.abstractmethod
    def create(self, name: str, data: Mapping[str, str]) -> Entry | None:
        """Create the record `name` holding `data` if no record of that name exists: the
        new entry, or None when one exists (whoever made it). Atomic across processes and
        hosts sharing the engine: of any number of creates of one name, exactly one returns
        an entry (until that entry is deleted)."""

    @abc.abstractmethod
    def replace(self, entry: Entry, data: Mapping[str, str]) -> Entry | None:
        """Replace the data of `entry` by `data` if the engine still holds `entry` unchanged
        (same `version`): the new entry, or None when it changed or is gone. Of any number
        of replaces of one version, at most one succeeds."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[Entry]:
        """Every entry whose name starts with `prefix`, in any order, each once and whole,
        read in one engine call whatever their number."""

    @abc.abstractmethod
    def delete(self, target: Entry | str) -> bool:
        """Delete a record: given a name, whatever it holds; given an entry, only while the
        engine holds it unchanged. True when this call deleted it; False when it was gone
        (or, for an entry, changed)."""

    def get(self, name: str) -> Entry | None:
        """The entry `name`, or None; one engine call."""
        return next((e for e in self.list(name) if e.name == name), None)

    def close(self) -> None:
        """Release connections."""


class MemoryLedger(Ledger):
    """A ledger in this process's memory: atomic across its threads, seen by no other
    process. For `FakeBackend` and the tests; `calls` counts operations, as an engine
    ledger counts engine calls."""

    def __init__(self, now: Callable[[], datetime] | None = None):
        self._entries: dict[str, Entry] = {}
        self._lock = threading.Lock()
        self._versions = itertools.count(1)
        self._now = now or (lambda: datetime.now(UTC))
        self.calls = 0

    def _made(self, name: str, data: Mapping[str, str], created: datetime | None) -> Entry:
        return Entry(name, dict(data), str(next(self._versions)), created or self._now())

    def create(self, name: str, data: Mapping[str, str]) -> Entry | None:
        check_record(name, data)
        with self._lock:
            self.calls += 1
            if name in self._entries:
                return None
            entry = self._entries[name] = self._made(name, data, None)
            return entry

    def replace(self, entry: Entry, data: Mapping[str, str]) -> Entry | None:
        check_record(entry.name, data)
        with self._lock:
            self.calls += 1
            held = self._entries.get(entry.name)
            if held is None or held.version != entry.version:
                return None
            new = self._entries[entry.name] = self._made(entry.name, data, held.created)
            return new

    def list(self, prefix: str = "") -> list[Entry]:
        with self._lock:
            self.calls += 1
            return [e for name, e in self._entries.items() if name.startswith(prefix)]

    def delete(self, target: Entry | str) -> bool:
        name = target if isinstance(target, str) else target.name
        with self._lock:
            self.calls += 1
            held = self._entries.get(name)
            if held is None or (isinstance(target, Entry) and held.version != target.version):
                return False
            del self._entries[name]
            return True


class UnknownFormat(Exception):
    """A record of a format this release cannot read (newer, or not ovas's): to be left
    alone, never removed. `format` is what it says it is."""

    def __init__(self, name: str, format: str):
        super().__init__(f"record {name} has format {format!r}, which this release cannot read")
        self.name = name
        self.format = format


@dataclass(frozen=True)
class RecordCodec(Generic[T]):
    """Writes records of one kind in the current format and reads every format it knows.

    `current` is the format written (an int, kept as its decimal str under `FORMAT_KEY`);
    `readers` maps each readable format to a function turning its fields into what the
    current format reads as: a dict of the current shape (often the identity, `dict`), or a
    value parsed from its named fields. A record with no `FORMAT_KEY` is read as format
    `legacy` when given (records written before formats existed), else it is unknown.
    `kind_key` is the key the kind is kept under (`kind`; Docker's labels keep it under
    `record`)."""

    kind: str
    current: int
    readers: Mapping[int, Callable[[Mapping[str, str]], T]]
    legacy: int | None = None
    kind_key: str = "kind"

    def encode(self, fields: Mapping[str, str]) -> dict[str, str]:
        """`fields` with the kind and the current format added, after them. Raises
        `LedgerError` if a field uses a reserved key."""
        if FORMAT_KEY in fields or self.kind_key in fields:
            raise LedgerError(f"{FORMAT_KEY!r} and {self.kind_key!r} are kept by the codec")
        return {**fields, self.kind_key: self.kind, FORMAT_KEY: str(self.current)}

    def decode(self, entry: Entry) -> T:
        """The entry's fields (without `FORMAT_KEY` and the kind) as its format's reader
        reads them. Raises `UnknownFormat` for a format this release has no reader for, or
        for a record of another kind; whatever the reader raises (KeyError, ValueError) for
        fields it cannot parse."""
        raw = entry.data.get(FORMAT_KEY)
        if raw is None:
            number = self.legacy
        else:
            number = int(raw) if raw.isdecimal() and len(raw) < 6 else None
        kind = entry.data.get(self.kind_key, self.kind if raw is None else None)
        reader = self.readers.get(number) if number is not None else None
        if reader is None or kind != self.kind:
            raise UnknownFormat(entry.name, raw if raw is not None else "none")
        fields = {k: v for k, v in entry.data.items() if k not in (FORMAT_KEY, self.kind_key)}
        return reader(fields)
