"""How sessions end on Kubernetes: the outcome ConfigMap `ovas-<id>` is created once, whoever
asks, with the session's record and last log lines; the workload and slots go, the record
stays for the retention; an interrupted end is completed by the next reader or `collect`."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from support.kube_requests import wait_for
from support.log_lines import ODD

from backends.kubernetes import objects as o
from backends.kubernetes.client import CONFIG_MAP
from kubernetes_backend.steps import (
    CONFIG_MAPS,
    PODS,
    RELEASES,
    of_session,
    outcome_of,
    request_for,
    settle,
    wait_until,
)
from kubernetes_backend.steps import start as begin
from ovas.errors import CapacityExceeded, SessionNotFound
from ovas.events import SessionEnded
from ovas.lifecycle import Mark, Outcome, Stage
from ovas.models import Clocks, Reason, SessionState
from ovas.testing import service_for

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
    record = outcome_of(cluster, session.id)
    assert record["metadata"]["labels"][o.OUTCOME] == "ended"
    assert record["metadata"]["annotations"][o.REASON] == "app_exited"
    assert "stand-in Kit app: exiting with code 0 as asked" in record["data"]["logs"]
    # The workload and its capacity slot are gone; the record alone stays.
    assert settle(cluster, session.id, keep=only_outcome) == []
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
    config_maps = of_session(cluster, CONFIG_MAPS, session.id)
    assert [c["metadata"]["name"] for c in config_maps] == [f"ovas-{session.id}"]
    (record,) = config_maps
    notes = record["metadata"]["annotations"]
    assert notes[o.MESSAGE] == f"by {id(winner)}"
    assert notes[o.USERNAME] == "tester"
    assert notes[o.READY_AT]  # the marks move with the record
    assert record["metadata"]["labels"][o.SESSION] == session.id
    assert "ownerReferences" not in record["metadata"]  # it outlives the workload
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


@pytest.mark.parametrize("mode", MODES)
def test_collect_completes_an_end_its_process_did_not(make_backend, cluster, clock, mode):
    """A process recorded the outcome and died before deleting the workload: readers see the
    outcome at once; `collect`, or the next finish, deletes what is left."""
    backend = make_backend(mode)
    sessions = service_for(backend)
    session = begin(sessions, request_for(backend, capacity=2, user_capacity=2))
    wait_for(sessions, session.id, READY)
    record = backend.observe(session.id).record
    outcome = Outcome(SessionState.ENDED, Reason.MAX_LIFETIME, "Ended: half way", clock())
    backend.kube.create(CONFIG_MAP, o.build_outcome(record, outcome, ["a line"], backend.namespace))
    ended = sessions.get(session.id)
    assert (ended.state, ended.message) == (SessionState.ENDED, "Ended: half way")
    assert backend.logs(session.id) == ["a line"]
    owner = RELEASES if mode == "helmrelease" else PODS
    assert of_session(cluster, owner, session.id)  # still there, holding its slots
    removed = backend.collect(clock())
    assert "configmap/ovas-slot-0" in removed
    assert any(name.startswith("pod/") for name in removed)
    assert settle(cluster, session.id, keep=only_outcome) == []
    assert backend.collect(clock()) == []
    assert sessions.get(session.id) == ended
    # A finish asked later completes the same way, and is not the one that recorded it.
    assert backend.finish(session.id, outcome) is False


def test_a_later_finish_completes_an_interrupted_one(make_backend, cluster, clock):
    backend = make_backend()
    sessions = service_for(backend)
    session = begin(sessions, request_for(backend, capacity=2))
    record = backend.observe(session.id).record
    outcome = Outcome(SessionState.FAILED, Reason.LOST, "lost", clock())
    backend.kube.create(CONFIG_MAP, o.build_outcome(record, outcome, [], backend.namespace))
    assert backend.finish(session.id, outcome) is False
    assert settle(cluster, session.id, keep=only_outcome) == []
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
    session = begin(sessions, request_for(sessions.backend, clocks=CLOCKS))
    wait_for(sessions, session.id, READY)
    # The namespace's quota of ConfigMaps is full: no outcome record can be made.
    held = {"configmaps": str(len(cluster.objects(CONFIG_MAPS, "omni-streaming")))}
    full = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "cm"}}
    cluster.seed("omni-streaming", [{**full, "spec": {"hard": held}}])
    clock.advance(CLOCKS.max_lifetime + 1)
    ended = sessions.get(session.id)
    assert (ended.state, ended.reason) == (SessionState.ENDED, Reason.MAX_LIFETIME)
    # Its pod and Service go: the GPU is free, though nothing keeps the session.
    assert wait_until(lambda: of_session(cluster, PODS, session.id) == [])
    with pytest.raises(SessionNotFound):
        sessions.get(session.id)
    said = [r.getMessage() for r in caplog.records if "cannot be recorded" in r.getMessage()]
    assert said and "exceeded quota: cm" in said[0], said


def test_objects_of_a_newer_format_are_left_alone(make_backend, cluster, clock, caplog):
    backend = make_backend("pod")
    session = begin(service_for(backend), request_for(backend))
    (pod,) = of_session(cluster, PODS, session.id)
    assert pod["metadata"]["labels"][o.FORMAT] == o.CURRENT_FORMAT
    # What a newer release made: a pod of another format, whose annotations this one lacks.
    newer = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "ovas-from-a-newer-release",
            "labels": {o.MANAGED_BY: "ovas", o.FORMAT: "2", o.SESSION: str(uuid.uuid4())},
        },
        "spec": {"containers": [{"name": "kit", "image": "example/kit:2"}]},
    }
    cluster.seed("omni-streaming", [newer])
    clock.advance(120)  # past the grace given objects of no session
    service_for(backend).reap()
    names = [p["metadata"]["name"] for p in cluster.objects(PODS)]
    assert "ovas-from-a-newer-release" in names, "it was removed"
    assert session.id in {o.record.id for o in backend.observe_all()}
    assert "Pod/ovas-from-a-newer-release alone" in caplog.text
