"""Sessions as the releases before the ledger recorded them on their own objects, made from
sessions of this release, for the adoption tests (`test_adoption.py`, `grants.py`); the
upgrade test (`test_upgrade.py`) runs those releases' own code instead.

`as_earlier` rewrites a session the way `release` left it: its record in annotations of its
Pod or HelmRelease (from 93837ff on, of its Service too, with the node its pod ran on, the
Service then owned by nothing), its outcome ConfigMap `ovas-<id>` once it ended, the
admission slots it held as ConfigMaps owned by its Pod or HelmRelease; neither its ledger
record nor its places are left."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from backends.kubernetes import objects as o
from backends.kubernetes.ledger import object_name as ledger_object
from kubernetes_backend.steps import CONFIG_MAPS, PODS, RELEASES, SERVICES
from ovas.ledger import Entry
from ovas.lifecycle import Record
from ovas.session_records import SESSION_RECORD
from ovas.workloads import SESSION_PREFIX, SLOT_PREFIX

RELEASES_BEFORE = ("070c004", "93837ff")  # before formats; formats, records on objects
SCOPES = {"all": "global", "user": "user", "pool": "pool"}


def record_annotations(record: Record) -> dict[str, str]:
    """A session's record as those releases annotated it."""
    notes = {
        o.APP: record.app_id,
        o.VERSION: record.version,
        o.PROFILE: record.profile,
        o.USERNAME: record.username,
        o.CREATED: record.created_time.isoformat(),
        o.DEADLINE: record.deadline.isoformat(),
    }
    if record.pool:
        notes[o.POOL] = record.pool
    if record.rendering:
        notes[o.RENDERING] = record.rendering
    for name, annotation in o.CLOCKS.items():
        value = getattr(record.clocks, name)
        notes[annotation] = f"{value:g}" if value != int(value) else str(int(value))
    for mark, at in record.marks.items():
        notes[o.MARKS[mark]] = at.isoformat()
    return notes


def _labels(obj: dict[str, Any], release: str, **more: str) -> None:
    labels = obj["metadata"].setdefault("labels", {})
    labels.pop(o.FORMAT, None)
    if release != "070c004":
        labels[o.FORMAT] = "1"
    labels.update(more)


def as_earlier(cluster, mode: str, session_id: str, release: str) -> Record:
    """Rewrite the session of this release (in `mode`) as `release` left it; its record."""

    def rewrite() -> Record:
        em = cluster.emulator
        namespace = "omni-streaming"
        key = em.key(CONFIG_MAPS, namespace, ledger_object(SESSION_PREFIX + session_id))
        held = em.live(key)
        record, logs = SESSION_RECORD.decode(Entry("", held["data"], ""))
        em.remove(key)
        places = []
        for place_key, place in list(em.items(CONFIG_MAPS, namespace)):
            name = place["metadata"]["name"]
            if name.startswith(ledger_object(SLOT_PREFIX)) and (
                place.get("data", {}).get("session") == session_id
            ):
                places.append(name.removeprefix(ledger_object(SLOT_PREFIX)).split(".")[0])
                em.remove(place_key)
        notes = record_annotations(record)
        user = {o.USER: o.label_value(record.username)}
        name = o.object_name(session_id)
        owner_key = em.key(RELEASES if mode == "helmrelease" else PODS, namespace, name)
        owner = em.live(owner_key)
        if owner is not None:
            owner = copy.deepcopy(owner)
            _labels(owner, release, **user)
            kept = dict(notes)
            if mode == "helmrelease" and release != "070c004" and record.node:
                kept[o.NODE] = record.node
            owner["metadata"]["annotations"] = {**owner["metadata"].get("annotations", {}), **kept}
            owner = em.update(owner_key, owner)
        service_key = em.key(SERVICES, namespace, name)
        service = em.live(service_key)
        if mode == "pod" and service is not None:
            service = copy.deepcopy(service)
            _labels(service, release, **user)
            if release != "070c004":
                service["metadata"].pop("ownerReferences", None)
                extra = {o.NODE: record.node} if record.node else {}
                service["metadata"]["annotations"] = {
                    **service["metadata"].get("annotations", {}),
                    **notes,
                    **extra,
                }
            em.update(service_key, service)
        base = {"apiVersion": "v1", "kind": "ConfigMap"}
        if record.outcome is not None:
            outcome = record.outcome
            config_map = {
                **base,
                "metadata": {
                    "name": name,
                    "labels": {
                        o.MANAGED_BY: "ovas",
                        o.SESSION: session_id,
                        o.OUTCOME: outcome.state.value,
                        **user,
                    },
                    "annotations": {
                        **notes,
                        o.STATE: outcome.state.value,
                        o.REASON: outcome.reason.value,
                        o.MESSAGE: outcome.message,
                        o.ENDED: outcome.ended_time.isoformat(),
                    },
                },
                "data": {o.LOGS: "\n".join(logs)},
            }
            _labels(config_map, release)
            em.create(CONFIG_MAPS, namespace, config_map)
            return record
        for n, kind in enumerate(places):
            scope = SCOPES[kind]
            digest = hashlib.sha256(record.username.encode()).hexdigest()[:12]
            names = {"global": f"ovas-slot-{n}", "user": f"ovas-user-{digest}-{n}"}
            slot = {
                **base,
                "metadata": {
                    "name": names.get(scope, f"ovas-pool-{digest}-{n}"),
                    "labels": {o.MANAGED_BY: "ovas", o.SLOT: scope, o.SESSION: session_id, **user},
                    "annotations": {
                        o.USERNAME: record.username,
                        o.CREATED: record.created_time.isoformat(),
                    },
                },
                "data": {"session": session_id},
            }
            if owner is not None:
                slot["metadata"]["ownerReferences"] = [o.owner_reference(owner)]
            _labels(slot, release)
            em.create(CONFIG_MAPS, namespace, slot)
        return record

    return cluster.locked(rewrite)
