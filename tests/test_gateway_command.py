"""`ovas gateway`, the command: run as a process of its own, as an operator runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner

from ovas.cli import main
from tests.support.gateway import DOMAIN
from tests.support.gateway_process import free_port


def test_the_command_needs_a_domain_serves_and_stops_on_sigterm(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.getcwd(),
        "OVAS_BACKEND": "ovas.testing:FakeBackend",
        "OVAS_GATEWAY_DOMAIN": "",
    }
    command = [sys.executable, "-c", "from ovas.cli import main; main()", "gateway"]
    refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert "OVAS_GATEWAY_DOMAIN is not set" in refused.stderr

    port = free_port()
    env["OVAS_GATEWAY_DOMAIN"] = DOMAIN
    process = subprocess.Popen([*command, "--port", str(port)], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz") as answer:
                    assert answer.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.1)
        unknown = f"http://127.0.0.1:{port}/sessions/0c5e7a9e-0a55-4a70-9c39-8a1d5d3b7f10/"
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(unknown)
        assert missing.value.code == 404
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        logged = process.stderr.read().decode()
    assert f"ovas gateway on 127.0.0.1:{port}" in logged and "stopping" in logged


def test_without_the_gateway_extra_the_command_says_what_to_install(monkeypatch):
    """aiohttp comes with `ovas[gateway]` alone: a plain install says so, no traceback."""
    monkeypatch.setitem(sys.modules, "aiohttp", None)  # what an absent module imports as
    monkeypatch.delitem(sys.modules, "ovas.gateway.server", raising=False)
    monkeypatch.setenv("OVAS_BACKEND", "ovas.testing:FakeBackend")
    monkeypatch.setenv("OVAS_GATEWAY_DOMAIN", DOMAIN)
    result = CliRunner().invoke(main, ["gateway", "--port", "1"])
    assert result.exit_code == 1, result.output
    assert "pip install 'ovas[gateway]'" in result.output
    assert "Traceback" not in result.output
