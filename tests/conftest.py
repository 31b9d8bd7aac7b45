"""Fixtures shared by every test: an app on a fake backend, and a real HTTP server."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from werkzeug.serving import make_server

from ovas import create_app
from ovas.testing import FakeBackend


class LiveServer:
    """Serves a WSGI app on 127.0.0.1 over real HTTP until closed."""

    def __init__(self, app):
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[..., LiveServer]]:
    """`serve(app)` -> a LiveServer, closed at the end of the test."""
    servers: list[LiveServer] = []

    def start(app) -> LiveServer:
        server = LiveServer(app)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def app(backend):
    return create_app({"TESTING": True, "REAP_INTERVAL": 0}, backend=backend)


@pytest.fixture
def client(app):
    return app.test_client()
