"""The format of the records ovas writes on the Docker engine: each carries it; records of
the previous release (no format label) are read as they always were; a record of a newer
format (a newer ovas on the same engine) is left alone, never removed."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from backends.docker import containers as c
from ovas.lifecycle import Mark
from ovas.models import SessionState
from ovas.testing import FakeClock, service_for, wait_for
from ovas.testing.requests import STANDIN_READY_DELAY

pytestmark = pytest.mark.docker


def test_every_record_carries_the_format_it_was_written_in(backend, standin_request, ours):
    session = backend.start(standin_request(env={STANDIN_READY_DELAY: "60"}))
    backend.mark(session.record.id, Mark.CONNECTED, backend.now())
    made = ours(session.record.id)
    assert {s["Labels"][c.RECORD] for s in made} >= {c.CONTAINER, c.MARK_RECORD}
    assert {s["Labels"].get(c.FORMAT) for s in made} == {c.CURRENT_FORMAT}


def test_a_mark_written_without_a_format_is_read_as_before(
    backend, standin_request, engine, docker_daemon
):
    sessions = service_for(backend)
    session = backend.start(standin_request())
    wait_for(sessions, session.record.id, SessionState.READY)
    at = backend.now().replace(microsecond=0) - timedelta(minutes=5)
    # As the release before record formats wrote a mark: the same labels, no format.
    labels = c.mark_labels(session.record.id, Mark.CONNECTED, at)
    engine.create_container(
        c.RECORD_IMAGE,
        command=["ovas-record"],
        name=c.mark_name(session.record.id, Mark.CONNECTED),
        labels=labels,
    )
    assert backend.observe(session.record.id).record.marks[Mark.CONNECTED] == at


def test_a_record_of_a_newer_format_is_left_alone(new_backend, engine, caplog):
    clock = FakeClock(ticking=True)
    backend = new_backend(now=clock)
    session_id = str(uuid.uuid4())
    name = c.container_name(session_id)
    labels = {
        c.SESSION: session_id,
        c.RECORD: c.CONTAINER,
        c.FORMAT: "2",
        "ovas.spec-of-a-newer-release": "{}",
    }
    engine.create_container(c.RECORD_IMAGE, command=["ovas-record"], name=name, labels=labels)
    clock.advance(86400)
    service_for(backend).reap()
    assert engine.containers(all=True, filters={"name": name}), "it was removed"
    assert session_id not in {o.record.id for o in backend.observe_all()}
    assert f"{name} has record format '2'" in caplog.text
