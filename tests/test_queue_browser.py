"""OVAS's browser clients wait in line unchanged: in headless Chromium, a page runs the start,
poll and connect sequence of NVIDIA's web viewer sample or of the Azure Operations Twin web
app against a served ovas whose one session slot is taken (`OVAS_SESSION_CAPACITY=1`). The
client's POST is answered 202 `queued`; it polls GET /stream/{id} at its own interval while
the answer stays 202; once the test deletes the holder it gets 200 and opens the session's
signaling WebSocket at the route the answer gives, through the signaling gateway, to an echo
standing in for the Kit app.

The page is served from the API's origin under the gateway's domain, as the README asks of
clients that send no credential on the signaling socket: the stream token reaches the
gateway as the session's cookie. ovas's clock is a FakeClock: every poll the browser makes
moves it on by the client's real interval (10 s, 60 s) and runs a reaper pass, so the place
in line is seen kept across the abandon timeout (180 s) by the polls alone, while the
browser itself polls every `POLL_MS` of real time."""

from __future__ import annotations

import io
import itertools
import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

import pytest
from flask import Flask

from ovas import create_app
from ovas.gateway.server import Gateway
from ovas.testing import FakeBackend, FakeClock
from tests.support.chromium import headless
from tests.support.gateway import DOMAIN, PEER_PATH, Echo
from tests.support.gateway_process import LoopThread, free_port
from tests.test_docs_browser import find_chromium
from tests.test_gateway_browser import until

pytestmark = pytest.mark.browser

APP, VERSION, PROFILE = "usd-viewer", "107.3.2", "default"
STREAM = "/streaming/stream"
# The browser's poll interval in real time. Both clients' own (10 s, 60 s) would make the
# test wait minutes; ovas's clock is moved by the real interval at each poll instead.
POLL_MS = 150
ABANDON_TIMEOUT = 180  # OVAS_QUEUE_ABANDON_TIMEOUT's default

# What the page runs around a client's own sequence: its answers are noted, in order, and
# sent as the first message on the signaling socket; notes also go to /page-notes, which
# shows what happened when no socket opens.
PAGE = """<!doctype html>
<html><body><pre id="out"></pre><script>
const STREAM_SERVER = location.origin;  // the viewer is served from the API's origin
const APP = %(app)s, VERSION = %(version)s, PROFILE = %(profile)s;
const POLL_MS = %(poll_ms)s;
const PEER_PATH = %(peer_path)s;
const answers = [];
const note = (line) => {
  document.getElementById("out").textContent += line + "\\n";
  fetch("/page-notes", {method: "POST", body: line}).catch(() => {});
};
const answered = (method, response, data) => {
  const status = data && data.status ? data.status.condition : null;
  const place = data ? data.queue_position : null;
  answers.push([method, response.status, status, place]);
  note([method, response.status, status, place].join(" "));
};
window.addEventListener("unhandledrejection", (event) => note("rejected " + event.reason));

// AppStreamer.connect() of @nvidia/omniverse-webrtc-streaming-library (published as a
// bundle only) opens the signaling socket at ws://<signaling server>:<signaling port>,
// path /sign_in?peer_id=...&version=2, offering the session id as subprotocol
// (tests/support/gateway.py records this). With `authenticate: false`, as both clients
// set it, no credential is offered: the session's cookie carries the stream token.
function connect(server, port, sessionId) {
  note("connect " + server + ":" + port);
  const socket = new WebSocket("ws://" + server + ":" + port + PEER_PATH, [sessionId]);
  socket.onopen = () => socket.send(JSON.stringify(answers));
  socket.onmessage = () => socket.close(1000);
  socket.onerror = () => note("socket error");
  socket.onclose = (event) => note("closed " + event.code);
}

// Reading a ready answer, as both clients do (web viewer: setupStream in src/App.tsx;
// Azure: _setAppStreamServer in ServiceComponent.ts): the first key of `routes` is the
// host of both routes; the signaling and media routes are found by their description,
// and a missing one stops the client.
function setupStream(stream) {
  const server = Object.keys(stream.routes)[0];
  const routes = stream.routes[server].routes;
  const signaling = routes.find((route) => route.description === "signaling");
  const media = routes.find((route) => route.description === "media");
  if (!signaling || !media) return note("signaling or media route missing");
  connect(server, signaling.source_port, stream.id);
}

%(client)s
</script></body></html>
"""

# NVIDIA-Omniverse/web-viewer-sample (1.5.2, `"source": "stream"` in stream.config.json):
# src/App.tsx, `_startStream` and `pollForSessionReady`, over src/Endpoints.tsx
# (`createStreamingSession`, `getStreamingSessionInfo`) and src/http.ts. The POST sends
# {id, version, profile} as JSON; a status above 400 fails the start; a 202 starts polling,
# any other status is read as ready. A poll is a plain GET; 200 sets the stream up, any
# other status polls again 10 s later; a poll that throws (no answer, a body that is not
# JSON) is logged and polling stops.
WEB_VIEWER = """
async function pollForSessionReady(sessionId) {
  try {
    const response = await fetch(STREAM_SERVER + "/streaming/stream/" + sessionId);
    const data = await response.json();
    answered("GET", response, data);
    if (response.status === 200) setupStream(data);
    else setTimeout(() => pollForSessionReady(sessionId), POLL_MS);  // the sample: 10000
  } catch (error) {
    note("polling stopped: " + error);
  }
}

async function startStream() {
  const response = await fetch(STREAM_SERVER + "/streaming/stream", {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({id: APP, version: VERSION, profile: PROFILE}),
  });
  const data = await response.json();
  answered("POST", response, data);
  if (response.status > 400) return note("start failed " + response.status);
  if (response.status === 202) return pollForSessionReady(data.id);
  setupStream(data);
}
startStream();
"""

# microsoft/Omniverse-Azure-Operations-Twin: web-app/src/components/ServiceComponent.ts,
# `_requestSession` and `_pollForSessionReady`, over web-app/src/service/Endpoints.tsx
# (`createStreamingSession`, `getStreamingSessionInfo`) and web-app/src/service/http.ts.
# The POST sends {arguments: {usd_stage_uri}, id, version, profile}, the stage '' when
# none is chosen, with `Authorization: Bearer` only when its Keycloak cookie holds a token
# (none here: ovas runs without authentication). A status above 400 fails the start; a 202
# starts polling, any other status is read as ready. A poll is a GET; 200 sets the stream
# up and stops, any other status polls again 60 s later; nothing catches a poll that
# throws, so its rejection ends the polling.
AZURE_APP = """
const authToken = null;  // web-app/src/service/keycloak.ts: getAuthToken()
const headers = (extra) => authToken ? {...extra, Authorization: "Bearer " + authToken} : extra;

async function pollForSessionReady(sessionId) {
  const response = await fetch(STREAM_SERVER + "/streaming/stream/" + sessionId,
                               {headers: headers({})});
  const data = await response.json();
  answered("GET", response, data);
  if (response.status === 200) {
    setupStream(data);
    return;
  }
  setTimeout(() => pollForSessionReady(sessionId), POLL_MS);  // the app: 60000
}

async function requestSession(usdStageUri) {
  const response = await fetch(STREAM_SERVER + "/streaming/stream", {
    method: "POST",
    headers: headers({"Content-Type": "application/json"}),
    body: JSON.stringify({
      arguments: {usd_stage_uri: usdStageUri ?? ""},
      id: APP,
      version: VERSION,
      profile: PROFILE,
    }),
  });
  const data = await response.json();
  answered("POST", response, data);
  if (response.status > 400) return note("start failed " + response.status);
  if (response.status === 202) await pollForSessionReady(data.id);
  else setupStream(data);
}
requestSession(undefined);
"""


@dataclass(frozen=True)
class Client:
    name: str
    script: str
    interval: int  # seconds between its polls in the real client
    body: dict  # what its POST sends

    @property
    def polls_in_line(self) -> int:
        """Polls answered `queued` before the holder is deleted: the time they stand for
        on ovas's clock passes the abandon timeout."""
        return ABANDON_TIMEOUT // self.interval + 1


CLIENTS = [
    Client(
        "web-viewer-sample", WEB_VIEWER, 10, {"id": APP, "version": VERSION, "profile": PROFILE}
    ),
    Client(
        "azure-operations-twin",
        AZURE_APP,
        60,
        {"arguments": {"usd_stage_uri": ""}, "id": APP, "version": VERSION, "profile": PROFILE},
    ),
]


@dataclass
class Asked:
    """One request the page sent to ovas, as ovas answered it."""

    at: float  # time.monotonic() when answered
    method: str
    path: str
    status: int
    body: bytes


@dataclass
class Site:
    """The viewer's origin: its page at /, its notes at /page-notes, and ovas for every other
    path. Each answered GET of a session moves `clock` on by `interval` (the time between
    two polls of the real client) and runs a reaper pass, as the reaper's own thread would
    in that time."""

    api: Flask
    page: str
    clock: FakeClock
    interval: float
    asked: list[Asked] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/html")])
            return [self.page.encode()]
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        if path == "/page-notes":
            self.notes.append(body.decode(errors="replace"))
            start_response("204 No Content", [])
            return []
        environ["wsgi.input"] = io.BytesIO(body)
        answered: list[str] = []

        def record(status, headers, exc_info=None):
            answered.append(status)
            return start_response(status, headers, exc_info)

        chunks = list(self.api(environ, record))
        method = environ["REQUEST_METHOD"]
        if method == "GET" and path.startswith(f"{STREAM}/"):
            self.clock.advance(self.interval)
            self.api.extensions["ovas"].sessions.reap()
        with self.lock:
            self.asked.append(Asked(time.monotonic(), method, path, int(answered[0][:3]), body))
        return chunks

    def polls(self) -> list[Asked]:
        with self.lock:
            return [a for a in self.asked if a.method == "GET" and a.path.startswith(f"{STREAM}/")]


def chromium_command(chromium: str, url: str, profile) -> list[str]:
    return [
        *headless(chromium, profile),
        "--no-proxy-server",
        # The gateway's domain and its wildcard resolve to the loopback address, as DNS
        # records would; no other name resolves.
        f"--host-resolver-rules=MAP {DOMAIN} 127.0.0.1, MAP *.{DOMAIN} 127.0.0.1, MAP * ~NOTFOUND",
        url,
    ]


@pytest.mark.parametrize("client", CLIENTS, ids=lambda c: c.name)
def test_a_browser_client_polls_its_queued_start_and_connects_when_it_starts(
    serve, tmp_path, client
):
    chromium = find_chromium()
    clock = FakeClock()
    backend = FakeBackend(now=clock)
    gateway_port = free_port()
    api = create_app(
        {
            "TESTING": True,
            "REAP_INTERVAL": 0,
            "SESSION_CAPACITY": 1,
            "QUEUE_ABANDON_TIMEOUT": ABANDON_TIMEOUT,
            "GATEWAY_DOMAIN": DOMAIN,
            "GATEWAY_SECRET": "queue-browser-secret",
            "GATEWAY_PUBLIC_PORT": gateway_port,
            "ALLOWED_HOSTS": DOMAIN,  # the API is reached as http://<domain>:<port>
        },
        backend=backend,
    )
    control = api.test_client()
    holder = control.post(STREAM, json={"id": APP, "version": VERSION, "profile": PROFILE})
    assert holder.status_code in (200, 202) and holder.json["queue_position"] is None
    holder_id = holder.json["id"]
    backend.connect(holder_id)  # its client keeps it from the connect timeout
    joined = clock()  # ovas's clock stands still until the client's first poll

    page = PAGE % {
        "app": json.dumps(APP),
        "version": json.dumps(VERSION),
        "profile": json.dumps(PROFILE),
        "poll_ms": POLL_MS,
        "peer_path": json.dumps(PEER_PATH),
        "client": client.script,
    }
    site = Site(api, page, clock, client.interval)
    server = serve(site)
    port = int(server.url.rsplit(":", 1)[1])

    with LoopThread() as loop:
        echo = loop.run(Echo().start())
        backend.signaling = ("127.0.0.1", echo.port)
        gateway = Gateway(api)
        loop.run(gateway.start("127.0.0.1", gateway_port))
        browser = subprocess.Popen(
            chromium_command(chromium, f"http://{DOMAIN}:{port}/", tmp_path / "profile"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its helpers end with it
        )
        try:
            until(lambda: len(site.polls()) >= client.polls_in_line, browser, timeout=30)
            in_line = clock() - joined
            deleted = control.delete(f"{STREAM}/{holder_id}").status_code
            until(lambda: echo.seen and echo.seen[0].close_code is not None, browser)
        finally:
            os.killpg(browser.pid, signal.SIGKILL)
            stderr = browser.communicate(timeout=30)[1]
            loop.run(gateway.stop())
            loop.run(echo.stop())

    context = f"page notes: {site.notes[-20:]}\nchromium: {stderr[-1500:]}"
    assert deleted == 204
    waited = client.polls_in_line
    # Its polls alone kept its place for longer than the abandon timeout, on ovas's clock.
    assert in_line.total_seconds() > ABANDON_TIMEOUT, context

    # The start: the client's own body, answered 202 `queued`.
    (start,) = [a for a in site.asked if a.method == "POST"]
    assert (start.path, start.status) == (STREAM, 202), context
    assert json.loads(start.body) == client.body

    # The polls: GET of that one session, 202 while it waits, until the one 200 after the
    # holder left; then the socket, not another poll. Each waits out the interval.
    polls = site.polls()
    (session_path,) = {a.path for a in polls}
    session_id = session_path.rsplit("/", 1)[1]
    assert [a.status for a in polls[:waited]] == [202] * waited, context
    assert [a.status for a in polls].count(200) == 1 and polls[-1].status == 200, context
    gaps = [b.at - a.at for a, b in itertools.pairwise(polls)]
    assert min(gaps) >= 0.9 * POLL_MS / 1000, gaps

    # What the client itself read: `queued`, first in line, until it started, then 200.
    assert len(echo.seen) == 1, context
    (seen,) = echo.seen
    answers = json.loads(seen.texts[0])
    assert answers[0] == ["POST", 202, "queued", 1], answers
    assert answers[1 : waited + 1] == [["GET", 202, "queued", 1]] * waited, answers
    assert answers[-1] == ["GET", 200, "ready", None], answers
    assert [a[:2] for a in answers[1:]] == [["GET", a.status] for a in polls], answers

    # The socket: opened at the route the 200 named (<session>.<domain>, the gateway's
    # port), with the session id offered and the token from the session's cookie, which the
    # gateway kept to itself.
    assert seen.path == PEER_PATH and seen.offered == [session_id], context
    assert seen.headers["X-Forwarded-Host"] == f"{session_id}.{DOMAIN}:{gateway_port}"
    assert "ovas_stream_token" not in seen.headers.get("Cookie", "")
    assert seen.close_code == 1000
