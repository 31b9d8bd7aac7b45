"""Queued starts and retry-safe starts on a real Docker daemon with the stand-in image: a full
host answers 202 with a place in line and makes no container for it; a DELETE starts the next
in line in that request, not at the reaper's next pass; an unpolled place is dropped as
abandoned; the same Idempotency-Key makes one container; and under gunicorn with four workers,
concurrent starts get one order, which is the order they start in as sessions end. The same
flows on FakeBackend are tests/test_queue.py."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from support import ovas_process
from support.polling import until
from support.warm_pools import START

from backends.docker import containers as c
from backends.docker.ledger import DockerLedger
from ovas import create_app
from ovas.idempotency import PREFIX as KEYS
from ovas.queueing import LISTED as LINE_RECORDS
from ovas.testing import FakeClock

pytestmark = pytest.mark.docker

URL = "/streaming/stream"


def condition(answer: dict) -> str:
    return answer["status"]["condition"]


def kit_containers(engine, running: bool = False) -> dict[str, dict]:
    """The Kit containers of ovas's sessions on the daemon, by session id (found by ovas's
    session labels; `running`: only those running)."""
    found = engine.containers(all=True, filters={"label": [c.SESSION, f"{c.RECORD}={c.CONTAINER}"]})
    return {s["Labels"][c.SESSION]: s for s in found if not running or s["State"] == "running"}


@pytest.fixture
def line_records(docker_daemon) -> Iterator[DockerLedger]:
    """The ledger on the test daemon. The line's records and the idempotency keys left on
    the shared daemon would put the next test's starts behind them: removed before and after."""
    ledger = DockerLedger(docker_daemon.url)

    def clear() -> None:
        for prefix in (LINE_RECORDS, KEYS):
            for entry in ledger.list(prefix):
                ledger.delete(entry.name)

    clear()
    yield ledger
    clear()
    ledger.close()


@pytest.fixture
def make_app(new_backend, line_records):
    """`make_app(now=None, **config)`: an ovas app over the test daemon with the stand-in
    catalog; the reapers of those it made are stopped at the end."""
    made = []

    def build(now=None, **config):
        backend = new_backend(now=now) if now is not None else new_backend()
        app = create_app({"TESTING": True, "REAP_INTERVAL": 0, **config}, backend=backend)
        made.append(app)
        return app

    yield build
    for app in made:
        app.extensions["ovas"].reaper.stop()


def test_a_full_host_queues_starts_and_a_delete_starts_the_next_within_a_second(
    make_app, serve, engine, ours
):
    app = make_app(REAP_INTERVAL=30, SESSION_CAPACITY=1)
    reaper = app.extensions["ovas"].reaper
    passes: list[tuple[float, float]] = []  # the reaper's passes: (began, ended)
    reap = reaper.reap

    def timed_reap():
        began = time.monotonic()
        try:
            return reap()
        finally:
            passes.append((began, time.monotonic()))

    reaper.reap = timed_reap
    base = serve(app).url + URL
    http = requests.Session()
    answers = [http.post(base, json=START, timeout=30) for _ in range(3)]
    assert [a.status_code for a in answers] == [202, 202, 202], [a.text for a in answers]
    first, second, third = (a.json() for a in answers)
    assert (condition(first), first["queue_position"]) == ("creating", None)
    assert (condition(second), second["queue_position"]) == ("queued", 1)
    assert (condition(third), third["queue_position"]) == ("queued", 2)
    assert second["status"]["status"] is False and second["routes"] == {}
    assert second["status"]["message"] == "Waiting for a free session slot: 1st in line"
    assert third["status"]["message"] == "Waiting for a free session slot: 2nd in line"
    # A queued session holds nothing on the engine: no container, no claim, no mark.
    assert first["id"] in kit_containers(engine)
    assert ours(second["id"]) == [] and ours(third["id"]) == []
    listed = {s["id"]: s for s in http.get(base, timeout=30).json()["items"]}
    assert [listed[q["id"]]["queue_position"] for q in (second, third)] == [1, 2]

    # The reaper's first pass (at the first request) is over; the next is 30 s away.
    until(lambda: passes, 30, "the reaper's first pass")
    with ThreadPoolExecutor(1) as delete:
        began = time.monotonic()
        deleted = delete.submit(http.delete, f"{base}/{first['id']}", timeout=30)
        # The next one's Kit container is made in that request; Docker runs it after.
        until(lambda: second["id"] in kit_containers(engine), 1.0, "the next one's container")
        made = time.monotonic()
        assert deleted.result().status_code == 204
        answered = time.monotonic()
    assert len(passes) == 1 and passes[0][1] < began, "a reaper pass ran meanwhile"
    until(lambda: second["id"] in kit_containers(engine, running=True), 10, "it running")
    print(
        f"after the DELETE was sent, the next session's container was made in "
        f"{made - began:.3f} s and running in {time.monotonic() - began:.3f} s; the DELETE "
        f"was answered in at most {answered - began:.3f} s"
    )
    assert set(kit_containers(engine)) == {second["id"]}
    now = http.get(f"{base}/{second['id']}", timeout=30)
    assert now.status_code in (200, 202) and now.json()["queue_position"] is None
    assert condition(now.json()) in ("creating", "ready")
    moved = http.get(f"{base}/{third['id']}", timeout=30)
    assert moved.status_code == 202
    assert (condition(moved.json()), moved.json()["queue_position"]) == ("queued", 1)
    assert ours(third["id"]) == []


def test_an_unpolled_place_is_dropped_after_the_abandon_timeout(make_app, engine, ours):
    clock = FakeClock(ticking=True)
    app = make_app(now=clock, SESSION_CAPACITY=1, QUEUE_ABANDON_TIMEOUT=180, SESSION_RETENTION=600)
    sessions = app.extensions["ovas"].sessions
    client = app.test_client()
    first, polled, unpolled = (client.post(URL, json=START).get_json() for _ in range(3))
    assert [condition(s) for s in (first, polled, unpolled)] == ["creating", "queued", "queued"]
    clock.advance(100)
    assert client.get(f"{URL}/{polled['id']}").get_json()["queue_position"] == 1
    clock.advance(100)  # 200 s since anyone asked for `unpolled`, 100 s for `polled`
    sessions.reap()

    gone = client.get(f"{URL}/{unpolled['id']}")
    assert gone.status_code == 410, gone.get_json()
    body = gone.get_json()
    assert (condition(body), body["reason"], body["queue_position"]) == ("ended", "abandoned", None)
    assert "180 seconds" in body["status"]["message"]
    kept = client.get(f"{URL}/{polled['id']}")
    assert kept.status_code == 202
    assert (condition(kept.get_json()), kept.get_json()["queue_position"]) == ("queued", 1)

    # The slot frees: the place kept starts, the dropped one never does.
    assert client.delete(f"{URL}/{first['id']}").status_code == 204
    until(lambda: polled["id"] in kit_containers(engine), 5, "the kept place's start")
    assert ours(unpolled["id"]) == []
    assert client.get(f"{URL}/{unpolled['id']}").status_code == 410
    clock.advance(601)  # past its retention, it is removed like any ended session
    sessions.reap()
    assert client.get(f"{URL}/{unpolled['id']}").status_code == 404
    assert ours(unpolled["id"]) == []


def test_the_same_idempotency_key_twice_makes_one_container(make_app, serve, engine, ours):
    before = {s["Labels"][c.SESSION] for s in ours()}
    base = serve(make_app()).url + URL
    once = requests.post(base, json=START, headers={"Idempotency-Key": '"retry-1"'}, timeout=30)
    again = requests.post(base, json=START, headers={"Idempotency-Key": "retry-1"}, timeout=30)
    assert once.status_code == 202, once.text
    assert again.status_code in (200, 202), again.text
    assert again.json()["id"] == once.json()["id"]

    # A double click: both requests at once.
    barrier = threading.Barrier(2, timeout=30)
    clicks: list[requests.Response] = []

    def click():
        barrier.wait()
        headers = {"Idempotency-Key": "double-click"}
        clicks.append(requests.post(base, json=START, headers=headers, timeout=60))

    threads = [threading.Thread(target=click) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(a.status_code in (200, 202) for a in clicks), [a.text for a in clicks]
    assert clicks[0].json()["id"] == clicks[1].json()["id"] != once.json()["id"]
    kit = set(kit_containers(engine)) - before
    assert kit == {once.json()["id"], clicks[0].json()["id"]}
    # Nothing of a third session was made, not even a claim it gave back.
    made = {s["Labels"][c.SESSION] for s in ours()} - before
    assert made == {once.json()["id"], clicks[0].json()["id"]}


# Under gunicorn with four workers


@pytest.fixture
def gunicorn_env(docker_daemon, tmp_path, line_records) -> dict[str, str]:
    catalog = ovas_process.standin_catalog(tmp_path / "catalog")
    from docker_backend.conftest import TEST_PORTS

    return ovas_process.docker_env(
        docker_daemon.url,
        catalog,
        TEST_PORTS,
        home=tmp_path,
        OVAS_SESSION_CAPACITY="2",
        OVAS_REAP_INTERVAL="30",
    )


def test_ten_starts_at_capacity_two_under_four_workers_start_in_their_places_order(
    gunicorn_env, engine, leftovers, tmp_path
):
    assert kit_containers(engine) == {}, "the daemon should hold no session before this test"
    port = ovas_process.free_port()
    base = f"http://127.0.0.1:{port}{URL}"
    log = tmp_path / "gunicorn.log"
    with ovas_process.serving(ovas_process.gunicorn(port, workers=4), gunicorn_env, log) as process:
        try:
            _ten_starts(base, engine, process)
        except BaseException:
            print(log.read_text()[-6000:])
            raise


def _ten_starts(base: str, engine, process) -> None:
    def answers_health() -> bool:
        with contextlib.suppress(requests.RequestException):
            return requests.get(base.replace(URL, "/health"), timeout=5).status_code == 200
        return False

    until(answers_health, 60, "gunicorn answering", process)
    barrier = threading.Barrier(10, timeout=30)
    answers: list[requests.Response] = []

    def start():
        with requests.Session() as http:  # a connection of its own, so workers share them
            barrier.wait()
            answers.append(http.post(base, json=START, timeout=60))

    threads = [threading.Thread(target=start) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.status_code for a in answers] == [202] * 10, [a.text for a in answers]
    bodies = [a.json() for a in answers]
    creating = {b["id"] for b in bodies if condition(b) == "creating"}
    queued = [b for b in bodies if condition(b) == "queued"]
    assert len(creating) == 2 and len(queued) == 8, bodies
    assert sorted(b["queue_position"] for b in queued) == list(range(1, 9)), queued
    until(lambda: len(kit_containers(engine, running=True)) == 2, 30, "two running", process)
    assert set(kit_containers(engine)) == creating
    listed = requests.get(base, params={"limit": 100}, timeout=30).json()["items"]
    places = {s["id"]: s["queue_position"] for s in listed if condition(s) == "queued"}
    assert sorted(places.values()) == list(range(1, 9)), listed
    assert set(places) == {b["id"] for b in queued}
    line = sorted(places, key=places.get)

    # Delete the running sessions one at a time: each DELETE starts the next in line.
    live = sorted(creating)
    order: list[str] = []
    for turn in range(8):
        ended = live.pop(0)
        assert requests.delete(f"{base}/{ended}", timeout=30).status_code == 204
        now_running = until(
            lambda e=ended: _two_without(kit_containers(engine, running=True), e),
            10,
            f"turn {turn}: a start after {ended} was deleted",
            process,
        )
        (new,) = set(now_running) - set(live)
        assert set(kit_containers(engine)) == set(now_running)  # nothing else was started
        order.append(new)
        live.append(new)
        rest = requests.get(base, params={"limit": 100}, timeout=30).json()["items"]
        places = sorted(s["queue_position"] for s in rest if condition(s) == "queued")
        assert places == list(range(1, 8 - turn)), rest
    assert order == line


def _two_without(running: dict[str, dict], ended: str) -> dict[str, dict] | None:
    return running if len(running) == 2 and ended not in running else None
