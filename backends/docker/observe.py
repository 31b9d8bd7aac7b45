"""Workloads read back from Docker's container list: the containers of each session grouped
(its Kit container, pending and fault records; an earlier release's records of it too), and
what they show as an `Observation` for the core's lifecycle. Pure: the caller lists the
containers and runs the probes and the client counts."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from backends.docker import containers as c
from ovas.ledger import UnknownFormat
from ovas.lifecycle import Mark, Observation, Stage
from ovas.models import Reason, Route
from ovas.names import is_session_id

_EXIT = re.compile(r"Exited \((-?\d+)\)")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Found:
    """One container of ovas, from a `containers.list` summary."""

    name: str
    container_id: str
    state: str  # Docker's: created, running, exited, dead, paused, restarting, removing
    status: str  # Docker's human text: "Up 3 seconds", "Exited (3) 2 seconds ago"
    created: datetime  # by the engine's clock
    labels: Mapping[str, str]
    host_ports: Mapping[str, int] = field(default_factory=dict)  # "49100/tcp" -> host port

    @property
    def record(self) -> str:
        return self.labels.get(c.RECORD, "")

    @property
    def exit_code(self) -> int | None:
        match = _EXIT.search(self.status)
        return int(match.group(1)) if match else None

    @property
    def ended(self) -> bool:
        return self.state in ("exited", "dead")


@dataclass
class SessionObjects:
    """Every container of one session: its workload (`container`, `pending`, `fault`), and
    what an earlier release recorded of it (`outcome`, `marks`, `claims`)."""

    session_id: str
    container: Found | None = None
    pending: Found | None = None
    fault: Found | None = None
    outcome: Found | None = None
    marks: dict[Mark, Found] = field(default_factory=dict)
    claims: list[Found] = field(default_factory=list)

    @property
    def exists(self) -> bool:
        """Whether anything but an earlier release's marks and claims is left of it."""
        return any((self.container, self.pending, self.fault, self.outcome))

    @property
    def workload(self) -> bool:
        """Whether it has a workload to observe: its Kit container, pending or fault record;
        for a session an earlier release ended (`outcome`), only while that release left its
        end half done (the Kit container runs, or a pending or fault record is left), which
        stopping the workload completes."""
        if self.outcome is None:
            return any((self.container, self.pending, self.fault))
        running = self.container is not None and self.container.state == "running"
        return running or self.pending is not None or self.fault is not None

    @property
    def describing(self) -> Found | None:
        """The record whose labels describe the workload (an earlier release's outcome
        describes its session too); None for a fault alone."""
        return self.outcome or self.container or self.pending

    @property
    def every(self) -> list[Found]:
        """All its containers, the Kit container first (it goes before what it holds)."""
        found = [self.container, self.pending, self.fault, self.outcome, *self.marks.values()]
        return [f for f in found if f is not None] + self.claims


def read_summary(summary: Mapping[str, Any]) -> Found:
    """A `containers.list` summary as Found, its labels read through their record's codec
    (`containers.read_record`). Raises ValueError for a container that carries ovas's label
    but is no well-formed record of ovas (the reaper removes those), and `UnknownFormat` for
    one of a format this release does not know (never removed)."""
    names = summary.get("Names") or [""]
    name = names[0].lstrip("/")
    labels = dict(summary.get("Labels") or {})
    c.read_record(name, labels)
    session_id = labels.get(c.SESSION, "")
    kind = labels.get(c.RECORD, "")
    if not is_session_id(session_id):
        raise ValueError(f"{name}: {session_id!r} is not a session id")
    if kind in c.SESSION_RECORDS and name != c.container_name(session_id, kind):
        raise ValueError(f"{name}: the name does not match its labels")
    ports = {
        f"{p.get('PrivatePort')}/{p.get('Type')}": int(p["PublicPort"])
        for p in summary.get("Ports") or []
        if p.get("PublicPort")
    }
    return Found(
        name=name,
        container_id=summary.get("Id", ""),
        state=summary.get("State", ""),
        status=summary.get("Status", ""),
        created=datetime.fromtimestamp(int(summary.get("Created", 0)), UTC),
        labels=labels,
        host_ports=ports,
    )


def group(summaries: Iterable[Mapping[str, Any]]) -> tuple[dict[str, SessionObjects], list]:
    """Sessions' containers by session id (an earlier release's claims and marks of
    sessions that no longer exist included), and the summaries that are no well-formed
    record of ovas."""
    sessions: dict[str, SessionObjects] = {}
    malformed = []
    for summary in summaries:
        try:
            found = read_summary(summary)
        except UnknownFormat as exc:
            _left_alone(f"{exc.name} has record format {exc.format!r}")
            continue
        except ValueError:
            malformed.append(summary)
            continue
        session_id = found.labels[c.SESSION]
        entry = sessions.setdefault(session_id, SessionObjects(session_id))
        kind = found.record
        if kind in c.CLAIMS:
            entry.claims.append(found)
        elif kind == c.MARK_RECORD:
            try:
                entry.marks[Mark(found.labels.get(c.MARK, ""))] = found
            except ValueError:
                malformed.append(summary)
        else:
            setattr(entry, kind, found)
    return sessions, malformed


_told: set[str] = set()


def _left_alone(why: str) -> None:
    """Say once per record that it is left alone: a newer release on the same engine (an
    upgrade in progress, or a rollback) wrote it."""
    if why not in _told:
        if len(_told) > 10_000:
            _told.clear()
        _told.add(why)
        log.warning("leaving a record alone: %s, which this release cannot read", why)


@dataclass(frozen=True)
class Exit:
    """What inspecting an exited Kit container adds to its exit code."""

    oom: bool = False
    error: str = ""  # the engine's own error, if any
    finished: datetime | None = None
    logs: tuple[str, ...] = ()
    engine_started: datetime | None = None  # when the engine last started, if it can tell

    @property
    def stopped_by_engine(self) -> bool:
        """True when the container ended before the engine's last start: a daemon stopping
        without live-restore stops every container it runs, and the container keeps no
        other trace of that (its app may even exit 0 on the engine's SIGTERM)."""
        started, finished = self.engine_started, self.finished
        return started is not None and finished is not None and finished < started


def observation(
    objects: SessionObjects,
    *,
    public_host: str,
    probe_host: str | None = None,
    probe_ok: bool = False,
    connections: int | None = None,
    progress: str = "",
    exit_info: Exit | None = None,
) -> Observation:
    """What the workload's containers show (`objects.workload`). `probe_ok` is the probe's
    verdict on a running container, `connections` its clients, `progress` a pull's,
    `exit_info` an exited container's. `probe_host` is where ovas itself reaches the
    published ports: with the signaling host port, where the signaling gateway reaches
    the session."""
    container = objects.container
    describing = objects.describing
    note = c.parse_labels(describing.labels).note if describing is not None else ""
    if objects.fault is not None:
        fault = objects.fault.labels
        try:
            reason = Reason(fault.get(c.REASON, ""))
        except ValueError:
            reason = Reason.CREATE_FAILED
        return Observation(Stage.FAULT, fault=reason, detail=fault.get(c.DETAIL, ""), note=note)
    assert describing is not None
    labels = c.parse_labels(describing.labels)
    if container is None:
        detail = progress or f"Pulling the image {labels.image}"
        return Observation(Stage.WAITING, detail=detail, note=note)
    if container.ended:
        info = exit_info or Exit()
        if info.stopped_by_engine and not info.oom:
            return Observation(
                Stage.FAULT,
                fault=Reason.NODE_LOST,
                detail=engine_restarted(info, container.exit_code),
                finished_time=info.finished,
                logs=info.logs,
                note=note,
            )
        return Observation(
            Stage.EXITED,
            exit_code=container.exit_code,
            oom=info.oom,
            detail=info.error,
            finished_time=info.finished,
            logs=info.logs,
            note=note,
        )
    if container.state != "running":
        return Observation(Stage.WAITING, detail="Starting the container", note=note)
    found = routes(labels, container.host_ports)
    signaling = next((r.source_port for r in found if r.description == "signaling"), None)
    return Observation(
        Stage.RUNNING,
        detail="Starting the Kit application",
        probe_ok=probe_ok and bool(found),
        host=public_host if found else None,
        routes=found,
        connections=connections,
        signaling=(probe_host, signaling) if probe_host and signaling else None,
        note=note,
    )


def engine_restarted(info: Exit, exit_code: int | None) -> str:
    """The detail of a session whose container the engine's restart stopped."""
    assert info.engine_started is not None
    at = info.engine_started.strftime("%Y-%m-%d %H:%M:%S UTC")
    code = "" if exit_code is None else f" (exit code {exit_code})"
    return f"the Docker engine restarted at {at}, stopping the Kit container{code}"


def routes(labels: c.SessionLabels, host_ports: Mapping[str, int]) -> tuple[Route, ...]:
    """Signaling and media routes, once Docker has published both; else ()."""
    by_name = {p.name: p for p in labels.ports}
    found = []
    for name, protocol in (("signaling", "TCP"), ("media", "UDP")):
        port = by_name.get(name)
        host_port = host_ports.get(port.key) if port else None
        if port is None or host_port is None:
            return ()
        found.append(Route(name, protocol, host_port, port.container_port))
    return tuple(found)


def probe_target(objects: SessionObjects) -> int | None:
    """The host port to probe a running Kit container on: the probe's, else signaling's."""
    container = objects.container
    if container is None:
        return None
    labels = c.parse_labels(container.labels)
    by_name = {p.name: p for p in labels.ports}
    target = by_name.get("probe") or by_name.get("signaling")
    return container.host_ports.get(target.key) if target else None
