"""A short soak in the test suite: two minutes of mixed traffic with faults against ovas
under gunicorn on a private Docker daemon (bench/soak.py, which prints what it checks)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker
SOAK = Path(__file__).resolve().parents[1] / "bench" / "soak.py"


def test_two_minutes_of_traffic_and_faults_leave_ovas_healthy():
    if os.geteuid() != 0 and os.environ.get("CI", "").lower() != "true":
        pytest.skip("the soak starts its own dockerd, which needs root")
    command = [sys.executable, str(SOAK), "--minutes", "2", "--workers", "2", "--clients", "4"]
    command += ["--fault-every", "12", "--interval", "10"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    report = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, report
    assert "soak: passed" in done.stdout
    # Every kind of fault happened at least once in the two minutes.
    faults = next(line for line in done.stdout.splitlines() if line.startswith("requests:"))
    for kind in ("kill", "remove", "worker", "reload", "daemon"):
        assert f"'{kind}'" in faults, faults
