"""Warm pools follow the catalog as it is now, on the fake backend with a test clock: a
session started from an old rendering of its profile or version is never handed out and is
renewed, records kept by an ovas without renderings are read and renewed, pools the catalog
cannot serve are emptied and named, and a start takes from any pool it matches."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
from support.fake_pools import POOL, catalog_with_pool, fill, pooled

from ovas import create_app
from ovas.cli import ovas_cli
from ovas.models import SessionState, Version, WarmPool
from ovas.pools import plan
from ovas.testing import FakeBackend, FakeClock, make_request, sample_catalog, service_for

STAGE02 = "/app/samples/stage02.usd"


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


def stage_of(backend, session_id):
    return backend.logs(session_id)[-1].removeprefix("USD_PATH=")


def edit_stage(catalog, stage):
    """The `default` profile's USD_PATH edited to `stage`."""
    profile = catalog.profile("default")
    values = copy.deepcopy(profile.chart_values)
    values["streamingKit"]["env"] = [{"name": "USD_PATH", "value": stage}]
    catalog.save_profile(replace(profile, chart_values=values))


def test_a_start_never_gets_a_session_of_the_profile_before_its_edit(catalog, backend, sessions):
    fill(sessions)
    old = {r.id for r in pooled(backend)}
    edit_stage(catalog, STAGE02)
    asked = sessions.start("usd-viewer", "default", username="ann", usd_stage_uri=STAGE02)
    plain = sessions.start("usd-viewer", "default", username="bob")
    for started in (asked, plain):
        assert started.state is SessionState.CREATING and started.id not in old
        assert stage_of(backend, started.id) == STAGE02
    # The pass renews them: replacements start, the old ones go once those are ready.
    sessions.reap()
    assert old <= {r.id for r in pooled(backend)} and len(pooled(backend)) == 4
    fill(sessions)
    renewed = pooled(backend)
    assert len(renewed) == 2 and not ({r.id for r in renewed} & old)
    assert {stage_of(backend, r.id) for r in renewed} == {STAGE02}
    taken = sessions.start("usd-viewer", "default", username="carol", usd_stage_uri=STAGE02)
    assert taken.state is SessionState.READY and stage_of(backend, taken.id) == STAGE02


def test_an_image_changed_under_the_same_version_renews_the_pool(catalog, backend, sessions):
    fill(sessions)
    old = {r.id for r in pooled(backend)}
    current = catalog.version("usd-viewer", "107.3.2")
    catalog.save_version(replace(current, container="example/usd-viewer-fixed"))
    assert sessions.start("usd-viewer", "default", username="ann").state is SessionState.CREATING
    fill(sessions)
    assert not ({r.id for r in pooled(backend)} & old)
    taken = sessions.start("usd-viewer", "default", username="bob")
    assert taken.state is SessionState.READY
    assert backend.logs(taken.id)[0].endswith("example/usd-viewer-fixed:107.3.2")


def test_records_of_an_ovas_that_kept_no_rendering_are_read_and_renewed(
    catalog, backend, sessions, clock
):
    # What the previous ovas started for the pool: records without a rendering.
    def previous(pool):
        request = make_request(
            catalog, app_id="usd-viewer", profile_id="default", pool=pool, now=clock()
        )
        return backend.start(replace(request, rendering="")).record.id

    claimed = previous(POOL)
    assert backend.claim(claimed, "ann", clock())  # a user took it from the previous ovas
    unclaimed = {previous(POOL), previous(POOL)}
    clock.advance(6)
    sessions.reap()  # all read; the unclaimed two are renewed: replacements start
    assert unclaimed <= {r.id for r in pooled(backend)} and len(pooled(backend)) == 4
    started = sessions.start("usd-viewer", "default", username="bob")
    assert started.state is SessionState.CREATING and started.id not in unclaimed
    fill(sessions)
    assert not ({r.id for r in pooled(backend)} & unclaimed) and len(pooled(backend)) == 2
    # The claimed session is its user's still, untouched by the pool.
    assert sessions.get(claimed).state is SessionState.READY
    assert [s.id for s in sessions.list(username="ann").items] == [claimed]


@pytest.mark.parametrize(
    "change, named",
    [
        (lambda c: c.delete_application("usd-viewer"), "Application 'usd-viewer' not found"),
        (lambda c: c.remove_profile("default"), "Profile 'default' not found"),
        (
            lambda c: c.save_profile(replace(c.profile("default"), supported_applications=())),
            "Profile 'default' does not support usd-viewer 107.3.2",
        ),
        (
            lambda c: c.save_version(replace(c.version("usd-viewer", "107.3.2"), container="")),
            "Profile 'default' cannot run usd-viewer 107.3.2: streamingKit.image.repository",
        ),
    ],
    ids=["app-gone", "profile-gone", "profile-unsupporting", "render-fails"],
)
def test_a_pool_the_catalog_cannot_serve_is_emptied_and_named(
    catalog, backend, clock, change, named
):
    app = create_app({"TESTING": True, "REAP_INTERVAL": 0}, backend=backend)
    sessions = app.extensions["ovas"].sessions
    fill(sessions)
    assert len(pooled(backend)) == 2
    assert app.test_client().get("/ready").get_json()["catalog_problems"] == []
    change(catalog)
    sessions.reap()
    assert pooled(backend) == [] and [r for r in backend.records() if r.pool] == []
    ready = app.test_client().get("/ready").get_json()
    (problem,) = ready["catalog_problems"]
    assert problem.startswith("warm pool viewers: ") and named in problem
    checked = app.test_cli_runner().invoke(ovas_cli, ["catalog", "check"])
    assert checked.exit_code == 1 and f"error: warm pool viewers: {named}" in checked.output


def test_a_start_takes_a_ready_session_of_any_pool_it_matches(catalog, backend, sessions):
    catalog.pools["more-viewers"] = WarmPool("more-viewers", "usd-viewer", "107.3.2", "default", 2)
    fill(sessions)
    both = {r.id for r in pooled(backend)} | {r.id for r in pooled(backend, "more-viewers")}
    assert len(both) == 4
    taken = [sessions.start("usd-viewer", "default", username=f"u{n}") for n in range(4)]
    assert [s.state for s in taken] == [SessionState.READY] * 4
    assert {s.id for s in taken} == both
    assert sessions.start("usd-viewer", "default", username="u5").state is SessionState.CREATING


def test_a_pool_stops_its_pass_at_the_first_start_without_room(catalog, clock):
    catalog.pools[POOL.name] = replace(POOL, size=100)
    backend = FakeBackend(catalog, now=clock, ready_after=5)
    tried = []
    original = backend.start

    def start(request):
        tried.append(request.id)
        return original(request)

    backend.start = start
    service_for(backend, capacity=6).reap()
    assert len(pooled(backend)) == 6 and len(tried) == 7


def test_the_plan_renews_members_of_another_rendering_as_it_does_old_versions():
    now = FakeClock()()
    members = [
        replace(member, id=f"s{n}")
        for n, member in enumerate(
            [_member(now), _member(now), _member(now, SessionState.CREATING)], start=1
        )
    ]
    step = plan(POOL, "107.3.2", members, now, 3600, stale={"s1", "s2", "s3"})
    assert (step.starts, step.stops) == (2, ["s3"])  # the ready ones stay until replaced
    fresh = [*members[:2], replace(_member(now), id="s4"), replace(_member(now), id="s5")]
    step = plan(POOL, "107.3.2", fresh, now, 3600, stale={"s1", "s2"})
    assert (step.starts, sorted(step.stops)) == (0, ["s1", "s2"])
    assert step.why["s1"] == "a current session replaces it"


def _member(now, state=SessionState.READY):
    from ovas.models import Session

    return Session("s", "usd-viewer", "107.3.2", "default", "", now, state=state, pool="viewers")


def test_version_fields_decide_the_rendering():
    from ovas.pools import rendering

    catalog = sample_catalog()
    app, profile = catalog.application("usd-viewer"), catalog.profile("default")
    version = catalog.version("usd-viewer", "107.3.2")
    same = rendering(app, version, profile)
    assert same == rendering(app, replace(version), profile)
    for changed in (
        replace(version, container_version="107.3.3"),
        replace(version, helm_chart_version="9.9.9"),
        Version("usd-viewer", "107.3.2", "example/usd-viewer", "107.3.2", "other/chart"),
    ):
        assert rendering(app, changed, profile) != same
