"""The format of the records ovas writes on the Docker engine: each carries it; records of
the releases before (no format label, or format 1 with the session's fields on its Kit
container) are read as they always were; a record of a newer format (a newer ovas on the
same engine) is left alone, never removed."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import timedelta

import pytest
from support import dockerd
from support.docker_earlier import kit_labels, mark_container

from backends.docker import containers as c
from backends.docker.ports import as_text
from ovas.lifecycle import Mark
from ovas.models import SessionState
from ovas.session_records import SESSION_RECORD
from ovas.testing import FakeClock, service_for, wait_for
from ovas.testing.requests import STANDIN_READY_DELAY

pytestmark = pytest.mark.docker


def test_every_record_carries_the_format_it_was_written_in(backend, standin_request, ours):
    session = backend.start(standin_request(env={STANDIN_READY_DELAY: "60"}))
    backend.mark(session.record.id, Mark.CONNECTED, backend.now())
    (kit,) = ours(session.record.id)
    assert (kit["Labels"][c.RECORD], kit["Labels"][c.FORMAT]) == (c.CONTAINER, c.CURRENT_FORMAT)
    record = backend.ledger.get(f"session.{session.record.id}")
    assert record.data["format"] == str(SESSION_RECORD.current)
    assert Mark.CONNECTED in SESSION_RECORD.decode(record)[0].marks


def test_a_session_and_mark_written_without_a_format_are_read_as_before(
    backend, standin_request, engine
):
    sessions = service_for(backend)
    request = standin_request()
    # As the release before record formats wrote a session and a mark: no format label.
    spec = c.container_spec(request, [], host_ports=as_text(backend.ports))
    spec = {**spec, "labels": kit_labels(request)}
    container_id, refusal = backend.engine.create_kit(spec)
    assert not refusal and not backend.engine.start(container_id)
    dockerd.wait_running(engine, spec["name"])
    at = backend.now().replace(microsecond=0) - timedelta(minutes=5)
    backend.engine.make_record(c.record_spec("ovas-probe-record", {}))  # the record image
    backend.engine.remove("ovas-probe-record")
    engine.create_container(**mark_container(request.id, Mark.CONNECTED, at))
    record = backend.observe(request.id).record
    assert record.marks[Mark.CONNECTED] == at
    assert replace(record, marks={}) == replace(record.of(request), marks={})
    assert wait_for(sessions, request.id, SessionState.READY).state is SessionState.READY


def test_a_record_of_a_newer_format_is_left_alone(new_backend, engine, caplog):
    clock = FakeClock(ticking=True)
    backend = new_backend(now=clock)
    newer = str(int(c.CURRENT_FORMAT) + 1)
    session_id = str(uuid.uuid4())
    name = c.container_name(session_id)
    labels = {
        c.SESSION: session_id,
        c.RECORD: c.CONTAINER,
        c.FORMAT: newer,
        "ovas.spec-of-a-newer-release": "{}",
    }
    backend.engine.make_record(c.record_spec("ovas-probe-record", {}))  # the record image
    backend.engine.remove("ovas-probe-record")
    engine.create_container(c.RECORD_IMAGE, command=["ovas-record"], name=name, labels=labels)
    clock.advance(86400)
    service_for(backend).reap()
    assert engine.containers(all=True, filters={"name": name}), "it was removed"
    assert session_id not in {o.record.id for o in backend.observe_all()}
    assert f"{name} has record format '{newer}'" in caplog.text
