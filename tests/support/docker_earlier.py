"""Containers as the Docker backend's releases before the core's ledger wrote them (commits
070c004 and 93837ff): the session's fields on its Kit container (no `ovas.format` label: the
release before record formats), and its marks as never-started containers. For tests that
build such a session by hand rather than run that release (`test_upgrade` runs it)."""

from __future__ import annotations

from datetime import datetime

from backends.docker import containers as c
from ovas.lifecycle import Mark
from ovas.models import SessionRequest


def kit_labels(request: SessionRequest, gpu_ids: tuple[str, ...] = ()) -> dict[str, str]:
    """The labels the release before port claims and record formats gave a Kit container."""
    kit = request.kit
    return {
        c.SESSION: request.id,
        c.RECORD: c.CONTAINER,
        c.APP: request.app.id,
        c.VERSION: request.version.version,
        c.PROFILE: request.profile.id,
        c.USER: request.username,
        c.CREATED: request.created_time.isoformat(),
        c.DEADLINE: request.deadline.isoformat(),
        c.CLOCKS: c.format_clocks(request.clocks),
        c.IMAGE: kit.image,
        c.PORTS: c.format_ports(c.wanted_ports(kit)),
        c.GPUS: ",".join(gpu_ids),
        c.PROBE: c.format_probe(kit.probe),
        c.NOTE: "",
        c.POOL: request.pool,
    }


def mark_container(session_id: str, mark: Mark, at: datetime) -> dict:
    """`engine.create_container(**mark_container(...))`: a mark as those releases kept it."""
    return {
        "image": c.RECORD_IMAGE,
        "command": ["ovas-record"],
        "name": f"ovas-{session_id}.{mark.value}",
        "labels": {
            c.SESSION: session_id,
            c.RECORD: c.MARK_RECORD,
            c.MARK: mark.value,
            c.AT: at.isoformat(),
        },
    }
