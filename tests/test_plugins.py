"""Backends as plugins: found by entry-point name or `module:Class`, errors that say what to do,
and the example third-party plugin (tests/plugin_example) passing the contract and the API."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from importlib.metadata import EntryPoint

import pytest

from ovas import create_app, registry
from ovas.errors import BackendUnavailable, CapacityExceeded, ConfigurationError, Unsatisfiable
from ovas.lifecycle import Outcome
from ovas.models import Reason, SessionState
from ovas.testing import BackendContract, FakeBackend, FakeClock, WarmPoolContract, make_request

FLASK = [sys.executable, "-m", "flask", "--app", "ovas"]


def test_built_in_and_third_party_backends_share_the_entry_point_group():
    names = {row.name: row for row in registry.installed()}
    assert {"docker", "kubernetes", "example"} <= set(names)
    assert names["example"].distribution == "ovas-example-plugin"
    assert names["docker"].distribution == "ovas"


def test_selected_by_name_or_module_class():
    from ovas_example_plugin import ExampleBackend

    assert registry.load("example") is ExampleBackend
    assert registry.load("ovas.testing:FakeBackend") is FakeBackend


def test_unknown_name_lists_the_installed_ones():
    with pytest.raises(ConfigurationError) as error:
        registry.load("nope")
    assert "Unknown backend 'nope'" in error.value.message
    assert "docker" in error.value.message and "example" in error.value.message


def test_target_that_is_no_backend_is_refused():
    with pytest.raises(ConfigurationError, match="not a subclass"):
        registry.load("ovas.models:Route")
    with pytest.raises(ConfigurationError, match="cannot be loaded"):
        registry.load("ovas.models:Nothing")


def test_missing_optional_dependency_names_the_install_command(monkeypatch):
    real = EntryPoint.load

    def load(self):
        if self.name == "docker":
            raise ModuleNotFoundError("No module named 'docker'", name="docker")
        return real(self)

    monkeypatch.setattr(EntryPoint, "load", load)
    with pytest.raises(ConfigurationError) as error:
        registry.load("docker")
    assert "pip install 'ovas[docker]'" in error.value.message


def test_two_distributions_claiming_one_name_is_an_error(monkeypatch):
    rows = [
        registry.Installed("gpu", "a_pkg:Backend", "dist-a"),
        registry.Installed("gpu", "b_pkg:Backend", "dist-b"),
    ]
    monkeypatch.setattr(registry, "installed", lambda: rows)
    with pytest.raises(ConfigurationError) as error:
        registry.load("gpu")
    assert "dist-a -> a_pkg:Backend" in error.value.message
    assert "dist-b -> b_pkg:Backend" in error.value.message


def test_unknown_backend_stops_the_app_with_the_reason(monkeypatch):
    monkeypatch.setenv("OVAS_BACKEND", "nope")
    with pytest.raises(ConfigurationError, match="installed backends"):
        create_app()


def test_flask_ovas_backends_lists_them_even_when_the_configured_one_is_broken():
    env = {"OVAS_BACKEND": "nope", "PATH": ""}
    result = subprocess.run(
        [*FLASK, "ovas", "backends"], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("example ") and "ovas_example_plugin" in line for line in lines)
    assert any(line.startswith("docker ") for line in lines)


class TestExamplePluginContract(BackendContract):
    @pytest.fixture
    def backend(self, clock):
        backend = registry.load("example").from_settings({})
        backend.now = clock
        return backend

    @pytest.fixture
    def ready_timeout(self):
        return 10.0


class TestFakeBackendContract(WarmPoolContract):
    @pytest.fixture
    def backend(self, clock):
        return FakeBackend(now=clock)

    @pytest.fixture
    def client(self, backend):
        @contextlib.contextmanager
        def connected(session):
            backend.connect(session.id)
            try:
                yield
            finally:
                backend.disconnect(session.id)

        return connected

    @pytest.fixture
    def ready_timeout(self):
        return 10.0


def test_the_fakes_gpus_are_the_cores_places_given_once_and_freed_by_a_finish():
    clock = FakeClock()
    backend = FakeBackend(gpus=2, now=clock)

    def start():
        request = make_request(backend.catalog, now=clock())  # its profile asks for 1 GPU
        backend.start(request)
        return request.id

    first, second = start(), start()
    held = {sid: w.gpus for sid, w in backend.workloads.items()}
    assert sorted(held.values()) == [("0",), ("1",)]
    assert sorted(e.name for e in backend.ledger.list("slot.gpu.")) == ["slot.gpu.0", "slot.gpu.1"]
    with pytest.raises(CapacityExceeded) as refused:
        start()
    assert refused.value.resource == "gpu"
    assert refused.value.message == "The profile asks for 1 GPU(s); 0 of 2 are free"
    assert set(backend.workloads) == {first, second}  # the refused start ran nothing
    outcome = Outcome(SessionState.ENDED, Reason.MAX_LIFETIME, "Ended", clock())
    assert backend.finish(first, outcome)
    third = start()
    assert backend.workloads[third].gpus == held[first]
    backend.gpus = 0
    with pytest.raises(Unsatisfiable, match="asks for 1 GPU"):
        start()


def test_the_fakes_ledger_is_down_with_its_engine():
    backend = FakeBackend()
    backend.start(make_request(backend.catalog))
    backend.unavailable = True
    with pytest.raises(BackendUnavailable):
        backend.ledger.list()
    with pytest.raises(BackendUnavailable):
        backend.records()
    backend.unavailable = False
    assert len(backend.records()) == 1


def test_api_through_the_example_plugin_selected_by_environment(monkeypatch, serve):
    import requests

    monkeypatch.setenv("OVAS_BACKEND", "example")
    app = create_app({"TESTING": True, "CATALOG_PATH": "", "REAP_INTERVAL": 0})
    assert type(app.extensions["ovas"].backend).__name__ == "ExampleBackend"
    server = serve(app)
    started = requests.post(
        f"{server.url}/streaming/stream", json={"id": "usd-viewer", "profile": "default"}
    )
    session = requests.get(f"{server.url}/streaming/stream/{started.json()['id']}").json()
    assert session["status"]["condition"] == "ready"
    (address,) = session["routes"]
    signaling = session["routes"][address]["routes"][0]
    import socket

    with socket.create_connection((address, signaling["source_port"]), timeout=5):
        pass
    stopped = requests.delete(f"{server.url}/stream", json={"id": started.json()["id"]})
    assert stopped.status_code == 204
