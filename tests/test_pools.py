"""Warm pools on the fake backend: the plan of each pass, claims through `POST /stream`,
refills, renewal, versions, capacity shared with on-demand starts, listing and metrics."""

from __future__ import annotations

from datetime import timedelta

import pytest
from support.fake_pools import POOL, catalog_with_pool, fill, pooled

from ovas import create_app
from ovas.models import Reason, Session, SessionState, Version, WarmPool
from ovas.pools import plan
from ovas.testing import FakeBackend, FakeClock, service_for

START = {"id": "usd-viewer", "profile": "default"}


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def catalog():
    return catalog_with_pool()


@pytest.fixture
def backend(catalog, clock):
    return FakeBackend(catalog, now=clock, ready_after=5)


@pytest.fixture
def sessions(backend):
    return service_for(backend, pool_max_age=3600, stage_roots=("/app/samples",))


@pytest.fixture
def app(backend):
    return create_app({"TESTING": True, "REAP_INTERVAL": 0, "POOL_MAX_AGE": 3600}, backend=backend)


# The plan, alone


def member(n, *, version="107.3.2", state=SessionState.READY, age=0.0, now=None):
    now = now or FakeClock()()
    return Session(
        id=f"s{n}",
        app_id="usd-viewer",
        version=version,
        profile="default",
        username="",
        created_time=now - timedelta(seconds=age),
        state=state,
        pool="viewers",
    )


def test_an_empty_pool_starts_its_size():
    step = plan(POOL, "107.3.2", [], FakeClock()(), 3600)
    assert (step.starts, step.pool_size, step.stops, step.done) == (2, 2, [], [])


def test_failed_members_are_removed_and_replaced():
    now = FakeClock()()
    members = [member(1, now=now), member(2, state=SessionState.FAILED, now=now)]
    step = plan(POOL, "107.3.2", members, now, 3600)
    assert (step.done, step.starts) == (["s2"], 1)


def test_members_of_an_old_version_go_once_their_replacements_are_ready():
    now = FakeClock()()
    old = [member(1, version="106.5.0", now=now), member(2, version="106.5.0", now=now)]
    step = plan(POOL, "107.3.2", old, now, 3600)
    assert (step.starts, step.stops) == (2, [])  # both stay until replaced
    one_ready = [*old, member(3, now=now), member(4, state=SessionState.CREATING, now=now)]
    step = plan(POOL, "107.3.2", one_ready, now, 3600)
    assert (len(step.stops), step.starts) == (1, 0)
    starting_old = [member(5, version="106.5.0", state=SessionState.CREATING, now=now)]
    assert plan(POOL, "107.3.2", starting_old, now, 3600).stops == ["s5"]


def test_an_aged_member_is_renewed_by_one_more_then_the_oldest_goes():
    now = FakeClock()()
    aged = [member(1, age=4000, now=now), member(2, age=10, now=now)]
    step = plan(POOL, "107.3.2", aged, now, 3600)
    assert (step.starts, step.pool_size, step.stops) == (1, 3, [])
    renewing = [*aged, member(3, state=SessionState.CREATING, now=now)]
    assert plan(POOL, "107.3.2", renewing, now, 3600).starts == 0
    renewed = [*aged, member(3, now=now)]
    assert plan(POOL, "107.3.2", renewed, now, 3600).stops == ["s1"]
    assert plan(POOL, "107.3.2", aged, now, 0).starts == 0  # max age 0: never renewed


def test_a_pool_whose_version_cannot_be_had_is_emptied():
    now = FakeClock()()
    step = plan(POOL, None, [member(1, now=now)], now, 3600)
    assert (step.stops, step.starts) == (["s1"], 0)


def test_a_shrunk_pool_stops_what_it_cannot_use():
    now = FakeClock()()
    small = WarmPool("viewers", "usd-viewer", "latest", "default", 1)
    members = [member(1, now=now), member(2, now=now, age=5)]
    assert plan(small, "107.3.2", members, now, 3600).stops == ["s2"]


# The pool through the service and the API


def test_a_pool_fills_two_matching_posts_answer_200_at_once_and_a_third_202(app, backend, sessions):
    fill(sessions)
    assert len(pooled(backend)) == 2
    client = app.test_client()
    first = client.post("/streaming/stream", json=START)
    second = client.post("/streaming/stream", json={**START, "version": "107.3.2"})
    third = client.post("/streaming/stream", json=START)
    assert (first.status_code, second.status_code, third.status_code) == (200, 200, 202)
    for answer in (first, second):
        body = answer.get_json()
        assert body["status"]["status"] is True and body["routes"]
    assert first.get_json()["id"] != second.get_json()["id"]
    assert third.get_json()["id"] not in {r.id for r in pooled(backend)}
    # The claimed sessions are the caller's, listed as any of theirs.
    listed = {s["id"] for s in client.get("/streaming/stream").get_json()["items"]}
    assert {first.get_json()["id"], second.get_json()["id"], third.get_json()["id"]} <= listed
    fill(sessions)  # the pool refills
    assert len(pooled(backend)) == 2


def test_a_claimed_session_runs_on_its_users_clocks_from_the_claim(backend, sessions, clock):
    fill(sessions)
    first = {r.id for r in pooled(backend)}
    clock.advance(3000)  # a pool's session is never ended by a client clock meanwhile
    sessions.reap()
    assert {r.id for r in pooled(backend)} == first
    session = sessions.start("usd-viewer", "default", username="alice")
    assert (session.state, session.username, session.pooled) == (SessionState.READY, "alice", False)
    assert session.created_time == clock()
    clock.advance(301)  # nobody connected within the connect timeout of the claim
    assert sessions.get(session.id).state is SessionState.ENDED


def test_requests_that_do_not_match_start_on_demand(backend, sessions):
    fill(sessions)
    other_version = sessions.start("usd-viewer", "default", "106.5.0", username="a")
    other_profile = sessions.start("usd-viewer", "viewer-only", username="a")
    other_stage = sessions.start(
        "usd-viewer", "default", username="a", usd_stage_uri="omniverse://host/other.usd"
    )
    own_stage = sessions.start(
        "usd-viewer", "default", username="a", usd_stage_uri="/app/samples/stage01.usd"
    )
    assert [s.state for s in (other_version, other_profile, other_stage)] == [
        SessionState.CREATING
    ] * 3
    assert own_stage.state is SessionState.READY  # the profile's own stage: a match
    assert len(pooled(backend)) == 1


def test_a_pool_never_starves_on_demand_starts(catalog, clock):
    backend = FakeBackend(catalog, now=clock, ready_after=5)
    sessions = service_for(backend, capacity=3)
    fill(sessions)
    assert len(pooled(backend)) == 2
    # Sessions the pool does not match take the places the pool holds.
    for n in range(3):
        assert sessions.start("usd-composer", "default", username=f"u{n}").state in (
            SessionState.CREATING,
            SessionState.READY,
        )
    assert pooled(backend) == []
    fill(sessions)  # no room to refill: the pool stays empty
    assert pooled(backend) == []


def test_a_pool_follows_latest_and_ends_the_old_version_once_replaced(catalog, backend, sessions):
    fill(sessions)
    old = {r.id for r in pooled(backend)}
    catalog.create_version(Version("usd-viewer", "108.0.0", "example/usd-viewer", "108.0.0"))
    sessions.reap()  # replacements start; the old ones stay until those are ready
    assert old <= {r.id for r in pooled(backend)}
    # An old version's session is never handed out.
    assert sessions.start("usd-viewer", "default", "107.3.2", username="a").id not in old
    fill(sessions)
    left = pooled(backend)
    assert {r.version for r in left} == {"108.0.0"} and len(left) == 2


def test_an_aged_pool_session_is_renewed(backend, sessions, clock):
    fill(sessions)
    old = {r.id for r in pooled(backend)}
    clock.advance(3601)
    for _ in range(6):  # one at a time: a replacement starts, is ready, the oldest goes
        sessions.reap()
        clock.advance(6)
    left = {r.id for r in pooled(backend)}
    assert len(left) == 2 and not (left & old)


def test_failed_pool_sessions_are_replaced_backing_off_while_they_keep_failing(
    backend, sessions, clock
):
    backend.fault = Reason.CREATE_FAILED
    sessions.reap()
    failed = {r.id for r in backend.records() if r.pool and r.outcome is not None}
    assert len(failed) == 2
    sessions.reap()  # removed; the next starts wait 30 s
    assert [r for r in backend.records() if r.pool] == []
    clock.advance(31)
    sessions.reap()  # they fail again
    clock.advance(1)
    sessions.reap()  # removed; now the next starts wait 60 s
    clock.advance(31)
    sessions.reap()
    assert [r for r in backend.records() if r.pool] == []
    backend.fault = None
    clock.advance(30)
    fill(sessions)
    kept = {r.id for r in backend.records()}
    assert len(pooled(backend)) == 2 and not (failed & kept)


def test_a_failing_pool_restarts_at_the_same_rate_whatever_the_number_of_workers(catalog):
    """Workers (or replicas) sharing one engine share one back-off, in its ledger: four
    start a broken pool's sessions no more often than one does."""

    def started_in_240_s(workers: int) -> int:
        clock = FakeClock()
        engine = FakeBackend(catalog, now=clock, fault=Reason.CREATE_FAILED)
        services = [service_for(engine, pool_max_age=3600) for _ in range(workers)]
        started: set[str] = set()
        for _ in range(24):  # a pass every 10 s in every worker
            for service in services:
                service.reap()
                started |= {r.id for r in engine.records() if r.pool}
            clock.advance(10)
        return len(started)

    # Rounds of two sessions at 0 s, 30 s, 90 s and 210 s: each starts 30, 60, then 120 s
    # after the round that failed.
    assert started_in_240_s(1) == 8
    assert started_in_240_s(4) == 8


def test_a_back_off_record_of_a_newer_format_is_left_alone(backend, sessions, caplog):
    newer = {"kind": "pool-backoff", "format": "2", "until": "whenever"}
    backend.ledger.create(f"pool-backoff.{POOL.name}", newer)
    fill(sessions)
    assert len(pooled(backend)) == 2
    assert dict(backend.ledger.get(f"pool-backoff.{POOL.name}").data) == newer
    assert "leaving the back-off record" in caplog.text


def test_the_back_off_of_a_pool_gone_from_the_catalog_goes_too(catalog, backend, sessions):
    backend.fault = Reason.CREATE_FAILED
    sessions.reap()
    sessions.reap()  # failed: the pool backs off
    assert backend.ledger.get(f"pool-backoff.{POOL.name}") is not None
    del catalog.pools[POOL.name]
    catalog.pools["other"] = WarmPool("other", "usd-viewer", "latest", "default", 1)
    sessions.reap()
    assert backend.ledger.list("pool-backoff.") == []


def test_a_pool_gone_from_the_catalog_is_emptied(catalog, backend, sessions):
    fill(sessions)
    del catalog.pools[POOL.name]
    sessions.reap()
    assert pooled(backend) == []


def test_unclaimed_sessions_are_listed_only_to_an_admin_who_asks(app, backend, sessions):
    fill(sessions)
    client = app.test_client()
    assert client.get("/streaming/stream").get_json()["items"] == []
    asked = client.get("/streaming/stream?pooled=true").get_json()["items"]
    assert {s["id"] for s in asked} == {r.id for r in pooled(backend)}


def test_a_non_admin_may_not_list_them(backend, sessions):
    from ovas.auth import Identity
    from ovas.errors import Forbidden

    fill(sessions)
    user = Identity("alice", frozenset({"user"}))
    with pytest.raises(Forbidden):
        sessions.list(pooled=True, caller=user)
    assert sessions.list(caller=user).items == []
    with pytest.raises(Exception, match="not found"):
        sessions.get(pooled(backend)[0].id, caller=user)


def test_a_claim_counts_against_the_users_capacity(catalog, clock):
    backend = FakeBackend(catalog, now=clock, ready_after=5)
    sessions = service_for(backend, user_capacity=1)
    fill(sessions)
    assert sessions.start("usd-viewer", "default", username="alice").state is SessionState.READY
    from ovas.errors import UserCapacityExceeded

    with pytest.raises(UserCapacityExceeded):
        sessions.start("usd-viewer", "default", username="alice")
    assert len(pooled(backend)) == 1  # the refused claim took nothing


def test_metrics_show_the_pools_hits_and_misses(app, backend, sessions):
    fill(sessions)
    client = app.test_client()
    client.post("/streaming/stream", json=START)
    client.post("/streaming/stream", json=START)
    client.post("/streaming/stream", json=START)
    text = client.get("/metrics").get_data(as_text=True)
    assert 'ovas_pool_size{pool="viewers"} 2.0' in text
    assert 'ovas_pool_claims_total{pool="viewers"} 2.0' in text
    assert 'ovas_pool_misses_total{pool="viewers",reason="none_ready"} 1.0' in text
    assert 'ovas_pool_sessions{pool="viewers",state="ready"} 0.0' in text
    fill(sessions)
    text = client.get("/metrics").get_data(as_text=True)
    assert 'ovas_pool_sessions{pool="viewers",state="ready"} 2.0' in text
