"""How sessions end on Kubernetes: the outcome is written once into the session's record (a
ledger ConfigMap), whoever asks, with its last log lines; the workload and places go, the
record stays for the retention; an interrupted end is completed by the next finish or
`collect`."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta

import pytest
from support.kube_requests import wait_for
from support.log_lines import ODD

from backends.kubernetes import objects as o
from kubernetes_backend.steps import (
    PODS,
    RELEASES,
    of_session,
    outcome_of,
    record_of,
    request_for,
    settle,
    wait_until,
)
from kubernetes_backend.steps import start as begin
from ovas.errors import CapacityExceeded, SessionNotFound
from ovas.events import SessionEnded
from ovas.lifecycle import Mark, Outcome, Stage
from ovas.models import Clocks, Reason, SessionState
from ovas.session_records import SESSION_RECORD, encode_session
from ovas.testing import service_for
from ovas.workloads import SESSION_PREFIX, SLOT_PREFIX

pytestmark = pytest.mark.kubernetes
READY = {SessionState.READY}
OVER = {SessionState.ENDED, SessionState.FAILED}
MODES = ["pod", "helmrelease"]
CLOCKS = Clocks(connect_timeout=300, idle_timeout=300, max_lifetime=600)


def env(**values: str) -> dict:
    return {"env": [{"name": k, "value": v} for k, v in values.items()]}


def only_outcome(name: str) -> bool:
    return name.startswith("configmaps/")


@pytest.mark.parametrize("mode", MODES)
def test_an_app_that_quits_after_it_was_ready_has_ended_with_its_logs_kept(
    make_backend, cluster, mode
):
    sessions = service_for(make_backend(mode))
    quits = env(STANDIN_EXIT_CODE="0", STANDIN_EXIT_AFTER="0.3")
    session = begin(sessions, request_for(sessions.backend, quits, capacity=3))
    wait_for(sessions, session.id, READY)
    ended = wait_for(sessions, session.id, OVER)
    assert (ended.state, ended.reason) == (SessionState.ENDED, Reason.APP_EXITED)
    assert ended.message == "Ended: the Kit app quit by itself"
    assert ended.ended_time is not None
    record, logs = record_of(cluster, session.id)
    assert (record.outcome.state, record.outcome.reason) == (ended.state, ended.reason)
    assert "stand-in Kit app: exiting with code 0 as asked" in logs
    # The workload and its capacity place are gone; the record alone stays.
    assert settle(cluster, session.id) == []
    assert sessions.backend.ledger.list(SLOT_PREFIX) == []
    assert sessions.backend.logs(session.id)[-1] == (
        "stand-in Kit app: exiting with code 0 as asked"
    )
    assert sessions.get(session.id) == ended


@pytest.mark.parametrize("mode", MODES)
def test_an_app_that_exits_before_it_is_ready_fails_quoting_its_logs(make_backend, mode):
    sessions = service_for(make_backend(mode))
    session = begin(sessions, request_for(sessions.backend, env(STANDIN_EXIT_CODE="3")))
    failed = wait_for(sessions, session.id, OVER)
    assert (failed.state, failed.reason) == (SessionState.FAILED, Reason.EXITED)
    assert failed.message.startswith("The Kit app exited with code 3")
    assert "last log lines: " in failed.message
    assert "exiting with code 3 as asked" in failed.message


@pytest.mark.parametrize("mode", MODES)
def test_the_max_lifetime_ends_a_ready_session_and_frees_its_slot(
    make_backend, cluster, clock, mode
):
    sessions = service_for(make_backend(mode), clocks=CLOCKS, capacity=1)
    request = request_for(sessions.backend, capacity=1, clocks=CLOCKS)
    session = begin(sessions, request)
    wait_for(sessions, session.id, READY)
    with pytest.raises(CapacityExceeded):
        begin(sessions, request_for(sessions.backend, capacity=1))
    clock.advance(599)
    sessions.reap()
    assert sessions.get(session.id).ready
    clock.advance(2)
    sessions.reap()
    ended = sessions.get(session.id)
    assert (ended.state, ended.reason) == (SessionState.ENDED, Reason.MAX_LIFETIME)
    assert ended.ended_time == session.created_time + timedelta(seconds=600)
    assert ended.message == "Ended: the session reached its maximum lifetime of 600 seconds"
    assert settle(cluster, session.id, keep=only_outcome) == []
    assert begin(sessions, request_for(sessions.backend, capacity=1)).state is (
        SessionState.CREATING
    )


@pytest.mark.parametrize("mode", MODES)
def test_a_failed_session_is_kept_for_its_retention_then_removed(
    make_backend, cluster, clock, mode
):
    sessions = service_for(make_backend(mode), retention=600)
    crash = begin(sessions, request_for(sessions.backend, env(STANDIN_EXIT_CODE="2")))
    late = begin(
        sessions,
        request_for(sessions.backend, env(STANDIN_NEVER_READY="1"), start_timeout=30),
    )
    fine = begin(sessions, request_for(sessions.backend))
    assert wait_for(sessions, crash.id, OVER).reason is Reason.EXITED
    wait_for(sessions, fine.id, READY)
    clock.advance(31)
    assert sessions.reap() == []
    assert sessions.get(late.id).reason is Reason.START_TIMEOUT
    listed = {s.id: s.reason for s in sessions.list().items}
    assert listed == {crash.id: Reason.EXITED, late.id: Reason.START_TIMEOUT, fine.id: None}
    for session_id in (crash.id, late.id):
        assert settle(cluster, session_id, keep=only_outcome) == []
    clock.advance(600)
    assert sorted(sessions.reap()) == sorted([crash.id, late.id])
    assert [s.id for s in sessions.list().items] == [fine.id]
    assert settle(cluster, crash.id) == settle(cluster, late.id) == []
    with pytest.raises(SessionNotFound):
        sessions.get(crash.id)


@pytest.mark.parametrize("mode", MODES)
def test_two_replicas_ending_a_session_at_once_record_one_outcome(make_backend, cluster, mode):
    replicas = [make_backend(mode) for _ in range(4)]
    sessions = service_for(replicas[0])
    session = begin(sessions, request_for(replicas[0], capacity=2))
    wait_for(sessions, session.id, READY)
    barrier = threading.Barrier(len(replicas))

    def finish(backend) -> bool:
        now = backend.now()
        outcome = Outcome(SessionState.ENDED, Reason.MAX_LIFETIME, f"by {id(backend)}", now)
        barrier.wait()
        return backend.finish(session.id, outcome)

    with ThreadPoolExecutor(len(replicas)) as pool:
        told = list(pool.map(finish, replicas))
    assert sorted(told) == [False, False, False, True]
    winner = replicas[told.index(True)]
    record, _ = record_of(cluster, session.id)
    assert record.outcome.message == f"by {id(winner)}"
    assert record.username == "tester" and Mark.READY in record.marks
    for backend in replicas:
        seen = backend.observe(session.id)
        assert seen.record.outcome.message == f"by {id(winner)}"
        assert seen.seen.stage is Stage.GONE
        assert Mark.READY in seen.record.marks
    assert settle(cluster, session.id, keep=only_outcome) == []


@pytest.mark.parametrize("mode", MODES)
def test_two_replicas_reaping_an_expired_session_end_it_once(make_backend, clock, mode):
    services = [service_for(make_backend(mode), clocks=CLOCKS) for _ in range(2)]
    request = request_for(services[0].backend, clocks=CLOCKS)
    session = begin(services[0], request)
    wait_for(services[0], session.id, READY)
    events = []
    for service in services:
        service.events.subscribe(events.append)
    clock.advance(601)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda service: service.reap(), services))
    ended = [e.session.id for e in events if isinstance(e, SessionEnded)]
    assert ended == [session.id]
    assert services[0].get(session.id) == services[1].get(session.id)


def record_outcome_only(backend, session_id: str, outcome: Outcome, logs: tuple) -> None:
    """What a process that recorded the outcome and died before ending the workload left."""
    entry = backend.ledger.get(SESSION_PREFIX + session_id)
    record, _ = SESSION_RECORD.decode(entry)
    assert backend.ledger.replace(entry, encode_session(replace(record, outcome=outcome), logs))


@pytest.mark.parametrize("mode", MODES)
def test_collect_completes_an_end_its_process_did_not(make_backend, cluster, clock, mode):
    """A process recorded the outcome and died before deleting the workload: readers see the
    outcome at once; `collect`, or the next finish, deletes what is left."""
    backend = make_backend(mode)
    sessions = service_for(backend)
    session = begin(sessions, request_for(backend, capacity=2, user_capacity=2))
    wait_for(sessions, session.id, READY)
    outcome = Outcome(SessionState.ENDED, Reason.MAX_LIFETIME, "Ended: half way", clock())
    record_outcome_only(backend, session.id, outcome, ("a line",))
    ended = sessions.get(session.id)
    assert (ended.state, ended.message) == (SessionState.ENDED, "Ended: half way")
    assert backend.logs(session.id) == ["a line"]
    owner = RELEASES if mode == "helmrelease" else PODS
    assert of_session(cluster, owner, session.id)  # still there
    held = [e.name for e in backend.ledger.list(SLOT_PREFIX)]
    assert len(held) == 2  # holding its places
    later = clock() + timedelta(seconds=61)  # past the grace a place is kept for its start
    assert sorted(backend.collect(later)) == sorted([session.id, *held])
    assert settle(cluster, session.id) == []
    assert backend.collect(later) == []
    assert sessions.get(session.id) == ended
    # A finish asked later completes the same way, and is not the one that recorded it.
    assert backend.finish(session.id, outcome) is False


def test_a_later_finish_completes_an_interrupted_one(make_backend, cluster, clock):
    backend = make_backend()
    sessions = service_for(backend)
    session = begin(sessions, request_for(backend, capacity=2))
    outcome = Outcome(SessionState.FAILED, Reason.LOST, "lost", clock())
    record_outcome_only(backend, session.id, outcome, ())
    assert backend.finish(session.id, outcome) is False
    assert settle(cluster, session.id) == []
    assert backend.ledger.list(SLOT_PREFIX) == []
    assert sessions.get(session.id).reason is Reason.LOST


@pytest.mark.parametrize("mode", MODES)
def test_logs_come_from_the_pod_then_from_the_outcome(make_backend, clock, mode):
    backend = make_backend(mode)
    sessions = service_for(backend)
    session = begin(sessions, request_for(backend, env(STANDIN_READY_DELAY="0.1")))
    wait_for(sessions, session.id, READY)
    assert wait_until(lambda: backend.logs(session.id)[-1:] == ["stand-in Kit app: ready"])
    lines = backend.logs(session.id)
    assert lines[0].startswith("stand-in Kit app: USD_PATH=")
    assert backend.logs(session.id, tail=1) == ["stand-in Kit app: ready"]
    outcome = Outcome(SessionState.ENDED, Reason.MAX_LIFETIME, "Ended", clock())
    assert backend.finish(session.id, outcome) is True
    assert backend.logs(session.id) == lines
    assert backend.logs(session.id, tail=2) == lines[-2:]
    backend.stop(session.id)
    with pytest.raises(SessionNotFound):
        backend.logs(session.id)


def test_a_log_line_is_cut_at_newlines_only(make_backend, clock):
    backend = make_backend()
    sessions = service_for(backend)
    session = begin(sessions, request_for(backend, env(USD_PATH=ODD)))
    wait_for(sessions, session.id, READY)
    written = [f"stand-in Kit app: USD_PATH={ODD}", "stand-in Kit app: ready"]
    assert wait_until(lambda: backend.logs(session.id, tail=2) == written)
    assert backend.logs(session.id, tail=1) == written[1:]
    outcome = Outcome(SessionState.ENDED, Reason.MAX_LIFETIME, "Ended", clock())
    assert backend.finish(session.id, outcome) is True
    assert backend.logs(session.id, tail=2) == written  # as its outcome keeps them


def test_finishing_a_session_that_is_gone_records_nothing(make_backend, cluster, clock):
    backend = make_backend()
    session = begin(service_for(backend), request_for(backend))
    backend.stop(session.id)
    outcome = Outcome(SessionState.FAILED, Reason.LOST, "lost", clock())
    assert backend.finish(session.id, outcome) is False
    assert outcome_of(cluster, session.id) is None
    assert backend.finish("not-a-session", outcome) is False


def test_a_session_whose_outcome_cannot_be_recorded_still_frees_its_workload(
    make_backend, cluster, clock, caplog
):
    sessions = service_for(make_backend("pod"))
    session = begin(sessions, request_for(sessions.backend, clocks=CLOCKS, capacity=2))
    wait_for(sessions, session.id, READY)
    # The API server refuses to change the session's record.
    cluster.emulator.forbidden.add(("update", "configmaps"))
    clock.advance(CLOCKS.max_lifetime + 1)
    ended = sessions.get(session.id)
    assert (ended.state, ended.reason) == (SessionState.ENDED, Reason.MAX_LIFETIME)
    # Its pod and Service go, and its place: the GPU is free, though its end is not kept.
    assert wait_until(lambda: of_session(cluster, PODS, session.id) == [])
    assert sessions.backend.ledger.list(SLOT_PREFIX) == []
    said = [r.getMessage() for r in caplog.records if "cannot be recorded" in r.getMessage()]
    assert said and session.id in said[0] and "max_lifetime" in said[0], said
    cluster.emulator.forbidden.clear()
    assert sessions.get(session.id).state.final  # and once it can be, it is


def test_objects_of_a_newer_format_are_left_alone(make_backend, cluster, clock, caplog):
    backend = make_backend("pod")
    session = begin(service_for(backend), request_for(backend))
    (pod,) = of_session(cluster, PODS, session.id)
    assert pod["metadata"]["labels"][o.FORMAT] == o.WORKLOAD_FORMAT
    # What a newer release made: a pod of another format.
    newer = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "ovas-from-a-newer-release",
            "labels": {o.MANAGED_BY: "ovas", o.FORMAT: "3", o.SESSION: str(uuid.uuid4())},
        },
        "spec": {"containers": [{"name": "kit", "image": "example/kit:3"}]},
    }
    cluster.seed("omni-streaming", [newer])
    clock.advance(120)  # past the grace given places of no session
    service_for(backend).reap()
    names = [p["metadata"]["name"] for p in cluster.objects(PODS)]
    assert "ovas-from-a-newer-release" in names, "it was removed"
    assert session.id in {o.record.id for o in backend.observe_all()}
    assert "Pod/ovas-from-a-newer-release alone" in caplog.text
