"""The records `ovas.Backend` keeps in a backend's ledger, each through a
`RecordCodec` with its format version (`ovas.ledger`).

- `SESSION_RECORD` (`session.<id>`, format 1): a session's `Record` in named fields (`id`,
  `app_id`, `version`, `profile`, `username`, `created`, `deadline` as ISO times, the
  clocks in seconds, `mark_<mark>` ISO times, `outcome_state`, `outcome_reason`,
  `outcome_message`, `outcome_time`, `pool`, `rendering`, and `node` where its workload
  ran, once known), and `logs`, a JSON list of its last log lines once it ended. Read as
  `(Record, logs)`; a field a reader does not know is ignored.
- `SLOT_RECORD` (`slot.<kind>.<scope><n>`, format 1): one place of an admission limit,
  `session` (the id holding it) and `taken` (ISO time, by the backend's clock).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime

from ovas.ledger import MAX_VALUE, RecordCodec
from ovas.lifecycle import Mark, Outcome, Record
from ovas.models import Clocks, Reason, SessionState


def encode_session(record: Record, logs: tuple[str, ...] = ()) -> dict[str, str]:
    """The ledger data of a session's `record` and its last log `logs` (the newest that fit
    one value), in the current format of `SESSION_RECORD`."""
    fields = {
        "id": record.id,
        "app_id": record.app_id,
        "version": record.version,
        "profile": record.profile,
        "username": record.username,
        "created": record.created_time.isoformat(),
        "deadline": record.deadline.isoformat(),
        "connect_timeout": repr(float(record.clocks.connect_timeout)),
        "idle_timeout": repr(float(record.clocks.idle_timeout)),
        "max_lifetime": repr(float(record.clocks.max_lifetime)),
        "pool": record.pool,
        "rendering": record.rendering,
        **{f"mark_{mark.value}": at.isoformat() for mark, at in record.marks.items()},
    }
    if record.node:
        fields["node"] = record.node
    if record.outcome is not None:
        fields |= {
            "outcome_state": record.outcome.state.value,
            "outcome_reason": record.outcome.reason.value,
            "outcome_message": record.outcome.message[:MAX_VALUE],
            "outcome_time": record.outcome.ended_time.isoformat(),
        }
    lines = list(logs)
    while lines and len(json.dumps(lines)) > MAX_VALUE:
        lines.pop(0)
    if lines:
        fields["logs"] = json.dumps(lines)
    return SESSION_RECORD.encode(fields)


def _read_session_v1(fields: Mapping[str, str]) -> tuple[Record, tuple[str, ...]]:
    outcome = None
    if "outcome_state" in fields:
        outcome = Outcome(
            SessionState(fields["outcome_state"]),
            Reason(fields["outcome_reason"]),
            fields["outcome_message"],
            datetime.fromisoformat(fields["outcome_time"]),
        )
    record = Record(
        id=fields["id"],
        app_id=fields["app_id"],
        version=fields["version"],
        profile=fields["profile"],
        username=fields["username"],
        created_time=datetime.fromisoformat(fields["created"]),
        deadline=datetime.fromisoformat(fields["deadline"]),
        clocks=Clocks(
            float(fields["connect_timeout"]),
            float(fields["idle_timeout"]),
            float(fields["max_lifetime"]),
        ),
        marks={
            m: datetime.fromisoformat(fields[f"mark_{m.value}"])
            for m in Mark
            if f"mark_{m.value}" in fields
        },
        outcome=outcome,
        pool=fields.get("pool", ""),
        rendering=fields.get("rendering", ""),
        node=fields.get("node", ""),
    )
    return record, tuple(json.loads(fields.get("logs", "[]")))


# A session's record: `(Record, last log lines)` as read from its named fields.
SESSION_RECORD = RecordCodec("session", current=1, readers={1: _read_session_v1})
# One place: `session` (the id holding it), `taken` (ISO time, by the backend's clock).
SLOT_RECORD = RecordCodec("slot", current=1, readers={1: dict})


def digest(*parts: str) -> str:
    """A short digest of `parts`: a scope that fits a ledger name, whatever they hold."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]
