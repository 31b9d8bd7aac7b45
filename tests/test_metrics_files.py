"""The multiprocess metrics folder stays bounded as workers come and go, and its totals
stay exactly what every worker ever counted."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from ovas.metrics_files import retire_worker

WORKER = """
import sys
from prometheus_client import CollectorRegistry, Counter, Histogram
r = CollectorRegistry()
requests = Counter("ovas_http_requests", "HTTP requests answered", ["route", "status"], registry=r)
latency = Histogram("ovas_http_request_duration_seconds", "Time", ["route"],
                    buckets=(0.01, 0.1, 1.0), registry=r)
n = int(sys.argv[1])
for i in range(n):
    requests.labels("/stream", "200" if i % 3 else "503").inc()
    latency.labels("/stream").observe(i / 10)
"""


def run_worker(folder, count: int) -> int:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    worker = subprocess.run(
        [sys.executable, "-c", WORKER + "\nimport os; print(os.getpid())", str(count)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return int(worker.stdout.strip())


def totals(folder) -> dict:
    files = glob.glob(os.path.join(folder, "*.db"))
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for metric in MultiProcessCollector.merge(files, accumulate=True)
        for s in metric.samples
    }


def test_retired_workers_are_folded_into_one_file_per_type(tmp_path):
    pids = [run_worker(tmp_path, n) for n in (3, 7, 11, 5)]
    before = totals(tmp_path)
    assert len(glob.glob(str(tmp_path / "*.db"))) == 8  # a counter and a histogram file each
    ok = ("ovas_http_requests_total", (("route", "/stream"), ("status", "200")))
    assert before[ok] == 2 + 4 + 7 + 3

    for pid in pids[:3]:  # three exit; the fourth still runs
        removed = retire_worker(pid, str(tmp_path))
        assert sorted(os.path.basename(f) for f in removed) == [
            f"counter_{pid}.db",
            f"histogram_{pid}.db",
        ]
    # Sums of floats depend on the order files are merged in: equal to rounding.
    assert totals(tmp_path) == pytest.approx(before)
    names = {os.path.basename(f) for f in glob.glob(str(tmp_path / "*.db"))}
    assert names == {
        "counter_archive.db",
        f"counter_{pids[3]}.db",
        "histogram_archive.db",
        f"histogram_{pids[3]}.db",
    }


def test_many_generations_of_workers_keep_the_folder_small(tmp_path):
    expected_requests = 0
    for generation in range(12):
        pids = [run_worker(tmp_path, 2 + generation) for _ in range(2)]
        expected_requests += 2 * (2 + generation)
        for pid in pids:
            retire_worker(pid, str(tmp_path))
    assert len(glob.glob(str(tmp_path / "*.db"))) == 2
    counted = sum(
        value for (name, _), value in totals(tmp_path).items() if name == "ovas_http_requests_total"
    )
    count = ("ovas_http_request_duration_seconds_count", (("route", "/stream"),))
    histogram = totals(tmp_path)[count]
    assert counted == histogram == expected_requests


def test_retiring_a_worker_that_wrote_nothing_is_harmless(tmp_path):
    assert retire_worker(999999, str(tmp_path)) == []
    assert glob.glob(str(tmp_path / "*.db")) == []
