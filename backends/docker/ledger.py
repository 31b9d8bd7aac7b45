"""The core's ledger (`ovas.ledger.Ledger`) on a Docker engine: a record is a chain of
never-started containers, made from the tiny record image as the session records are.

Docker gives three atomic steps: create a container under a name no container holds (a second
is refused, 409), remove a container by id (once), and list containers (a consistent snapshot
of the engine's table). Labels cannot change after creation, so a record is:

- its **anchor**, `ovas-ledger-<name>`, generation 0, holding the data `create` wrote. While
  the anchor exists the name is taken: that is `create`'s atomicity. Only a delete removes it,
  and removing it is what ends the record.
- its **generations** 1, 2, ...: each `replace` makes one, named after the container it
  replaces (`ovas-ledger-<name>_<replaced id>`) and labelled with its anchor's id, so of any
  number of replaces of one version the engine lets one create it. The record's data is
  its anchor's highest generation (the anchor itself before any replace).

Every container carries `ovas.ledger=<name>` (which no session or record container of the
Docker backend carries, nor do these carry `ovas.session`: the two never see each other), the
layout of its labels, and its data as one ASCII JSON label, so any str comes back exactly.

What holds, with any number of processes and hosts on one engine and no lock held:

- `create`: of concurrent creates of a name, one makes the anchor; the rest answer None.
- `replace`: a version whose successor was made, replaced in turn and removed could be
  replaced again (the name is free once more). So after creating its generation, a replace
  lists the record (one call) and its generation holds only when the anchor is still the
  one it named and either no higher generation exists, or one names it as the generation it
  replaced, or it is gone already (only a replace made on top of it removes it). Otherwise it
  removes what it made and answers None. That reasoning needs: a generation is removed only
  after the one it replaced (a replace removes the chain below it lowest first), an anchor
  only by a delete, and a process that made a generation which did not hold removes only that.
- `delete(name)` removes the anchor first: the record is gone from then on, and a create may
  make it anew at once; containers of the old anchor are ignored by every reader (they name
  an anchor that is no more), then removed.
- `delete(entry)` replaces the entry by a tombstone (the same compare-and-swap), then removes
  the anchor and the rest. A create that finds a tombstoned record (its deleter stopped in
  between) finishes that delete and creates anew.
- `list` and `get` read one snapshot in one call and give each record's highest generation.

Engine calls: create 1 (and a list when the name is taken); replace 3 (create, list, remove
the replaced generation; 2 for the first replace, which keeps the anchor); delete by name 3
(list, anchor, last generation), by entry 5 (tombstone, list, anchor, last generation,
tombstone), one fewer each for a record never replaced; list and get 1.

Limits: `Entry.created` is the creating process's clock (a Docker create answers no time);
a generation made by a process that died between creating it and finding it stale, on a
version already replaced, is ignored but kept until the record is deleted; a `delete(entry)`
whose tombstone a concurrent create finishes may answer False though it deleted. A container
whose layout this release does not know is neither read nor removed.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from backends.docker import containers as c
from backends.docker.engine import Engine
from backends.docker.reads import Reads
from ovas.errors import OvasError
from ovas.ledger import Entry, Ledger, check_record

log = logging.getLogger(__name__)

PREFIX = "ovas-ledger-"  # container names: the anchor is PREFIX + name
NAME = "ovas.ledger"  # the record's name; only ledger containers carry it
LAYOUT = "ovas.ledger.layout"  # how the labels below are laid out
GENERATION = "ovas.ledger.generation"
ANCHOR = "ovas.ledger.anchor"  # generations >= 1: the id of their anchor
AFTER = "ovas.ledger.after"  # generations >= 1: the id of the generation they replaced
CREATED = "ovas.ledger.created"  # the anchor: when the record was created (ISO 8601)
DATA = "ovas.ledger.data"  # the record's data, as ASCII JSON
DELETED = "ovas.ledger.deleted"  # a tombstone: the record was deleted by its version
CURRENT_LAYOUT = "1"
GONE = ("removing", "dead")  # states of a container whose removal has begun
CREATE_TRIES = 3  # a create that keeps meeting a record being deleted answers None
_VERSION = re.compile(r"^(\d{1,9}):([0-9a-f]{64}):([0-9a-f]{64})$")
_PREFIX_TEXT = re.compile(r"^[a-z0-9.-]+$")


@dataclass(frozen=True)
class Held:
    """One ledger container of a layout this release reads."""

    name: str
    id: str
    generation: int
    anchor: str  # its anchor's id (its own for an anchor)
    after: str  # the id of the generation it replaced ('' for an anchor)
    labels: Mapping[str, str]
    made: datetime  # by the engine's clock, to the second

    @property
    def deleted(self) -> bool:
        return DELETED in self.labels


@dataclass
class Chain:
    """The containers of one record name in one snapshot."""

    name: str
    anchor: Held | None = None
    generations: dict[str, Held] = field(default_factory=dict)  # by id, of the anchor
    dead: list[Held] = field(default_factory=list)  # of anchors that are gone
    foreign: bool = False  # holds a container of a layout this release does not read

    @property
    def top(self) -> Held | None:
        """The anchor's highest generation, which holds the record's data."""
        if self.anchor is None:
            return None
        return max([self.anchor, *self.generations.values()], key=lambda h: (h.generation, h.id))

    def entry(self) -> Entry | None:
        """The record, or None when there is none (or its data cannot be read)."""
        top = self.top
        if top is None or top.deleted or self.anchor is None:
            return None
        data = decode(top.labels.get(DATA, ""))
        if data is None:
            log.warning("ledger record %s holds data that cannot be read; ignored", self.name)
            return None
        return Entry(self.name, data, version(top), created_of(self.anchor))


def encode(data: Mapping[str, str]) -> str:
    """The data as one label value: ASCII JSON, which the engine keeps exactly (it would
    replace a lone surrogate in a label of its own)."""
    return json.dumps(dict(data), ensure_ascii=True, separators=(",", ":"), sort_keys=True)


def decode(text: str) -> dict[str, str] | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        return None
    return data


def version(held: Held) -> str:
    """`<generation>:<container id>:<anchor id>`: what a replace or delete of it needs."""
    return f"{held.generation}:{held.id}:{held.anchor}"


def created_of(anchor: Held) -> datetime:
    try:
        created = datetime.fromisoformat(anchor.labels.get(CREATED, ""))
    except ValueError:
        return anchor.made
    return created if created.tzinfo is not None else anchor.made


def read(summary: Mapping[str, Any]) -> Held | None:
    """A `containers.list` summary as Held; None for one whose removal has begun or whose
    labels this release does not read."""
    labels = summary.get("Labels") or {}
    if labels.get(LAYOUT) != CURRENT_LAYOUT or summary.get("State") in GONE:
        return None
    raw = labels.get(GENERATION, "")
    if not raw.isdecimal():
        return None
    generation, cid = int(raw), summary.get("Id", "")
    if generation == 0:
        anchor, after = cid, ""
    else:
        anchor, after = labels.get(ANCHOR, ""), labels.get(AFTER, "")
        if not anchor or not after:
            return None
    made = datetime.fromtimestamp(int(summary.get("Created") or 0), UTC)
    return Held(labels[NAME], cid, generation, anchor, after, labels, made)


def chains(summaries: Iterable[Mapping[str, Any]]) -> dict[str, Chain]:
    """Ledger containers by record name."""
    found: dict[str, Chain] = {}
    held = []
    for summary in summaries:
        name = (summary.get("Labels") or {}).get(NAME, "")
        chain = found.setdefault(name, Chain(name))
        item = read(summary)
        if item is None:
            gone = summary.get("State") in GONE
            chain.foreign = chain.foreign or not gone
        elif item.generation == 0:
            chain.anchor = item
        else:
            held.append(item)
    for item in held:
        chain = found[item.name]
        if chain.anchor is not None and item.anchor == chain.anchor.id:
            chain.generations[item.id] = item
        else:
            chain.dead.append(item)
    return found


class DockerLedger(Ledger):
    """The ledger on the Docker engine at `url` (None: DOCKER_HOST, else the default
    socket), or on `engine`, shared with a `DockerBackend`, whose `reads` may then serve
    `list` and `get` from a list it made anyway (`backends.docker.reads`). Contacts the
    engine on first use, not when built, so `functools.partial(DockerLedger, url)` builds
    one in another process. `calls` counts the engine calls made."""

    def __init__(
        self, url: str | None = None, *, engine: Engine | None = None, reads: Reads | None = None
    ):
        self.engine = engine or Engine(url)
        self._own_engine = engine is None
        self.reads = reads
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        self.calls = 0

    def _count(self) -> None:
        with self._lock:
            self.calls = next(self._counter)

    def _chain(self, name: str) -> Chain:
        self._count()
        return chains(self.engine.labelled(f"{NAME}={name}")).get(name) or Chain(name)

    def _remove(self, container_id: str) -> bool:
        self._count()
        return self.engine.remove(container_id)

    def _make(self, container_name: str, labels: Mapping[str, str]) -> str:
        self._count()
        labels = {**labels, c.FORMAT: c.CURRENT_FORMAT}
        return self.engine.make_record(c.record_spec(container_name, labels))

    def create(self, name: str, data: Mapping[str, str]) -> Entry | None:
        check_record(name, data)
        created = datetime.now(UTC)
        labels = {
            NAME: name,
            LAYOUT: CURRENT_LAYOUT,
            GENERATION: "0",
            CREATED: created.isoformat(),
            DATA: encode(data),
        }
        for _ in range(CREATE_TRIES):
            made = self._make(PREFIX + name, labels)
            if made:
                return Entry(name, dict(data), f"0:{made}:{made}", created)
            chain = self._chain(name)
            top = chain.top
            if chain.foreign or (top is not None and not top.deleted):
                return None
            if top is not None:
                self._bury(chain)  # a delete by version that stopped halfway: finish it
        return None

    def replace(self, entry: Entry, data: Mapping[str, str]) -> Entry | None:
        check_record(entry.name, data)
        settled = self._supersede(entry, {DATA: encode(data)})
        if settled is None:
            return None
        generation, made, chain = settled
        assert chain.anchor is not None  # `holds` saw it
        new_version = f"{generation}:{made}:{chain.anchor.id}"
        return Entry(entry.name, dict(data), new_version, created_of(chain.anchor))

    def list(self, prefix: str = "") -> list[Entry]:
        found = chains(self._listed(prefix))
        entries = (chain.entry() for name, chain in found.items() if name.startswith(prefix))
        return [e for e in entries if e is not None]

    def get(self, name: str) -> Entry | None:
        found = chains(self._listed(name)).get(name)
        return found.entry() if found is not None else None

    def _listed(self, prefix: str) -> list[Mapping[str, Any]]:
        """The containers of the records named `prefix`... (and maybe more): from the
        backend's reads where they cover them, else one call. The engine narrows by name
        where the prefix is plain text; the label decides."""
        served = self.reads.ledger(prefix) if self.reads is not None else None
        if served is not None:
            return served
        pattern = f"^/{PREFIX}{prefix.replace('.', '[.]')}" if _PREFIX_TEXT.match(prefix) else None
        self._count()
        return self.engine.labelled(NAME, pattern)

    def delete(self, target: Entry | str) -> bool:
        if isinstance(target, Entry):
            settled = self._supersede(target, {DELETED: "1"}, tidy=False)
            if settled is None:
                return False
            # The tombstone holds: the record is deleted. What the snapshot showed goes (a
            # fresh list might show a record created anew since).
            try:
                self._bury(settled[2])
            except OvasError as exc:
                log.debug("ledger record %s deleted; its containers stay for now: %s", target, exc)
            return True
        chain = self._chain(target)
        top = chain.top
        if top is None:
            self._sweep(h.id for h in chain.dead)
            return False
        return self._bury(chain) and not top.deleted

    def close(self) -> None:
        if self._own_engine:
            self.engine.close()

    def _supersede(
        self, entry: Entry, labels: Mapping[str, str], tidy: bool = True
    ) -> tuple[int, str, Chain] | None:
        """Make the generation after `entry` carrying `labels`: its number, its id and the
        snapshot showing that it holds, or None (the entry changed or is gone), as the
        module says. With `tidy`, the generations it ends are removed."""
        match = _VERSION.match(entry.version)
        if match is None:
            return None
        generation, replaced, anchor = int(match[1]) + 1, match[2], match[3]
        made = self._make(
            f"{PREFIX}{entry.name}_{replaced}",
            {
                NAME: entry.name,
                LAYOUT: CURRENT_LAYOUT,
                GENERATION: str(generation),
                ANCHOR: anchor,
                AFTER: replaced,
                **labels,
            },
        )
        if not made:
            return None
        chain = self._chain(entry.name)
        if not holds(chain, made, generation, anchor):
            self._sweep([made])
            return None
        if not tidy:
            return generation, made, chain
        below = []  # the chain this generation ends, down to the anchor
        item = chain.generations.get(replaced)
        while item is not None and (not below or item.generation < below[-1].generation):
            below.append(item)
            item = chain.generations.get(item.after)
        # Lowest first: a generation goes only after the one it replaced (see `holds`).
        self._sweep([h.id for h in reversed(below)] + [h.id for h in chain.dead])
        return generation, made, chain

    def _bury(self, chain: Chain) -> bool:
        """End a record: remove its anchor (True when this call did), then the rest."""
        removed = chain.anchor is not None and self._remove(chain.anchor.id)
        self._sweep([h.id for h in chain.generations.values()] + [h.id for h in chain.dead])
        return removed

    def _sweep(self, ids: Iterable[str]) -> None:
        """Remove containers in order, stopping at the first the engine fails to remove;
        what stays is ignored by readers and removed by a later replace or delete."""
        try:
            for container_id in ids:
                self._remove(container_id)
        except OvasError as exc:
            log.debug("ledger containers left for a later pass: %s", exc)


def holds(chain: Chain, made: str, generation: int, anchor: str) -> bool:
    """Whether the generation `made` (number `generation`, of `anchor`) holds in `chain`, a
    snapshot taken after it was made.

    It holds when its anchor is the record's and: it is gone (only a replace made on top of
    it removes it), or no higher generation exists (a version replaced before always has a
    higher one while the record lives, since a generation is removed only after the one that
    replaced it is made), or the next one names it as the generation it replaced."""
    if chain.anchor is None or chain.anchor.id != anchor:
        return False
    if made not in chain.generations:
        return True
    later = [h for h in chain.generations.values() if h.generation > generation]
    return not later or any(h.after == made for h in later)
