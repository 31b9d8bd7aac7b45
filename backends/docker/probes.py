"""Readiness probes, run by ovas against a container's published port on this host.

Docker's port proxy accepts a TCP connection on a published port even when nothing listens
inside the container, then closes it at once. So "the port accepts a connection" is not
enough: a TCP probe also waits a moment and counts an immediate close as "not listening".
"""

from __future__ import annotations

import http.client
import socket
import ssl

from ovas.kitspec import Probe

# How long a connection must stay open to count as accepted by the app, not just the proxy.
SETTLE_SECONDS = 0.2


def tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something inside the container accepts TCP connections on the port."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(SETTLE_SECONDS)
            try:
                data = sock.recv(1)
            except TimeoutError:
                return True  # still open and quiet: a server waiting for us to speak
            return bool(data)  # a greeting means a server; an empty read means a close
    except OSError:
        return False


def http_ok(
    host: str, port: int, path: str = "/", scheme: str = "HTTP", timeout: float = 0.8
) -> bool:
    """True when GET `path` answers a status from 200 to 399, as Kubernetes probes count."""
    if scheme.upper() == "HTTPS":
        # Like a kubelet, a probe does not check the certificate of the app it probes.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, port, timeout=timeout, context=context
        )
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": "ovas-probe"})
        return 200 <= conn.getresponse().status < 400
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def probe(host: str, host_port: int, spec: Probe | None, timeout: float = 0.8) -> bool:
    """Run `spec` (or, without one, a TCP probe) against `host:host_port`."""
    timeout = min(timeout, spec.timeout_seconds) if spec else timeout
    if spec is not None and spec.kind == "http":
        return http_ok(host, host_port, spec.path, spec.scheme, timeout)
    return tcp_open(host, host_port, timeout)
