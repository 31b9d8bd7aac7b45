"""Sessions as the releases before the core's ledger recorded them on the engine, read so
that the core records them in its ledger (`ovas.Backend.earlier_records`): an
upgrade keeps every session.

Those releases kept a session's fields as labels of its Kit container (or pending record,
format 1: `containers.SessionLabels.earlier`), and its marks, claim by a user and outcome as
never-started containers labelled `ovas.session` (`ovas-<id>.ready`, `.connected`, `.idle`,
`.claimed`, `.outcome`), with its capacity, user, pool, port and GPU claims beside them.
From those this reads the session's `Record`, the last log lines of an ended one, and the
places a live one holds: its GPUs by device id, and one place per host port it publishes.
Their containers stay as they are (a running Kit container is never replaced); they go when
the session's workload is stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from backends.docker import containers as c
from backends.docker.observe import SessionObjects
from ovas.lifecycle import Mark, Record
from ovas.workloads import EarlierRecord, Places


def is_earlier(objects: SessionObjects) -> bool:
    """Whether the session was recorded by an earlier release: its describing record (Kit
    container, pending record, outcome) carries the session's fields."""
    describing = objects.describing
    return describing is not None and c.parse_labels(describing.labels).earlier


def record_of(objects: SessionObjects) -> Record:
    """The session's record as an earlier release kept it: what was asked (its describing
    labels), its marks, the user a warm pool's session was claimed by, and its outcome.
    Raises ValueError when the labels are not well formed."""
    assert objects.describing is not None
    labels = c.parse_labels(objects.describing.labels)
    marks = {}
    for mark, found in objects.marks.items():
        try:
            marks[mark] = datetime.fromisoformat(found.labels[c.AT])
        except (KeyError, ValueError):
            continue
    outcome = None
    if objects.outcome is not None:
        try:
            outcome = c.parse_outcome(objects.outcome.labels)[0]
        except ValueError:
            outcome = None
    username = labels.username
    claim = objects.marks.get(Mark.CLAIMED)
    if labels.pool and claim is not None and Mark.CLAIMED in marks:
        username = claim.labels.get(c.USER, "")
    else:
        marks.pop(Mark.CLAIMED, None)
    assert labels.created_time is not None and labels.deadline is not None
    return Record(
        id=labels.session_id,
        app_id=labels.app_id,
        version=labels.version,
        profile=labels.profile,
        username=username,
        pool=labels.pool,
        rendering=labels.rendering,
        created_time=labels.created_time,
        deadline=labels.deadline,
        clocks=labels.clocks,
        marks=marks,
        outcome=outcome,
    )


def earlier_record(
    objects: SessionObjects,
    *,
    logs: Callable[[str], list[str]],
    gpu_ids: Callable[[str], str],
    ports: Callable[[str, int], Places],
) -> EarlierRecord:
    """`objects` (`is_earlier`) as the core records it. `logs(container_id)` reads an ended
    session's last lines from its Kit container while it is there (else those its outcome
    kept); `gpu_ids(id)` is the inventory's device id of a GPU its labels name; `ports(
    protocol, count)` are the places of `count` host ports of `protocol`. Raises
    ValueError when its labels are not well formed."""
    record = record_of(objects)
    if record.outcome is not None:
        assert objects.outcome is not None
        kept = c.parse_outcome(objects.outcome.labels)[1]
        container = objects.container
        read = logs(container.container_id) if container is not None else []
        return EarlierRecord(record, tuple(read or kept))
    assert objects.describing is not None
    labels = c.parse_labels(objects.describing.labels)
    held: list[Places] = []
    if labels.gpus:
        ids = tuple(gpu_ids(gpu) for gpu in labels.gpus)
        held.append(Places("gpu", ids, len(ids), _unused))
    for protocol, count in sorted(c.count_protocols(labels.ports).items()):
        held.append(ports(protocol, count))
    # A live session holds a place of the capacity and its user's (a pool's) whatever the
    # earlier release's limits were: it counts against this release's.
    return EarlierRecord(record, (), frozenset({"all", "user", "pool"}), tuple(held))


def earlier_records(
    sessions: Sequence[SessionObjects], **readers
) -> tuple[list[EarlierRecord], list[str]]:
    """`earlier_record` of each session an earlier release recorded, and the ids of those
    whose labels cannot be read."""
    found, unreadable = [], []
    for objects in sessions:
        try:
            if is_earlier(objects):
                found.append(earlier_record(objects, **readers))
        except ValueError:
            unreadable.append(objects.session_id)
    return found, unreadable


def _unused(free: Sequence[str]):
    raise AssertionError("the places of a session an earlier release started are not refused")
