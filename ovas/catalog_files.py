"""The file catalog: OVAS custom resources as YAML files in a folder.

Every file under the folder (recursively) is read in each form `kubectl apply -f` takes:
`*.yaml` / `*.yml` with several documents, `*.json` with one object or several in a row, and
in either, a list object (`kind: List`, or `ApplicationList`...) whose `items` are the
documents. Documents that are not valid are reported with their file and field
(`problems`), never silently dropped; the valid ones are served. Edits rewrite only the files
they touch (plain YAML documents; a JSON file or a list object is the operator's to change,
and an edit needing to rewrite one is refused), each atomically
(a temporary file renamed over the old one) under a lock file, so several worker processes
never lose each other's writes. Other processes' edits are seen within `reload_interval`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import filelock
import yaml

from ovas.backend import Catalog
from ovas.errors import (
    ApplicationNotFound,
    CatalogError,
    Conflict,
    InvalidInput,
    VersionNotFound,
)
from ovas.models import Application, Profile, Version, WarmPool
from ovas.names import APP_ID_PATTERN
from ovas.resources import (
    API_VERSION,
    APPLICATION,
    KINDS,
    POOL_API_VERSION,
    PROFILE,
    VERSION,
    WARM_POOL,
    application_from_resource,
    application_to_resource,
    profile_from_resource,
    version_from_resource,
    version_to_resource,
    warm_pool_from_resource,
)

log = logging.getLogger(__name__)
LOCK_NAME = ".ovas-catalog.lock"
SUFFIXES = (".yaml", ".yml", ".json")  # what `kubectl apply -f <folder>` reads
MAX_LIST_DEPTH = 8


@dataclass
class _Doc:
    path: Path
    where: str  # "document 2", or "document 1, items[3]" within a list object
    raw: dict[str, Any]
    value: Application | Version | Profile | WarmPool
    listed: bool = False  # an item of a list object (`kind: List`)


@dataclass
class _Snapshot:
    signature: tuple
    docs: list[_Doc] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    apps: dict[str, Application] = field(default_factory=dict)
    versions: dict[str, list[Version]] = field(default_factory=dict)
    profiles: dict[str, Profile] = field(default_factory=dict)
    pools: dict[str, WarmPool] = field(default_factory=dict)


# Said without the folder's path: /ready is public, and a server's paths are nobody's business.
MISSING_FOLDER = "the catalog folder (OVAS_CATALOG_PATH) does not exist"
# Whatever stops a file from being read or parsed: it is reported and skipped, never raised.
# RecursionError: YAML nested some 500 levels deep, JSON some 1000.
UNREADABLE = (OSError, ValueError, yaml.YAMLError, RecursionError, MemoryError)


class FileCatalog(Catalog):
    """A catalog read from, and edited in, a folder of YAML files."""

    def __init__(self, path: str | os.PathLike, *, reload_interval: float = 1.0):
        try:
            self.root = Path(path).resolve()
        except (OSError, RuntimeError):  # a symlink loop: said by `check` and `problems`
            self.root = Path(path).absolute()
        self.reload_interval = reload_interval
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None
        self._checked = 0.0
        self._reported: list[str] = []

    # Loading

    def _files(self) -> list[Path]:
        """The catalog files under the folder: every name with a catalog suffix that is not a
        folder, also those that cannot be read (a broken link, a symlink loop), so that they
        are reported."""
        if not self.root.is_dir():
            return []
        try:
            found = [p for p in self.root.rglob("*") if p.suffix in SUFFIXES and not p.is_dir()]
        except OSError as exc:
            log.error("catalog: %s cannot be listed: %s", self.root, exc)
            return []
        return sorted(found)

    def _folder_problem(self) -> str | None:
        """Why the folder cannot be read (without its path); None when it can."""
        try:
            self.root.stat()
        except FileNotFoundError:
            return MISSING_FOLDER
        except OSError as exc:
            return f"the catalog folder (OVAS_CATALOG_PATH) cannot be read: {_why(exc)}"
        return (
            None if self.root.is_dir() else "the catalog path (OVAS_CATALOG_PATH) is not a folder"
        )

    def _signature(self) -> tuple:
        entries = []
        for path in self._files():
            try:
                stat = path.stat()
                entries.append((str(path), stat.st_mtime_ns, stat.st_size))
            except OSError as exc:
                entries.append((str(path), type(exc).__name__))
        return tuple(entries)

    def _current(self) -> _Snapshot:
        now = time.monotonic()
        snapshot = self._snapshot
        if snapshot is not None and now - self._checked < self.reload_interval:
            return snapshot
        with self._lock:
            signature = self._signature()
            if self._snapshot is None or self._snapshot.signature != signature:
                self._snapshot = self._load(signature)
                self._report(self._snapshot.problems)
            self._checked = time.monotonic()
            return self._snapshot

    def _report(self, problems: list[str]) -> None:
        if problems != self._reported:
            for problem in problems:
                log.error("catalog: %s", problem)
            self._reported = problems

    def _load(self, signature: tuple) -> _Snapshot:
        snapshot = _Snapshot(signature)
        if problem := self._folder_problem():
            snapshot.problems.append(problem)
            return snapshot
        for path in self._files():
            try:
                documents = _read(path)
            except UNREADABLE as exc:
                snapshot.problems.append(f"{self._rel(path)}: cannot be read: {_why(exc)}")
                continue
            for where, raw, listed in _flatten(documents):
                try:
                    snapshot.docs.append(_Doc(path, where, raw, _parse(raw), listed))
                except (ValueError, RecursionError) as exc:
                    snapshot.problems.append(f"{self._rel(path)} ({where}): {_why(exc)}")
        self._index(snapshot)
        return snapshot

    def _index(self, snapshot: _Snapshot) -> None:
        seen: dict[tuple[str, str], _Doc] = {}
        for doc in list(snapshot.docs):
            key = (type(doc.value).__name__, _key(doc.value))
            if key in seen:
                first = seen[key]
                snapshot.problems.append(
                    f"{self._rel(doc.path)} ({doc.where}): duplicates {key[0]} "
                    f"'{key[1]}' of {self._rel(first.path)} ({first.where})"
                )
                snapshot.docs.remove(doc)
                continue
            seen[key] = doc
            if isinstance(doc.value, Application):
                snapshot.apps[doc.value.id] = doc.value
            elif isinstance(doc.value, Profile):
                snapshot.profiles[doc.value.id] = doc.value
        for doc in snapshot.docs:
            if isinstance(doc.value, WarmPool):
                self._index_pool(snapshot, doc)
            if isinstance(doc.value, Version):
                if doc.value.app_id in snapshot.apps:
                    snapshot.versions.setdefault(doc.value.app_id, []).append(doc.value)
                else:
                    snapshot.problems.append(
                        f"{self._rel(doc.path)} ({doc.where}): metadata.labels.app: "
                        f"no Application '{doc.value.app_id}' in the catalog"
                    )

    def _index_pool(self, snapshot: _Snapshot, doc: _Doc) -> None:
        """Serve a pool whose application and profile are in the catalog; report others."""
        pool = doc.value
        where = f"{self._rel(doc.path)} ({doc.where})"
        if pool.application not in snapshot.apps:
            snapshot.problems.append(
                f"{where}: spec.application: no Application '{pool.application}' in the catalog"
            )
        elif pool.profile not in snapshot.profiles:
            snapshot.problems.append(
                f"{where}: spec.profile: no ApplicationProfile '{pool.profile}' in the catalog"
            )
        else:
            snapshot.pools[pool.name] = pool

    def _rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    # Reading

    def describe(self, insider: bool) -> dict[str, Any]:
        return {"path": str(self.root)} if insider else {}

    @property
    def problems(self) -> list[str]:
        """Every invalid document, as `file (document N): field: what is wrong`."""
        return list(self._current().problems)

    def check(self) -> None:
        if problem := self._folder_problem():
            log.warning("catalog: %s: %s", self.root, problem)
            raise CatalogError([problem], where=str(self.root))

    def applications(self) -> list[Application]:
        return list(self._current().apps.values())

    def application(self, app_id: str) -> Application:
        try:
            return self._current().apps[app_id]
        except KeyError:
            raise ApplicationNotFound(app_id) from None

    def versions(self, app_id: str) -> list[Version]:
        snapshot = self._current()
        if app_id not in snapshot.apps:
            raise ApplicationNotFound(app_id)
        return list(snapshot.versions.get(app_id, []))

    def profiles(self) -> list[Profile]:
        return list(self._current().profiles.values())

    def warm_pools(self) -> list[WarmPool]:
        return list(self._current().pools.values())

    # Editing

    def create_application(self, app: Application) -> None:
        with self._editing() as docs:
            if any(_is(d, APPLICATION) and d.value.id == app.id for d in docs):
                raise Conflict(f"Application '{app.id}' already exists")
            docs.append(_new(self._file_for(app.id), application_to_resource(app)))

    def update_application(self, app: Application) -> None:
        with self._editing() as docs:
            doc = self._find_app(docs, app.id)
            raw = application_to_resource(app)
            raw["metadata"] = {**doc.raw.get("metadata", {}), "name": app.id}
            doc.raw, doc.value = raw, app

    def delete_application(self, app_id: str) -> None:
        with self._editing() as docs:
            self._find_app(docs, app_id)
            docs[:] = [
                d
                for d in docs
                if not (_is(d, APPLICATION) and d.value.id == app_id)
                and not (_is(d, VERSION) and d.value.app_id == app_id)
            ]

    def create_version(self, version: Version) -> None:
        with self._editing() as docs:
            app_doc = self._find_app(docs, version.app_id)
            if any(_is(d, VERSION) and _key(d.value) == _key(version) for d in docs):
                raise Conflict(f"Version '{version.version}' of '{version.app_id}' already exists")
            docs.append(_new(app_doc.path, version_to_resource(version)))

    def delete_version(self, app_id: str, version: str) -> None:
        with self._editing() as docs:
            self._find_app(docs, app_id)
            kept = [d for d in docs if not (_is(d, VERSION) and _key(d.value) == (app_id, version))]
            if len(kept) == len(docs):
                raise VersionNotFound(app_id, version)
            docs[:] = kept

    def _find_app(self, docs: list[_Doc], app_id: str) -> _Doc:
        for doc in docs:
            if _is(doc, APPLICATION) and doc.value.id == app_id:
                return doc
        raise ApplicationNotFound(app_id)

    def _file_for(self, app_id: str) -> Path:
        if not APP_ID_PATTERN.match(app_id):
            raise InvalidInput(f"'{app_id}' is not a valid application id", field="id")
        path = (self.root / f"{app_id}.yaml").resolve()
        if path.parent != self.root:
            raise InvalidInput(f"'{app_id}' is not a valid application id", field="id")
        return path

    def _editing(self):
        return _Edit(self)


def _parse(raw: Any) -> Application | Version | Profile | WarmPool:
    if not isinstance(raw, dict):
        raise ValueError("a document must be a mapping")
    if raw.get("kind") == WARM_POOL:
        if raw.get("apiVersion") != POOL_API_VERSION:
            raise ValueError(
                f"apiVersion: must be {POOL_API_VERSION}, not {raw.get('apiVersion')!r}"
            )
        return warm_pool_from_resource(raw)
    if raw.get("apiVersion") != API_VERSION:
        raise ValueError(f"apiVersion: must be {API_VERSION}, not {raw.get('apiVersion')!r}")
    kind = raw.get("kind")
    if kind == APPLICATION:
        return application_from_resource(raw)
    if kind == VERSION:
        return version_from_resource(raw)
    if kind == PROFILE:
        return profile_from_resource(raw)
    raise ValueError(f"kind: must be one of {', '.join((*KINDS, WARM_POOL))}, not {kind!r}")


def _key(value: Application | Version | Profile | WarmPool) -> Any:
    if isinstance(value, Version):
        return (value.app_id, value.version)
    if isinstance(value, WarmPool):
        return value.name
    return value.id


def _is(doc: _Doc, kind: str) -> bool:
    return doc.raw.get("kind") == kind


def _new(path: Path, raw: dict[str, Any]) -> _Doc:
    return _Doc(path, "new", raw, _parse(raw))


def _read(path: Path) -> list[Any]:
    """The documents of a catalog file, in order: YAML documents, or the JSON objects of a
    `.json` file (one, or several in a row, as kubectl's decoder takes them). Raises one of
    `UNREADABLE`: OSError, UnicodeDecodeError, ValueError (JSON), yaml.YAMLError, or
    RecursionError for a file nested deeper than the parser follows."""
    if path.exists() and not (path.is_file() or path.is_dir()):
        raise OSError(0, "not a regular file")  # a FIFO or a device would block the read
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".json":
        return list(yaml.safe_load_all(text))
    decoder, documents, at = json.JSONDecoder(), [], 0
    while (at := _skip_space(text, at)) < len(text):
        document, at = decoder.raw_decode(text, at)
        documents.append(document)
    return documents


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at] in " \t\r\n":
        at += 1
    return at


def _flatten(documents: list[Any]):
    """(where, document, listed) for each document, the items of list objects in their place
    (kubectl flattens `kind: List` and typed lists such as `ApplicationList` alike)."""
    for number, raw in enumerate(documents, 1):
        if raw is not None:
            yield from _items(f"document {number}", raw, 0)


def _items(where: str, raw: Any, depth: int):
    is_list = (
        isinstance(raw, dict)
        and isinstance(raw.get("kind"), str)
        and raw["kind"].endswith("List")
        and "items" in raw
    )
    if not is_list:
        yield where, raw, depth > 0
        return
    items = raw["items"]
    if not isinstance(items, list) or depth >= MAX_LIST_DEPTH:
        yield where, {"kind": raw["kind"], "items": "?"}, depth > 0
        return
    for index, item in enumerate(items):
        yield from _items(f"{where}, items[{index}]", item, depth + 1)


class _Edit:
    """Lock the folder, read it fresh, let the caller change the document list, then write
    back each file whose documents changed (atomically), and forget the cached snapshot."""

    def __init__(self, catalog: FileCatalog):
        self.catalog = catalog
        self.lock = filelock.FileLock(str(catalog.root / LOCK_NAME), timeout=30)

    def __enter__(self) -> list[_Doc]:
        self.catalog.root.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        try:
            fresh = self.catalog._load(self.catalog._signature())
        except BaseException:
            self.lock.release()
            raise
        self.before = {id(d): (d.path, d.raw) for d in fresh.docs}
        self.files = {d.path for d in fresh.docs}
        self.docs = list(fresh.docs)
        return self.docs

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._write()
        finally:
            self.lock.release()
            with self.catalog._lock:
                self.catalog._snapshot = None

    def _write(self) -> None:
        after: dict[Path, list[_Doc]] = {}
        for doc in self.docs:
            after.setdefault(doc.path, []).append(doc)
        changed = set()
        kept_ids = {id(d) for d in self.docs}
        for doc_id, (path, _raw) in self.before.items():
            if doc_id not in kept_ids:
                changed.add(path)
        for doc in self.docs:
            if id(doc) not in self.before or self.before[id(doc)][1] is not doc.raw:
                changed.add(doc.path)
        # A file may also hold documents this catalog could not read: keep them as they are.
        # Every file is read before any is written, so an edit that cannot be made changes
        # nothing.
        plans = [
            (path, after.get(path, []), _unparsed(path, self.catalog)) for path in sorted(changed)
        ]
        for path, docs, untouched in plans:
            if not docs and not untouched:
                path.unlink(missing_ok=True)
                continue
            _atomic_write(path, [d.raw for d in docs] + untouched)


def _unparsed(path: Path, catalog: FileCatalog) -> list[Any]:
    """The documents of `path` that this catalog does not serve, to be written back as they
    are. A file that cannot be read at all is never overwritten: an edit fails instead."""
    if not path.exists():
        return []
    try:
        documents = _read(path)
    except UNREADABLE as exc:
        raise Conflict(
            f"{catalog._rel(path)} cannot be read, so ovas will not rewrite it; fix the file "
            f"first ({_why(exc)})"
        ) from None
    flat = list(_flatten(documents))
    if path.suffix == ".json" or any(listed for _, _, listed in flat):
        form = "a JSON file" if path.suffix == ".json" else "a list object (kind: List)"
        raise Conflict(
            f"{catalog._rel(path)} is {form}, which ovas reads but does not rewrite; make this "
            "change in the file by hand, or move its documents to a YAML file"
        )
    kept = []
    for _, raw, _ in flat:
        try:
            _parse(raw)
        except (ValueError, RecursionError):
            kept.append(raw)
    return kept


def _why(exc: BaseException) -> str:
    """Why a file cannot be read, without its path: an OSError's text names the absolute
    path, and these words reach `/ready` (public) and editing answers."""
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    if isinstance(exc, RecursionError):
        return "it is nested deeper than ovas reads"
    if isinstance(exc, MemoryError):
        return "it is too large to read"
    return str(exc)


def _atomic_write(path: Path, documents: list[Any]) -> None:
    text = yaml.safe_dump_all(documents, sort_keys=False, explicit_start=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
