"""The core's ledger (`ovas.ledger.Ledger`) as ConfigMaps in the backend's namespace.

The record `<name>` is the ConfigMap `ovas-ledger-<name>`, its fields the ConfigMap's `data`,
labelled `app.kubernetes.io/managed-by=ovas` and `ovas/ledger=record`. Each operation is one
API call, and the API server's own guarantees make it atomic:

- create is a POST: the API server refuses a second object of one name (409 AlreadyExists);
- replace is a PUT carrying the entry's `resourceVersion`: refused (409 Conflict) once the
  object changed, and 404 once it is gone;
- delete of an entry is a DELETE with `preconditions.resourceVersion` (409 when changed);
- list is one list of the `ovas/ledger` label; a prefix of record names is not selectable
  by the API server, so it is applied here.

`Entry.version` is the object's `resourceVersion`, `Entry.created` its `creationTimestamp`.
The records include the sessions' own (`session.<id>`, the places `slot.*`), yet ledger
ConfigMaps carry no `ovas/session` label, so nothing that removes a session's objects ever
touches one, and the `ovas/ledger` label is on no other object. The Role
(config/deploy/rbac.yaml) grants what this needs on configmaps: create, update, get, list
and delete.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from backends.kubernetes import objects as o
from backends.kubernetes.client import CONFIG_MAP, Kube, Missing, Taken
from ovas.errors import BackendUnavailable, CapacityExceeded, InvalidInput
from ovas.ledger import NAME_PATTERN, Entry, Ledger, LedgerError, check_record

LEDGER = o.PREFIX + "ledger"  # label: on ledger records only
OBJECT_PREFIX = "ovas-ledger-"  # 12 + at most 200 characters: within a ConfigMap's 253
LABELS = {**o.OURS, LEDGER: "record"}


def object_name(name: str) -> str:
    """The ConfigMap that holds the record `name`."""
    return OBJECT_PREFIX + name


class KubernetesLedger(Ledger):
    """Records as ConfigMaps in one namespace (module docstring). Contacts nothing until
    first used; safe to share between threads. Built from a namespace and a kubeconfig
    (`config_file`, `context`, as `Kube` takes them; picklable, for another process), or on
    a backend's `kube`, which it then leaves open on `close`. `calls` counts the API calls
    made."""

    def __init__(
        self,
        namespace: str = "omni-streaming",
        *,
        config_file: str | None = None,
        context: str | None = None,
        kube: Kube | None = None,
    ):
        self._owns = kube is None
        self.kube = kube or Kube(namespace, config_file=config_file, context=context)
        self._lock = threading.Lock()
        self.calls = 0

    @contextlib.contextmanager
    def _call(self, name: str) -> Iterator[None]:
        """Count one API call about record `name`; an object the cluster cannot keep is a
        `LedgerError`, a full ResourceQuota makes the ledger unavailable."""
        with self._lock:
            self.calls += 1
        try:
            yield
        except InvalidInput as exc:
            raise LedgerError(f"ledger record {name} cannot be kept: {exc.message}") from None
        except CapacityExceeded as exc:
            raise BackendUnavailable(
                f"ovas cannot keep its ledger record {name}: {exc.message}", detail=exc.detail
            ) from None

    def create(self, name: str, data: Mapping[str, str]) -> Entry | None:
        check_record(name, data)
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": object_name(name), "labels": dict(LABELS)},
            "data": dict(data),
        }
        try:
            with self._call(name):
                return _entry(self.kube.create(CONFIG_MAP, body))
        except Taken:
            return None
        except Missing:
            raise BackendUnavailable(
                f"The namespace {self.kube.namespace} does not exist", where=self.kube.host
            ) from None

    def replace(self, entry: Entry, data: Mapping[str, str]) -> Entry | None:
        check_record(entry.name, data)
        if not entry.version:
            return None  # an empty resourceVersion would make the PUT unconditional
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": object_name(entry.name),
                "labels": dict(LABELS),
                "resourceVersion": entry.version,
            },
            "data": dict(data),
        }
        try:
            with self._call(entry.name):
                return _entry(self.kube.replace(CONFIG_MAP, object_name(entry.name), body))
        except (Taken, Missing):
            return None

    def list(self, prefix: str = "") -> list[Entry]:
        with self._call(prefix or "list"):
            found = self.kube.list(CONFIG_MAP, LEDGER)
        entries = (_entry(config_map) for config_map in found)
        return [e for e in entries if e is not None and e.name.startswith(prefix)]

    def get(self, name: str) -> Entry | None:
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            return None  # no record can have it
        with self._call(name):
            found = self.kube.get(CONFIG_MAP, object_name(name))
        return _entry(found) if found is not None else None

    def delete(self, target: Entry | str) -> bool:
        name = target if isinstance(target, str) else target.name
        version = None if isinstance(target, str) else target.version
        if not isinstance(name, str) or not NAME_PATTERN.match(name) or version == "":
            return False  # no record has that name, or that version
        try:
            with self._call(name):
                return self.kube.delete(CONFIG_MAP, object_name(name), version=version)
        except Taken:
            return False

    def close(self) -> None:
        if self._owns:
            self.kube.close()


def _entry(config_map: Mapping[str, Any]) -> Entry | None:
    """The record a ConfigMap holds; None for one that is not a ledger record."""
    meta = config_map.get("metadata") or {}
    name = str(meta.get("name") or "")
    if LEDGER not in (meta.get("labels") or {}) or not name.startswith(OBJECT_PREFIX):
        return None
    created = o.parse_time(meta.get("creationTimestamp")) or datetime.now(UTC)
    return Entry(
        name[len(OBJECT_PREFIX) :],
        dict(config_map.get("data") or {}),
        str(meta.get("resourceVersion") or ""),
        created,
    )
