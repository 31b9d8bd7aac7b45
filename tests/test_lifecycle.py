"""The session lifecycle in the core: observations in, state, reason and message out, with
the clocks; and what a user reads of it over HTTP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ovas import create_app
from ovas.lifecycle import Mark, Observation, Observed, Outcome, Record, Stage, decide
from ovas.models import Clocks, Reason, SessionState
from ovas.resources import profile_from_resource
from ovas.testing import FakeBackend, FakeClock, InMemoryCatalog, sample_catalog

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
CLOCKS = Clocks(connect_timeout=300, idle_timeout=120, max_lifetime=3600)
START = {"id": "usd-viewer", "profile": "default"}


def record(**marks) -> Record:
    return Record(
        id="0c5e7a9e-0a55-4a70-9c39-8a1d5d3b7f10",
        app_id="usd-viewer",
        version="107.3.2",
        profile="default",
        username="ann",
        created_time=T0,
        deadline=T0 + timedelta(seconds=900),
        clocks=CLOCKS,
        marks={Mark(k): T0 + timedelta(seconds=v) for k, v in marks.items()},
    )


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def running(probe_ok=True, connections=0, **kw) -> Observation:
    return Observation(Stage.RUNNING, probe_ok=probe_ok, connections=connections, **kw)


def test_a_first_passing_probe_makes_it_ready_and_asks_for_the_mark():
    decision = decide(Observed(record(), running()), at(40))
    assert decision.session.state is SessionState.READY
    assert decision.session.message == "Session is active"
    assert decision.marks == {Mark.READY: at(40)}
    assert decision.outcome is None


def test_once_ready_a_failing_probe_keeps_it_ready_past_the_start_deadline():
    seen = running(probe_ok=False, connections=None)
    decision = decide(Observed(record(ready=40), seen), at(1000))
    assert decision.session.state is SessionState.READY
    assert decision.outcome is None


def test_a_session_that_is_starting_says_for_how_long_and_until_when():
    seen = Observation(Stage.WAITING, detail="Pulling the image example:1: 2 of 7 layers")
    session = decide(Observed(record(), seen), at(95)).session
    assert session.state is SessionState.CREATING
    assert session.message == (
        "Pulling the image example:1: 2 of 7 layers (95 s so far; it fails if not ready by "
        "12:15:00 UTC)"
    )


def test_the_start_deadline_fails_a_session_never_ready():
    decision = decide(Observed(record(), running(probe_ok=False)), at(900))
    assert decision.session.state is SessionState.FAILED
    assert decision.session.reason is Reason.START_TIMEOUT
    assert decision.outcome == Outcome(
        SessionState.FAILED,
        Reason.START_TIMEOUT,
        "The session was not ready within 900 seconds",
        at(900),
    )


@pytest.mark.parametrize(
    ("marks", "code", "oom", "state", "reason", "words"),
    [
        ({"ready": 40}, 0, False, SessionState.ENDED, Reason.APP_EXITED, "Ended: the Kit app quit"),
        ({}, 0, False, SessionState.FAILED, Reason.EXITED, "code 0: before it was ready"),
        ({"ready": 40}, 3, False, SessionState.FAILED, Reason.EXITED, "exited with code 3"),
        ({"ready": 40}, 137, True, SessionState.FAILED, Reason.OOM, "out of memory"),
    ],
)
def test_an_exit_ends_or_fails_by_its_code(marks, code, oom, state, reason, words):
    seen = Observation(
        Stage.EXITED, exit_code=code, oom=oom, finished_time=at(70), logs=("a", " ", "b")
    )
    decision = decide(Observed(record(**marks), seen), at(80))
    assert (decision.session.state, decision.session.reason) == (state, reason)
    assert words in decision.session.message
    assert decision.outcome.ended_time == at(70)
    if state is SessionState.FAILED:
        assert decision.session.message.endswith("last log lines: a | b")


def test_a_fault_the_engine_reports_fails_at_once_in_its_own_words():
    seen = Observation(Stage.FAULT, fault=Reason.IMAGE_PULL, detail="manifest unknown")
    decision = decide(Observed(record(), seen), at(1))
    assert decision.session.reason is Reason.IMAGE_PULL
    assert decision.session.message == "The Kit image could not be pulled: manifest unknown"
    assert decision.outcome.ended_time == at(1)


def test_a_fault_that_says_when_the_app_stopped_ends_then():
    seen = Observation(
        Stage.FAULT, fault=Reason.NODE_LOST, detail="the engine restarted", finished_time=at(70)
    )
    decision = decide(Observed(record(ready=40), seen), at(80))
    assert (decision.session.state, decision.session.reason) == (
        SessionState.FAILED,
        Reason.NODE_LOST,
    )
    assert decision.session.message == "The session's node was lost: the engine restarted"
    assert decision.outcome.ended_time == at(70)


def test_nobody_connecting_ends_it_at_the_connect_timeout_after_readiness():
    seen = Observed(record(ready=40), running())
    assert decide(seen, at(339)).session.state is SessionState.READY
    decision = decide(seen, at(340))
    assert (decision.session.state, decision.session.reason) == (
        SessionState.ENDED,
        Reason.CONNECT_TIMEOUT,
    )
    assert decision.outcome.ended_time == at(340)


def test_a_client_is_marked_then_its_leaving_starts_the_idle_clock():
    connected = decide(Observed(record(ready=40), running(connections=1)), at(50))
    assert connected.marks == {Mark.CONNECTED: at(50)}
    assert connected.session.connected is True
    assert connected.session.last_connected_time == at(50)

    left = decide(Observed(record(ready=40, connected=50), running()), at(500))
    assert left.marks == {Mark.IDLE: at(500)}
    assert left.session.connected is False
    assert left.session.state is SessionState.READY

    idle = Observed(record(ready=40, connected=50, idle=500), running())
    assert decide(idle, at(619)).session.state is SessionState.READY
    ended = decide(idle, at(620))
    assert ended.session.reason is Reason.IDLE_TIMEOUT
    assert ended.session.message == "Ended: nobody was connected for 120 seconds"
    assert ended.session.last_connected_time == at(500)

    back = decide(
        Observed(record(ready=40, connected=50, idle=500), running(connections=2)), at(610)
    )
    assert back.marks == {Mark.IDLE: None}


def test_a_backend_that_cannot_count_clients_gets_only_the_max_lifetime():
    seen = Observed(record(ready=40), running(connections=None))
    later = decide(seen, at(3599)).session
    assert (later.state, later.connected) == (SessionState.READY, None)
    assert decide(seen, at(3600)).session.reason is Reason.MAX_LIFETIME


def test_the_max_lifetime_ends_a_session_in_any_state():
    waiting = Observed(record(), Observation(Stage.WAITING))
    decision = decide(waiting, at(3600))
    assert decision.session.reason is Reason.MAX_LIFETIME
    assert decision.session.expires_time == at(3600)


def test_a_recorded_outcome_is_final_whatever_the_engine_shows():
    outcome = Outcome(SessionState.ENDED, Reason.IDLE_TIMEOUT, "Ended: idle", at(700))
    kept = Observed(Record(**{**record().__dict__, "outcome": outcome}), running(connections=3))
    decision = decide(kept, at(800))
    assert decision.session.state is SessionState.ENDED
    assert (decision.marks, decision.outcome) == ({}, None)


# The same over HTTP, with the clock moved rather than waited for.


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def backend(clock):
    return FakeBackend(now=clock)


def test_an_ended_session_is_410_with_its_reason_and_times(client, backend, clock):
    started = client.post("/stream", json=START).get_json()
    assert started["connected"] is False
    assert started["expires_time"] is not None
    clock.advance(301)
    client.application.extensions["ovas"].reaper.run_once()
    answer = client.get(f"/stream/{started['id']}")
    assert answer.status_code == 410
    body = answer.get_json()
    assert body["status"] == {
        "condition": "ended",
        "message": "Ended: no client connected within 300 seconds of the session being ready",
        "status": False,
    }
    assert body["reason"] == "connect_timeout"
    assert body["ended_time"] is not None
    listed = client.get("/stream").get_json()["items"]
    assert [s["reason"] for s in listed] == ["connect_timeout"]


def test_a_profile_sets_its_own_clocks_with_annotations(clock):
    catalog = sample_catalog()
    profile = profile_from_resource(
        {
            "metadata": {
                "name": "short",
                "annotations": {"ovas/idle-timeout": "30", "ovas/max-lifetime": "0"},
            },
            "spec": {
                "supportedApplications": [{"name": "*"}],
                "chartMappings": {"container": "streamingKit.image.repository"},
                "chartValues": {"streamingKit": {"image": {"repository": ""}}},
            },
        }
    )
    catalog = InMemoryCatalog(
        catalog.applications(),
        [v for a in catalog.applications() for v in catalog.versions(a.id)],
        [*catalog.profiles(), profile],
    )
    backend = FakeBackend(catalog, now=clock)
    client = create_app({"TESTING": True, "REAP_INTERVAL": 0}, backend=backend).test_client()
    session = client.post("/stream", json={"id": "usd-viewer", "profile": "short"}).get_json()
    assert session["expires_time"] is None
    (entry,) = backend.observe_all()
    assert entry.record.clocks == Clocks(connect_timeout=300, idle_timeout=30, max_lifetime=0)


@pytest.mark.parametrize("value", ["-1", "soon", "1.5"])
def test_a_clock_annotation_that_is_no_whole_number_is_reported(value):
    with pytest.raises(ValueError, match="ovas/connect-timeout"):
        profile_from_resource(
            {
                "metadata": {"name": "bad", "annotations": {"ovas/connect-timeout": value}},
                "spec": {"chartValues": {"streamingKit": {"image": {"repository": "x"}}}},
            }
        )


def test_the_retention_and_clocks_are_settings_and_reap_grace_is_still_read():
    settings = {"TESTING": True, "REAP_GRACE": 45, "SESSION_IDLE_TIMEOUT": 0}
    app = create_app(settings, backend=FakeBackend())
    sessions = app.extensions["ovas"].sessions
    assert sessions.retention == timedelta(seconds=45)
    assert sessions.clocks == Clocks(connect_timeout=300, idle_timeout=0, max_lifetime=28800)
    default = create_app({"TESTING": True}, backend=FakeBackend())
    assert default.extensions["ovas"].sessions.retention == timedelta(seconds=3600)
