"""A real browser through the gateway: headless Chromium opens `wss://<session>.<domain>` as a
web viewer does (the session id and its stream token as subprotocols), over TLS with a
certificate from the test's own CA, and exchanges a message with the session's signaling
socket (an echo) through the gateway, served on real sockets. The page sends back what it
heard, so the session's end reads what the browser received."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ovas import create_app
from ovas.gateway import tokens
from ovas.gateway.server import Gateway, tls_context
from ovas.testing import FakeBackend
from tests.support import polling
from tests.support.gateway import DOMAIN, PEER_PATH, Echo
from tests.support.gateway_process import LoopThread
from tests.test_docs_browser import find_chromium
from tests.test_gateway_tls import make_certificates

pytestmark = pytest.mark.browser
SECRET = "browser-secret"
SENT = '{"peer_msg": {"id": 1, "msg": "hello from Chromium"}}'

PAGE = """<!doctype html>
<html><body><pre id="out">waiting</pre><script>
const out = document.getElementById("out");
const socket = new WebSocket(%(url)s, %(protocols)s);
socket.onopen = () => socket.send(%(sent)s);
socket.onmessage = (event) => {
  if (event.data.startsWith("echoed:")) return socket.close(1000);
  out.textContent = "echoed:" + event.data;
  socket.send(out.textContent);  // what came back, for the test to read at the other end
};
socket.onerror = () => { out.textContent = "error"; };
socket.onclose = (event) => {
  if (out.textContent === "waiting") out.textContent = "closed:" + event.code;
};
</script></body></html>
"""


def spki_sha256(certificate: str) -> str:
    """The base64 SHA-256 of a certificate's public key (what Chromium's
    --ignore-certificate-errors-spki-list takes)."""
    leaf = x509.load_pem_x509_certificate(Path(certificate).read_bytes())
    der = leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def until(check, browser: subprocess.Popen, timeout: float = 20.0) -> None:
    """Poll `check` while the browser runs (a real wait on a real browser)."""
    polling.until(check, timeout, process=browser)


def test_chromium_exchanges_a_message_over_wss_by_the_sessions_name(tmp_path):
    chromium = find_chromium()
    _, cert, key = make_certificates(tmp_path)
    backend = FakeBackend()
    core = create_app(
        {"TESTING": True, "REAP_INTERVAL": 0, "GATEWAY_DOMAIN": DOMAIN, "GATEWAY_SECRET": SECRET},
        backend=backend,
    )
    sid = core.extensions["ovas"].sessions.start("usd-viewer", "default", username="alice").id
    token = tokens.issue(SECRET, sid, "alice")
    with LoopThread() as loop:
        echo = loop.run(Echo().start())
        backend.signaling = ("127.0.0.1", echo.port)
        gateway = Gateway(core)
        port = loop.run(gateway.start("127.0.0.1", 0, tls_context(cert, key)))
        try:
            page = tmp_path / "viewer.html"
            page.write_text(
                PAGE
                % {
                    "url": json.dumps(f"wss://{sid}.{DOMAIN}:{port}{PEER_PATH}"),
                    "protocols": json.dumps([sid, f"Authorization-Bearer.{token}"]),
                    "sent": json.dumps(SENT),
                }
            )
            command = [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-extensions",
                f"--user-data-dir={tmp_path / 'profile'}",
                "--no-proxy-server",
                # A wildcard DNS record for the domain, and nothing else resolves.
                f"--host-resolver-rules=MAP *.{DOMAIN} 127.0.0.1, MAP * ~NOTFOUND",
                # The test's CA is trusted for this one certificate only.
                f"--ignore-certificate-errors-spki-list={spki_sha256(cert)}",
                page.as_uri(),
            ]
            # In a process group of its own, so that its helpers end with it.
            browser = subprocess.Popen(
                command,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            try:
                until(lambda: echo.seen and echo.seen[0].close_code is not None, browser)
            finally:
                os.killpg(browser.pid, signal.SIGKILL)
                stderr = browser.communicate(timeout=30)[1]
        finally:
            loop.run(gateway.stop())
            loop.run(echo.stop())
    assert len(echo.seen) == 1, stderr[-2000:]
    (seen,) = echo.seen
    assert seen.texts == [SENT, f"echoed:{SENT}"], stderr[-2000:]
    assert seen.path == PEER_PATH and seen.offered == [sid]  # the token stayed at the gateway
    assert seen.headers["X-Forwarded-Proto"] == "wss"
    assert seen.close_code == 1000  # the page's own close, passed through
