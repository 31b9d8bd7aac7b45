"""Queued starts and retry-safe starts, through the API, on FakeBackend with an injected clock
(`ovas.queueing`, `ovas.idempotency`). The same flows on the real Docker daemon and the
Kubernetes emulator are in their backends' folders."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import timedelta

import pytest

from ovas.app import create_app
from ovas.ledger import FORMAT_KEY
from ovas.models import Profile, SessionState
from ovas.queueing import LINE, PREFIX, START
from ovas.testing import FakeBackend, FakeClock, InMemoryCatalog, sample_catalog

START_BODY = {"id": "usd-viewer", "profile": "default", "version": "107.3.2"}
URL = "/streaming/stream"


@pytest.fixture
def clock():
    return FakeClock()


def make(clock, **config):
    backend = FakeBackend(now=clock)
    settings = {"TESTING": True, "REAP_INTERVAL": 0, "SESSION_CAPACITY": 1, **config}
    app = create_app(settings, backend=backend)
    return app, app.test_client(), backend


def post(client, body=START_BODY, **headers):
    answer = client.post(URL, json=body, headers=headers)
    assert answer.status_code in (200, 202), answer.get_data(as_text=True)
    return answer


def condition(answer):
    return answer.json["status"]["condition"]


def reap(app):
    return app.extensions["ovas"].sessions.reap()


def test_a_full_host_queues_starts_in_order_and_starts_the_next_when_one_is_deleted(clock):
    _app, client, backend = make(clock)
    first, second, third = post(client), post(client), post(client)
    assert condition(first) in ("creating", "ready") and first.json["queue_position"] is None
    assert [condition(second), second.json["queue_position"]] == ["queued", 1]
    assert [condition(third), third.json["queue_position"]] == ["queued", 2]
    assert second.json["status"]["status"] is False
    assert second.json["status"]["message"] == "Waiting for a free session slot: 1st in line"
    assert "2nd in line" in third.json["status"]["message"]
    assert second.json["routes"] == {} and second.json["reason"] is None
    # A queued session holds nothing: the backend has one session.
    assert [o.record.id for o in backend.observe_all()] == [first.json["id"]]
    polled = client.get(f"{URL}/{third.json['id']}")
    assert (polled.status_code, condition(polled), polled.json["queue_position"]) == (
        202,
        "queued",
        2,
    )
    listed = {s["id"]: s for s in client.get(URL).json["items"]}
    assert set(listed) == {first.json["id"], second.json["id"], third.json["id"]}
    assert listed[third.json["id"]]["queue_position"] == 2

    assert client.delete(f"{URL}/{first.json['id']}").status_code == 204
    # The next in line started at once, not at the next reaper pass.
    assert [o.record.id for o in backend.observe_all()] == [second.json["id"]]
    started = client.get(f"{URL}/{second.json['id']}")
    assert condition(started) in ("creating", "ready")
    assert started.json["queue_position"] is None
    moved = client.get(f"{URL}/{third.json['id']}")
    assert (condition(moved), moved.json["queue_position"]) == ("queued", 1)


def test_the_start_timeout_counts_from_leaving_the_line(clock):
    app, client, backend = make(clock, START_TIMEOUT=100)
    backend.never_ready = True
    first, second = post(client), post(client)
    for _ in range(5):  # it waits 500 s, polled
        clock.advance(100)
        assert condition(client.get(f"{URL}/{second.json['id']}")) in ("queued", "failed")
    assert condition(client.get(f"{URL}/{first.json['id']}")) == "failed"  # its own timeout
    left = clock()
    reap(app)  # first is ended: the line moves
    assert backend.observe(second.json["id"]).record.deadline == left + timedelta(seconds=100)
    clock.advance(99)
    answer = client.get(f"{URL}/{second.json['id']}")
    assert condition(answer) == "creating", answer.json
    clock.advance(2)
    assert client.get(f"{URL}/{second.json['id']}").json["reason"] == "start_timeout"


def test_an_ended_session_lets_the_next_start_when_it_is_seen_ended(clock):
    _app, client, backend = make(clock)
    first, second = post(client), post(client)
    backend.quit(first.json["id"], 1)
    # The first GET that records the end frees the slot for the line.
    assert client.get(f"{URL}/{first.json['id']}").status_code == 410
    assert condition(client.get(f"{URL}/{second.json['id']}")) in ("creating", "ready")


def test_an_unpolled_place_is_abandoned_and_kept_for_the_retention(clock):
    app, client, _backend = make(clock, QUEUE_ABANDON_TIMEOUT=180, SESSION_RETENTION=600)
    post(client)
    kept, dropped = post(client), post(client)
    clock.advance(100)
    client.get(f"{URL}/{kept.json['id']}")
    clock.advance(100)
    reap(app)
    gone = client.get(f"{URL}/{dropped.json['id']}")
    assert gone.status_code == 410
    assert (condition(gone), gone.json["reason"]) == ("ended", "abandoned")
    assert "180 seconds" in gone.json["status"]["message"]
    still = client.get(f"{URL}/{kept.json['id']}")
    assert (condition(still), still.json["queue_position"]) == ("queued", 1)
    clock.advance(601)
    reap(app)
    assert client.get(f"{URL}/{dropped.json['id']}").status_code == 404


def test_delete_leaves_the_line_at_once(clock):
    _app, client, _backend = make(clock)
    post(client)
    second, third = post(client), post(client)
    assert client.delete(URL, json={"id": second.json["id"]}).status_code == 204
    assert client.get(f"{URL}/{second.json['id']}").status_code == 404
    assert client.get(f"{URL}/{third.json['id']}").json["queue_position"] == 1
    assert client.delete(f"{URL}/{second.json['id']}").status_code == 404


def test_a_full_line_and_no_line_answer_503_with_retry_after(clock):
    _app, client, _ = make(clock, QUEUE_SIZE=1)
    post(client), post(client)
    full = client.post(URL, json=START_BODY)
    assert full.status_code == 503 and int(full.headers["Retry-After"]) > 0
    assert "line" in full.json["detail"]
    _app, client, _ = make(clock, QUEUE_SIZE=0)
    post(client)
    off = client.post(URL, json=START_BODY)
    assert off.status_code == 503 and "slots" in off.json["detail"]


def test_the_per_user_cap_stays_429_and_counts_queued_starts(clock):
    _app, client, _ = make(clock, USER_SESSION_CAPACITY=2)
    post(client)
    assert condition(post(client)) == "queued"
    again = client.post(URL, json=START_BODY)  # one live and one queued: the cap of 2
    assert again.status_code == 429, again.json
    assert "1 waiting in line" in again.json["detail"]


def gpu_catalog() -> InMemoryCatalog:
    catalog = sample_catalog()
    default = catalog.profile("default")

    def asking(profile_id: str, gpus: str) -> Profile:
        values = {
            "streamingKit": {
                **default.chart_values["streamingKit"],
                "resources": {"limits": {"nvidia.com/gpu": gpus}},
            }
        }
        return replace(default, id=profile_id, name=profile_id, chart_values=values)

    return InMemoryCatalog(
        applications=catalog.applications(),
        versions=catalog.versions("usd-viewer"),
        profiles=[asking("one-gpu", "1"), asking("two-gpus", "2"), asking("no-gpu", "0")],
    )


def test_a_start_waiting_for_gpus_does_not_hold_up_one_that_can_start(clock):
    backend = FakeBackend(gpu_catalog(), now=clock, gpus=2)
    app = create_app({"TESTING": True, "REAP_INTERVAL": 0}, backend=backend)
    client = app.test_client()
    body = {"id": "usd-viewer", "version": "107.3.2"}
    one = post(client, {**body, "profile": "one-gpu"})
    two = post(client, {**body, "profile": "two-gpus"})
    assert condition(two) == "queued"
    assert two.json["status"]["message"].startswith("Waiting for a free GPU: 1st in line")
    other = post(client, {**body, "profile": "one-gpu"})
    # One GPU is free: the one-GPU start goes ahead of the two-GPU start it does not block.
    assert condition(other) in ("creating", "ready"), other.json
    cpu = post(client, {**body, "profile": "no-gpu"})
    assert condition(cpu) in ("creating", "ready")
    late = post(client, {**body, "profile": "one-gpu"})
    assert (condition(late), late.json["queue_position"]) == ("queued", 2)
    client.delete(f"{URL}/{one.json['id']}")
    # One GPU free: not enough for the first in line; the one-GPU start behind it goes.
    assert condition(client.get(f"{URL}/{two.json['id']}")) == "queued"
    assert condition(client.get(f"{URL}/{late.json['id']}")) in ("creating", "ready")


def test_queued_starts_start_in_order_as_sessions_end(clock):
    _app, client, backend = make(clock, SESSION_CAPACITY=2)
    running = [post(client).json["id"] for _ in range(2)]
    queued = [post(client).json for _ in range(6)]
    assert [q["queue_position"] for q in queued] == [1, 2, 3, 4, 5, 6]
    order = []
    for _ in range(6):
        client.delete(f"{URL}/{running.pop(0)}")
        live = {o.record.id for o in backend.observe_all()}
        new = [q["id"] for q in queued if q["id"] in live and q["id"] not in order]
        assert len(new) == 1
        order += new
        running += new
    assert order == [q["id"] for q in queued]


def test_a_wait_estimate_is_given_once_there_is_history(clock):
    _app, client, _backend = make(clock)
    first = post(client).json["id"]
    queued = [post(client).json["id"] for _ in range(3)]
    for _ in range(2):
        clock.advance(120)
        for q in queued:
            client.get(f"{URL}/{q}")
        client.delete(f"{URL}/{first}")
        first = queued.pop(0)
    answer = client.get(f"{URL}/{queued[0]}")
    assert answer.json["status"]["message"] == (
        "Waiting for a free session slot: 1st in line (about 2 minutes)"
    )


def test_two_services_sharing_an_engine_start_each_queued_session_once_in_order(clock):
    backend = FakeBackend(now=clock)
    apps = [
        create_app({"TESTING": True, "REAP_INTERVAL": 0, "SESSION_CAPACITY": 3}, backend=backend)
        for _ in range(2)
    ]
    clients = [a.test_client() for a in apps]
    running = [post(clients[0]).json["id"] for _ in range(3)]
    queued = [post(clients[i % 2]).json["id"] for i in range(9)]
    started: list[str] = []
    barrier = threading.Barrier(3)

    def stop(session_id, client):
        barrier.wait()
        assert client.delete(f"{URL}/{session_id}").status_code == 204

    for round_ in range(3):
        threads = [
            threading.Thread(target=stop, args=(sid, clients[i % 2]))
            for i, sid in enumerate(running)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for a in apps:
            a.extensions["ovas"].sessions.drain()
        live = [o.record for o in backend.observe_all() if o.record.outcome is None]
        running = [r.id for r in sorted(live, key=lambda r: r.created_time)]
        assert len(running) == 3, round_
        started += [sid for sid in queued if sid in running and sid not in started]
    assert started == queued  # each once, in order


def test_a_queue_record_of_a_newer_format_is_left_alone(clock):
    app, client, backend = make(clock)
    post(client)
    queued = post(client).json["id"]
    entry = backend.ledger.get(f"{PREFIX}{queued}")
    newer = {**entry.data, FORMAT_KEY: "99"}
    assert backend.ledger.replace(entry, newer) is not None
    clock.advance(10_000)
    reap(app)
    assert backend.ledger.get(f"{PREFIX}{queued}").data == newer
    assert START.current == 1 and backend.ledger.get(LINE) is not None


def test_metrics_count_the_line(clock):
    app, client, _backend = make(clock, QUEUE_ABANDON_TIMEOUT=60)
    first = post(client).json["id"]
    post(client), post(client)
    text = client.get("/metrics").get_data(as_text=True)
    assert "ovas_queue_length 2.0" in text
    clock.advance(30)
    client.delete(f"{URL}/{first}")
    clock.advance(61)
    reap(app)
    text = client.get("/metrics").get_data(as_text=True)
    assert "ovas_queue_length 0.0" in text
    assert 'ovas_queue_wait_seconds_count{profile="default"} 1.0' in text
    assert 'ovas_queue_drops_total{reason="abandoned"} 1.0' in text
    assert 'ovas_sessions{app="usd-viewer",profile="default",state="ended"} 1.0' in text


# Idempotency-Key


def test_the_same_idempotency_key_answers_the_same_session_and_starts_nothing(clock):
    _app, client, backend = make(clock, SESSION_CAPACITY=0)
    first = post(client, **{"Idempotency-Key": '"8e03978e-40d5-43e8"'})
    again = post(client, **{"Idempotency-Key": "8e03978e-40d5-43e8"})
    assert again.json["id"] == first.json["id"]
    assert len(backend.observe_all()) == 1
    other = client.post(
        URL,
        json={**START_BODY, "version": "106.5.0"},
        headers={"Idempotency-Key": "8e03978e-40d5-43e8"},
    )
    assert other.status_code == 422 and "another request" in str(other.json["detail"])
    assert len(backend.observe_all()) == 1
    assert post(client, **{"Idempotency-Key": "another"}).json["id"] != first.json["id"]
    # Another user's same key is theirs.
    mine = post(client, **{"Idempotency-Key": "another", "X-Forwarded-User": "b"})
    assert len(backend.observe_all()) in (2, 3) and mine.json["id"]


def test_an_idempotency_key_of_a_queued_start_answers_it_queued(clock):
    _app, client, _backend = make(clock)
    post(client)
    queued = post(client, **{"Idempotency-Key": "k1"})
    again = post(client, **{"Idempotency-Key": "k1"})
    assert (again.json["id"], condition(again)) == (queued.json["id"], "queued")
    assert again.json["queue_position"] == 1


def test_a_refused_start_does_not_keep_its_key_and_keys_expire(clock):
    app, client, backend = make(clock, QUEUE_SIZE=0, IDEMPOTENCY_TTL=3600)
    post(client)
    refused = client.post(URL, json=START_BODY, headers={"Idempotency-Key": "k"})
    assert refused.status_code == 503
    client.delete(f"{URL}/{backend.observe_all()[0].record.id}")
    started = post(client, **{"Idempotency-Key": "k"})
    assert post(client, **{"Idempotency-Key": "k"}).json["id"] == started.json["id"]
    clock.advance(3601)
    client.delete(f"{URL}/{started.json['id']}")
    reap(app)
    assert not backend.ledger.list("idempotency.")
    assert post(client, **{"Idempotency-Key": "k"}).json["id"] != started.json["id"]


@pytest.mark.parametrize("value", ["", "x" * 256, "caf\u00e9"])
def test_a_bad_idempotency_key_is_422_and_starts_nothing(clock, value):
    _app, client, backend = make(clock)
    answer = client.post(URL, json=START_BODY, headers={"Idempotency-Key": value})
    assert answer.status_code == 422, answer.json
    assert not backend.observe_all()


def test_queued_sessions_are_listed_by_state(clock):
    _app, client, _ = make(clock, AUTH="none")
    post(client), post(client)
    listed = client.get(f"{URL}?state=queued").json["items"]
    assert [s["status"]["condition"] for s in listed] == ["queued"]
    assert SessionState.QUEUED.value == "queued"


def test_a_queued_start_a_warm_pool_can_serve_is_served_from_it(clock):
    from dataclasses import replace as replaced

    from support.fake_pools import POOL, catalog_with_pool

    backend = FakeBackend(catalog_with_pool(), now=clock)
    app = create_app({"TESTING": True, "REAP_INTERVAL": 0, "SESSION_CAPACITY": 1}, backend=backend)
    client = app.test_client()
    service = app.extensions["ovas"].sessions
    post(client)
    queued = post(client).json
    assert queued["status"]["condition"] == "queued"
    # A pooled session gets ready while the start waits (started past the capacity here).
    request = service.build_request("usd-viewer", "default", "latest", pool=POOL)
    pooled = backend.start(replaced(request, capacity=0)).record.id
    service.reap_pass(tend_pools=False)  # sees it ready, then walks the line
    served = client.get(f"{URL}/{queued['id']}")
    assert served.status_code == 200, served.json
    assert served.json["id"] == pooled and served.json["username"] == queued["username"]
    assert not backend.observe(pooled).record.pooled
    assert client.delete(f"{URL}/{queued['id']}").status_code == 204
    assert client.get(f"{URL}/{pooled}").status_code == 404
    assert not backend.ledger.list(PREFIX)


def test_the_command_line_lists_queued_sessions_with_their_places(clock):
    from ovas.cli import ovas_cli

    app, client, _ = make(clock)
    first = post(client).json["id"]
    queued = [post(client).json["id"] for _ in range(2)]
    table = app.test_cli_runner().invoke(ovas_cli, ["sessions", "list"])
    assert table.exit_code == 0, table.output
    rows = {line.split()[0]: line.split() for line in table.output.splitlines()[1:]}
    assert rows[first][1] == "ready"
    assert [rows[q][1:3] for q in queued] == [["queued", "#1"], ["queued", "#2"]]


def test_a_walk_that_fails_gives_the_line_back_at_once(clock):
    from ovas.errors import BackendUnavailable

    app, client, backend = make(clock)
    first = post(client).json["id"]
    queued = post(client).json["id"]
    real_start = backend.start

    def down(request):
        raise BackendUnavailable("the engine does not answer")

    backend.start = down
    assert client.delete(f"{URL}/{first}").status_code == 204  # its walk fails
    backend.start = real_start
    reap(app)  # at once: no hold is left for a minute
    assert condition(client.get(f"{URL}/{queued}")) in ("creating", "ready")


def test_a_wait_estimate_leaves_out_time_nobody_waited():
    from datetime import UTC, datetime

    from ovas.queueing import estimate

    t = [datetime(2026, 1, 1, 8, m, tzinfo=UTC) for m in range(60)]
    assert estimate(1, [(t[0], t[0])]) == ""  # nothing to go on
    # 3 minutes from joining to leaving, then, after 45 minutes with nobody in line, one
    # that waited 5 minutes: about 4 minutes a place; the idle time does not count.
    assert estimate(2, [(t[0], t[0]), (t[4], t[1]), (t[54], t[49])]) == "about 8 minutes"


def test_an_idempotency_key_ignores_how_the_version_was_named_and_422s_name_the_header(clock):
    _app, client, backend = make(clock, SESSION_CAPACITY=0)
    key = {"Idempotency-Key": "v"}
    latest = post(client, {"id": "usd-viewer", "profile": "default"}, **key)
    named = post(client, START_BODY, **key)  # the version "latest" resolved to
    assert named.json["id"] == latest.json["id"] and len(backend.observe_all()) == 1
    other = client.post(URL, json={**START_BODY, "version": "106.5.0"}, headers=key)
    assert other.status_code == 422
    assert other.json["detail"][0]["loc"] == ["header", "Idempotency-Key"]


def test_a_key_whose_start_is_being_made_is_a_409_and_one_whose_session_is_gone_too(clock):
    app, client, backend = make(clock, SESSION_CAPACITY=0)
    service = app.extensions["ovas"].sessions
    request = service.build_request("usd-viewer", "default", "107.3.2", username="anonymous")
    from ovas.idempotency import request_digest

    digest = request_digest(
        {"app": "usd-viewer", "version": "107.3.2", "profile": "default", "usd_stage_uri": ""}
    )
    # Another process has taken the key and not made its session yet.
    assert service.idempotency.remember("anonymous", "k", digest, request.id) is None
    service.replay_wait = 0.2  # a double click's wait for it, before the 409
    busy = client.post(URL, json=START_BODY, headers={"Idempotency-Key": "k"})
    assert busy.status_code == 409 and busy.headers["Retry-After"] == "1"
    assert "still being made" in busy.json["detail"]
    clock.advance(31)
    gone = client.post(URL, json=START_BODY, headers={"Idempotency-Key": "k"})
    assert gone.status_code == 409 and "gone" in gone.json["detail"]
    assert not backend.observe_all()


def test_deleting_a_dropped_place_is_not_counted_as_leaving_the_line(clock):
    app, client, _backend = make(clock, QUEUE_ABANDON_TIMEOUT=60)
    post(client)
    dropped = post(client).json["id"]
    clock.advance(61)
    reap(app)
    assert client.delete(f"{URL}/{dropped}").status_code == 204
    text = client.get("/metrics").get_data(as_text=True)
    assert 'ovas_queue_drops_total{reason="abandoned"} 1.0' in text
    assert 'reason="stopped"' not in text


def test_a_start_that_fails_halfway_is_undone_and_forgets_its_key(clock):
    from ovas.errors import BackendUnavailable

    _app, client, backend = make(clock)
    post(client)
    real_observe = backend.observe

    def flaky(session_id):
        backend.observe = real_observe  # once
        raise BackendUnavailable("the engine stopped answering")

    backend.observe = flaky
    failed = client.post(URL, json=START_BODY, headers={"Idempotency-Key": "half"})
    assert failed.status_code == 503
    assert not backend.ledger.list(PREFIX)  # its place in line was taken back
    retried = post(client, **{"Idempotency-Key": "half"})
    assert (condition(retried), retried.json["queue_position"]) == ("queued", 1)
