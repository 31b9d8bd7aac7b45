"""`/metrics`: what a Prometheus scrape reads after clients start, poll and stop sessions."""

from __future__ import annotations

import glob
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from blueprints import metrics
from ovas import create_app
from ovas.models import Reason
from ovas.testing import FailingBackend, FakeBackend, FakeClock

ROOT = Path(__file__).resolve().parent.parent
START = {"id": "usd-viewer", "profile": "default"}


@pytest.fixture
def app(backend):
    app = create_app({"TESTING": True, "REAP_INTERVAL": 0}, backend=backend)
    metrics.init_app(app)  # harmless once create_app calls it too
    return app


def scrape(client_or_text) -> dict[tuple, float]:
    """{(sample name, sorted label items): value} of one scrape."""
    if isinstance(client_or_text, str):
        text = client_or_text
    else:
        response = client_or_text.get("/metrics")
        assert response.status_code == 200
        assert response.content_type.startswith("text/plain")
        text = response.get_data(as_text=True)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_a_start_and_a_stop_move_the_counters_and_the_gauge(client):
    started = client.post("/streaming/stream", json=START)
    assert started.status_code == 200  # FakeBackend sessions are ready at once
    session_id = started.get_json()["id"]

    after_start = scrape(client)
    assert value(after_start, "ovas_session_starts_total", outcome="ok") == 1
    assert value(after_start, "ovas_sessions", state="ready", app="usd-viewer", profile="default")
    assert value(after_start, "ovas_backend_up", backend="fake") == 1
    assert (
        value(
            after_start,
            "ovas_http_requests_total",
            route="/streaming/stream",
            method="POST",
            status="200",
        )
        == 1
    )
    assert (
        value(
            after_start,
            "ovas_http_request_duration_seconds_count",
            route="/streaming/stream",
            method="POST",
        )
        == 1
    )
    # Ready in the answer to the start itself: the time to ready is observed there.
    ready = {"app": "usd-viewer", "profile": "default"}
    assert value(after_start, "ovas_session_start_to_ready_seconds_count", **ready) == 1

    assert client.delete(f"/stream/{session_id}").status_code == 204
    after_stop = scrape(client)
    assert value(after_stop, "ovas_session_stops_total", outcome="ok") == 1
    assert not value(
        after_stop, "ovas_sessions", state="ready", app="usd-viewer", profile="default"
    )
    assert (
        value(
            after_stop,
            "ovas_http_requests_total",
            route="/streaming/stream/<session_id>",
            method="DELETE",
            status="204",
        )
        == 1
    )


def test_failed_starts_and_stops_are_named_by_their_error(client, backend):
    assert client.post("/stream", json={**START, "id": "no-such-app"}).status_code == 404
    assert client.post("/stream", json={"profile": "default"}).status_code == 422
    assert client.delete(f"/stream/{uuid.uuid4()}").status_code == 404
    backend.unavailable = True
    assert client.post("/stream", json=START).status_code == 503

    samples = scrape(client)
    assert value(samples, "ovas_session_starts_total", outcome="application_not_found") == 1
    assert value(samples, "ovas_session_starts_total", outcome="backend_unavailable") == 1
    # A body that fails validation is no start: it is a 422 among the requests.
    post = {"route": "/streaming/stream", "method": "POST"}
    assert value(samples, "ovas_http_requests_total", status="422", **post) == 1
    assert value(samples, "ovas_session_starts_total", outcome="ok") == 0
    assert value(samples, "ovas_session_stops_total", outcome="session_not_found") == 1
    assert (
        value(samples, "ovas_backend_errors_total", route="/streaming/stream", method="POST") == 1
    )
    # The scrape itself found the engine down, and still answered.
    assert value(samples, "ovas_backend_up", backend="fake") == 0
    assert value(samples, "ovas_backend_scrape_error", backend="fake", error="unavailable") == 1


def test_capacity_is_an_outcome_of_its_own():
    app = create_app(
        {"TESTING": True, "REAP_INTERVAL": 0, "SESSION_CAPACITY": 1, "QUEUE_SIZE": 0},
        backend=FakeBackend(),
    )
    metrics.init_app(app)
    client = app.test_client()
    assert client.post("/stream", json=START).status_code == 200
    assert client.post("/stream", json=START).status_code == 503
    samples = scrape(client)
    assert value(samples, "ovas_session_starts_total", outcome="capacity_exceeded") == 1
    assert (
        value(samples, "ovas_backend_errors_total", route="/streaming/stream", method="POST") == 0
    )


CLOCK = FakeClock()


@pytest.mark.parametrize("backend", [FakeBackend(ready_after=30, now=CLOCK)])
def test_time_to_ready_is_observed_once_when_first_answered_ready(client):
    session_id = client.post("/stream", json=START).get_json()["id"]
    assert client.get(f"/stream/{session_id}").status_code == 202
    assert not value(scrape(client), "ovas_session_start_to_ready_seconds_count", app="usd-viewer")
    CLOCK.advance(31)
    for _ in range(3):
        assert client.get(f"/streaming/stream/{session_id}").status_code == 200
    samples = scrape(client)
    ready = {"app": "usd-viewer", "profile": "default"}
    assert value(samples, "ovas_session_start_to_ready_seconds_count", **ready) == 1
    assert value(samples, "ovas_session_start_to_ready_seconds_sum", **ready) == 31
    assert value(samples, "ovas_session_start_to_ready_seconds_bucket", le="30.0", **ready) == 0
    assert value(samples, "ovas_session_start_to_ready_seconds_bucket", le="45.0", **ready) == 1


@pytest.mark.parametrize("backend", [FailingBackend(fault=Reason.NO_GPU)])
def test_a_failed_session_is_counted_once_by_reason(client):
    session_id = client.post("/stream", json=START).get_json()["id"]
    for _ in range(2):
        assert client.get(f"/stream/{session_id}").status_code == 410
    samples = scrape(client)
    assert value(samples, "ovas_session_failures_total", reason="no_gpu") == 1
    assert value(samples, "ovas_session_ends_total", state="failed", reason="no_gpu") == 1
    assert value(samples, "ovas_sessions", state="failed", app="usd-viewer", profile="default")


def test_ends_are_counted_by_reason_once_across_workers():
    """Two apps on one engine, as two gunicorn workers: a session ended by its idle clock
    is counted once, by whichever reaper recorded its end."""
    clock = FakeClock()
    backend = FakeBackend(now=clock)
    config = {"TESTING": True, "REAP_INTERVAL": 0}
    workers = [create_app(config, backend=backend) for _ in range(2)]
    client = workers[0].test_client()
    session_id = client.post("/stream", json=START).get_json()["id"]
    backend.connect(session_id)
    assert client.get(f"/stream/{session_id}").get_json()["connected"] is True
    backend.disconnect(session_id)
    for app in workers:
        app.extensions["ovas"].reaper.run_once()
    clock.advance(301)
    for app in workers:
        app.extensions["ovas"].reaper.run_once()
    answer = workers[1].test_client().get(f"/stream/{session_id}")
    assert answer.status_code == 410
    assert answer.get_json()["reason"] == "idle_timeout"
    counts = [
        value(scrape(app.test_client()), "ovas_session_ends_total", state="ended", reason=r)
        for app in workers
        for r in ("idle_timeout",)
    ]
    assert sorted(counts) == [0, 1]
    assert not any(
        value(scrape(app.test_client()), "ovas_session_failures_total", reason="idle_timeout")
        for app in workers
    )


def test_routes_are_labelled_by_rule_never_by_raw_path(client):
    for _ in range(3):
        client.get(f"/stream/{uuid.uuid4()}")
    client.get("/no/such/path")
    client.open("/cfg/apps", method="BREW")
    samples = scrape(client)
    routes = {
        dict(labels)["route"] for name, labels in samples if name == "ovas_http_requests_total"
    }
    assert routes == {"/streaming/stream/<session_id>", "<unmatched>"} | (routes & {"/metrics"})
    assert (
        value(
            samples,
            "ovas_http_requests_total",
            route="/streaming/stream/<session_id>",
            method="GET",
            status="404",
        )
        == 3
    )
    assert (
        value(
            samples, "ovas_http_requests_total", route="<unmatched>", method="other", status="405"
        )
        == 1
    )


def test_apps_in_one_process_count_apart_and_init_twice_is_harmless():
    first = create_app({"TESTING": True, "REAP_INTERVAL": 0}, backend=FakeBackend())
    second = create_app({"TESTING": True, "REAP_INTERVAL": 0}, backend=FakeBackend())
    for app in (first, second, first):
        metrics.init_app(app)
    first.test_client().get("/cfg/apps")
    one = {"route": "/cfg/apps", "method": "GET", "status": "200"}
    assert value(scrape(first.test_client()), "ovas_http_requests_total", **one) == 1
    assert value(scrape(second.test_client()), "ovas_http_requests_total", **one) == 0


def test_openmetrics_is_served_when_asked_for(client):
    response = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert response.content_type.startswith("application/openmetrics-text")
    assert response.get_data(as_text=True).rstrip().endswith("# EOF")


# Several gunicorn workers: counters add up across processes; the session gauge does not.


def gunicorn_app():
    """The app gunicorn serves in the tests below (`test_metrics:gunicorn_app()`), with a
    route saying which worker answered."""
    app = create_app()
    metrics.init_app(app)
    app.add_url_rule(
        "/worker-pid", "worker_pid", lambda: ("", 204, {"X-Worker-Pid": str(os.getpid())})
    )
    return app


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def gunicorn(tmp_path):
    pytest.importorskip("gunicorn")
    port = _free_port()
    prom_dir = tmp_path / "prometheus"
    env = {
        **os.environ,
        "OVAS_BIND": f"127.0.0.1:{port}",
        "OVAS_WORKERS": "2",
        "OVAS_THREADS": "2",
        "OVAS_BACKEND": "ovas.testing.fake:FakeBackend",
        "OVAS_CATALOG_PATH": str(ROOT / "config" / "catalog"),
        "PROMETHEUS_MULTIPROC_DIR": str(prom_dir),
    }
    command = [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.conf.py"]
    command += ["--pythonpath", str(ROOT / "tests"), "test_metrics:gunicorn_app()"]
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as out:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield url, prom_dir
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_counters_from_every_gunicorn_worker_are_summed_in_one_scrape(gunicorn):
    url, prom_dir = gunicorn

    def get(_):
        # A fresh connection each time, so the kernel hands requests to either worker.
        return requests.get(f"{url}/cfg/apps", headers={"Connection": "close"}).status_code

    sent = 0
    with ThreadPoolExecutor(8) as pool:
        while True:
            assert set(pool.map(get, range(40))) == {200}
            sent += 40
            pids = {Path(p).stem.rsplit("_", 1)[-1] for p in glob.glob(f"{prom_dir}/counter_*.db")}
            if len(pids) >= 2 or sent >= 800:
                break
    assert len(pids) == 2, "every request went to one worker; nothing to sum"

    one = {"route": "/cfg/apps", "method": "GET", "status": "200"}
    for _ in range(4):  # whichever worker answers the scrape, the sum is the same
        samples = scrape(requests.get(f"{url}/metrics").text)
        assert value(samples, "ovas_http_requests_total", **one) == sent
        # Computed by the answering worker alone, never summed over the two.
        assert value(samples, "ovas_backend_up", backend="fake") == 1


def test_gunicorn_answers_oversized_requests_itself_as_the_readme_says(gunicorn):
    url, _ = gunicorn
    readme = (ROOT / "README.md").read_text()
    for said in ("over 4094 bytes is a `414`", "over 8190 bytes, or more than 100 header"):
        assert said in " ".join(readme.split())
    target = "/cfg/apps?q="
    fits = f"{target}{'a' * (4094 - len(f'GET {target} HTTP/1.1'))}"
    assert requests.get(f"{url}{fits}").status_code == 200
    too_long = requests.get(f"{url}{fits}a")
    assert too_long.status_code == 414
    assert too_long.headers["Content-Type"] == "text/html"
    header = "a" * (8190 - len("X-Note: \r\n"))
    assert requests.get(f"{url}/cfg/apps", headers={"X-Note": header}).status_code == 200
    too_big = requests.get(f"{url}/cfg/apps", headers={"X-Note": header + "a"})
    assert too_big.status_code == 431
    assert too_big.headers["Content-Type"] == "text/html"


def _worker_pids(url: str, rounds: int = 60) -> set[int]:
    return {
        int(r.headers["X-Worker-Pid"])
        for r in (
            requests.get(f"{url}/worker-pid", headers={"Connection": "close"})
            for _ in range(rounds)
        )
    }


def test_replaced_workers_keep_the_totals_and_a_bounded_folder(gunicorn):
    url, prom_dir = gunicorn
    one = {"route": "/cfg/apps", "method": "GET", "status": "200"}
    sent = 0
    for _ in range(4):
        for _ in range(10):
            assert requests.get(f"{url}/cfg/apps", headers={"Connection": "close"}).ok
            sent += 1
        # Every worker of this generation dies as a crash would; the master starts others.
        for pid in _worker_pids(url):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{url}/health", timeout=5).ok:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.1)
    samples = scrape(requests.get(f"{url}/metrics").text)
    assert value(samples, "ovas_http_requests_total", **one) == sent
    files = glob.glob(f"{prom_dir}/*.db")
    live = len(_worker_pids(url))
    # Two files (counters, histograms) per live worker, and one archive of each type.
    assert len(files) <= 2 * live + 2, sorted(os.path.basename(f) for f in files)
