"""Readiness probes against local servers, no daemon: a port proxy that accepts and at once
closes is not an app; a server that holds a connection quiet is; a probe never hangs."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from backends.docker import probes
from ovas.kitspec import Probe


@pytest.fixture
def tcp_server() -> Iterator[Callable[[str], int]]:
    """`tcp_server(behaviour)` -> port of a server that, per connection, closes at once
    ("close"), says hello ("greet"), or holds the connection silent ("hold")."""
    sockets: list[socket.socket] = []

    def start(behaviour: str) -> int:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen()
        sockets.append(server)

        def serve() -> None:
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                sockets.append(conn)
                if behaviour == "close":
                    conn.close()
                elif behaviour == "greet":
                    conn.sendall(b"hello")

        threading.Thread(target=serve, daemon=True).start()
        return server.getsockname()[1]

    yield start
    for sock in sockets:
        sock.close()


def test_a_proxy_that_closes_at_once_is_not_ready(tcp_server):
    assert probes.tcp_open("127.0.0.1", tcp_server("close")) is False


def test_a_quiet_open_connection_or_a_greeting_is_ready(tcp_server):
    assert probes.tcp_open("127.0.0.1", tcp_server("hold")) is True
    assert probes.tcp_open("127.0.0.1", tcp_server("greet")) is True


def test_nothing_listening_is_not_ready():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    assert probes.tcp_open("127.0.0.1", port) is False


def test_an_http_probe_that_never_answers_gives_up_within_a_second(tcp_server):
    port = tcp_server("hold")
    began = time.monotonic()
    assert probes.probe("127.0.0.1", port, Probe("http", 8011, "/ready")) is False
    assert time.monotonic() - began < 1.2


@pytest.fixture
def http_server() -> Iterator[int]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/v1/streaming/ready" else 503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_port
    server.shutdown()
    server.server_close()


def test_http_probe_passes_on_success_only(http_server):
    ready = Probe("http", 8011, "/v1/streaming/ready")
    assert probes.probe("127.0.0.1", http_server, ready) is True
    assert probes.probe("127.0.0.1", http_server, Probe("http", 8011, "/other")) is False
