"""Sessions read back from Docker's container list: grouping records by session, and the
state each group is in. Pure: the caller lists the containers and runs the probes."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from backends.docker import containers as c
from ovas.models import Route, Session, SessionState
from ovas.services import is_session_id

READY_MESSAGE = "Session is active"
_EXIT = re.compile(r"Exited \((-?\d+)\)")


@dataclass(frozen=True)
class Record:
    """One container of ovas, from a `containers.list` summary."""

    name: str
    container_id: str
    state: str  # Docker's: created, running, exited, dead, paused, restarting, removing
    status: str  # Docker's human text: "Up 3 seconds", "Exited (3) 2 seconds ago"
    created: datetime
    labels: c.SessionLabels
    raw_labels: Mapping[str, str]

    @property
    def exit_code(self) -> int | None:
        match = _EXIT.search(self.status)
        return int(match.group(1)) if match else None

    @property
    def ended(self) -> bool:
        return self.state in ("exited", "dead")


@dataclass
class SessionRecords:
    """Every record of one session. While one record replaces another (pending -> Kit
    container -> failed) both exist for a moment; the later one decides."""

    session_id: str
    container: Record | None = None
    pending: Record | None = None
    failed: Record | None = None

    @property
    def records(self) -> list[Record]:
        return [r for r in (self.container, self.pending, self.failed) if r is not None]

    @property
    def labels(self) -> c.SessionLabels:
        return self.records[0].labels


def read_summary(summary: Mapping[str, Any]) -> Record:
    """A `containers.list` summary as a Record. Raises ValueError when it is not a
    well-formed record of ovas (the reaper removes those)."""
    names = summary.get("Names") or [""]
    name = names[0].lstrip("/")
    labels = c.parse_labels(summary.get("Labels") or {})
    if not is_session_id(labels.session_id):
        raise ValueError(f"{name}: {labels.session_id!r} is not a session id")
    if name != c.container_name(labels.session_id, labels.record):
        raise ValueError(f"{name}: the name does not match its labels")
    return Record(
        name=name,
        container_id=summary.get("Id", ""),
        state=summary.get("State", ""),
        status=summary.get("Status", ""),
        created=datetime.fromtimestamp(int(summary.get("Created", 0)), UTC),
        labels=labels,
        raw_labels=dict(summary.get("Labels") or {}),
    )


def group(summaries: Iterable[Mapping[str, Any]]) -> tuple[dict[str, SessionRecords], list]:
    """Sessions by id, and the summaries that are no well-formed record."""
    sessions: dict[str, SessionRecords] = {}
    malformed = []
    for summary in summaries:
        try:
            record = read_summary(summary)
        except ValueError:
            malformed.append(summary)
            continue
        session_id = record.labels.session_id
        entry = sessions.setdefault(session_id, SessionRecords(session_id))
        setattr(entry, record.labels.record, record)
    return sessions, malformed


def used_ports(sessions: Iterable[SessionRecords]) -> set[int]:
    return {p.host_port for s in sessions for r in s.records for p in r.labels.ports}


def used_gpus(sessions: Iterable[SessionRecords]) -> set[str]:
    return {g for s in sessions for r in s.records for g in r.labels.gpus}


def timeout_message(labels: c.SessionLabels, detail: str = "") -> str:
    seconds = (labels.deadline - labels.created_time).total_seconds()
    return f"The session was not ready within {seconds:.0f} seconds" + (
        f" ({detail})" if detail else ""
    )


def exit_message(code: int | None, detail: str = "") -> str:
    text = "The container exited" + (f" with code {code}" if code is not None else "")
    return text + (f": {detail}" if detail else "")


def needs_probe(entry: SessionRecords) -> bool:
    """True when readiness depends on a probe: a running Kit container and no failure."""
    container = entry.container
    return entry.failed is None and container is not None and container.state == "running"


def session_state(
    entry: SessionRecords,
    now: datetime,
    *,
    ready: bool = False,
    public_host: str = "127.0.0.1",
    exit_detail: str = "",
    pull_message: str = "",
) -> Session:
    """The session as clients see it. `ready` is the probe's verdict on a running
    container; `exit_detail` adds to an exit (logs); `pull_message` describes a pull."""
    labels = entry.labels
    session = Session(
        id=labels.session_id,
        app_id=labels.app_id,
        version=labels.version,
        profile=labels.profile,
        username=labels.username,
        created_time=labels.created_time,
    )
    container = entry.container
    if entry.failed is not None:
        session.state, session.message = SessionState.FAILED, entry.failed.labels.message
    elif container is not None and container.ended:
        session.state = SessionState.FAILED
        session.message = exit_message(container.exit_code, exit_detail)
    elif container is not None and container.state == "running" and ready:
        session.state, session.message = SessionState.READY, READY_MESSAGE
        session.host = public_host
        session.routes = routes(labels)
    elif now >= labels.deadline:
        detail = f"the image {labels.image} was still being pulled" if container is None else ""
        session.state, session.message = SessionState.FAILED, timeout_message(labels, detail)
    elif container is None:
        session.message = pull_message or f"Pulling the image {labels.image}"
    elif container.state == "running":
        session.message = "Starting the Kit application"
    else:
        session.message = "Starting the container"
    return session


def routes(labels: c.SessionLabels) -> tuple[Route, ...]:
    by_name = {p.name: p for p in labels.ports}
    found = []
    for name, protocol in (("signaling", "TCP"), ("media", "UDP")):
        if name in by_name:
            port = by_name[name]
            found.append(Route(name, protocol, port.host_port, port.container_port))
    return tuple(found)


def failed_since(entry: SessionRecords, finished: datetime | None = None) -> datetime | None:
    """Since when the session is failed (for the reaper's grace), or None if it is not
    known to be failed without probing. `finished` is an ended container's FinishedAt."""
    if entry.failed is not None:
        return entry.failed.created
    if entry.container is not None and entry.container.ended:
        return finished or entry.container.created
    return None
