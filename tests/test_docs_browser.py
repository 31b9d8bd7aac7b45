"""The live docs pages in a real browser: headless Chromium renders every operation of each
service, and the page asks nothing of any host but ovas."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from ovas import create_app
from ovas.testing import FakeBackend
from tests.support.chromium import headless

pytestmark = pytest.mark.browser

LOOPBACK = "127.0.0.1"
# The one port nothing listens on: a request that slips past the host rules dies here.
DEAD_PROXY = "http://127.0.0.1:9"
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def find_chromium() -> str:
    """The Chromium binary; skips the test where there is none, but fails under CI, where
    `make test` installs it and its absence means the check silently stopped running."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    reason = "Chromium is not installed (`make system-deps` as root installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def load_page(chromium: str, url: str, workdir: Path, *, hostile: str = "") -> tuple[str, dict]:
    """Load `url` with no way out to the network; return the rendered DOM and the net log.
    `hostile`: a name the browser resolves to the loopback address, as a DNS rebinding
    attacker's name does once rebound."""
    mapped = f"MAP {hostile} {LOOPBACK}, " if hostile else ""
    net_log = workdir / "net-log.json"
    command = [
        *headless(chromium, workdir / "profile"),
        # Every name but the loopback address fails to resolve, and anything that still
        # reaches for a proxy finds a dead one: nothing can leave the machine.
        f"--host-resolver-rules={mapped}MAP * ~NOTFOUND, EXCLUDE {LOOPBACK}, EXCLUDE localhost",
        f"--proxy-server={DEAD_PROXY}",
        f"--proxy-bypass-list={LOOPBACK};localhost;{hostile or LOOPBACK}",
        f"--log-net-log={net_log}",
        # Virtual time waits for pending fetches, so the DOM is dumped once Swagger UI has
        # fetched the OpenAPI document and rendered it, not at a guessed wall-clock moment.
        "--virtual-time-budget=15000",
        "--dump-dom",
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"chromium exited {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout, read_net_log(net_log)


def read_net_log(path: Path) -> dict:
    text = path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        # A browser stopped mid-write leaves the events list open; what was written is whole.
        return json.loads(text.rstrip().rstrip(",") + "]}")


def page_destinations(net_log: dict, page_origin: str) -> set[str]:
    """Every URL and socket destination the browser asked for on the page's behalf.

    Chromium's own services (sign-in's account list, the component updater, network time)
    send requests whatever the flags say; the host rules make them fail, and they are told
    apart by carrying no initiator and a network isolation key of a site other than the
    page's. Anything the page causes carries the page as initiator or as its top-level site:
    scripts, styles, images, fetches, frames, redirects, navigations away, preconnects."""
    page_site = f"{urlsplit(page_origin).scheme}://{urlsplit(page_origin).hostname}"
    names = {number: name for name, number in net_log["constants"]["logEventTypes"].items()}
    found = set()
    for event in net_log["events"]:
        params = event.get("params") or {}
        name = names.get(event["type"])
        if name == "URL_REQUEST_START_JOB" and "url" in params:
            top_site = params.get("network_isolation_key", "").split(" ")[0]
            if params.get("initiator") not in (None, "not an origin") or top_site == page_site:
                found.add(params["url"])
        elif "group_id" in params:
            # A socket for "pm/https://host:port <https://top-site same_site>"
            destination, _, key = params["group_id"].partition(" <")
            if key.split(" ")[0] == page_site:
                found.add(re.sub(r"^[^:]*?/(?=\w+://)", "", destination))
    return found


class OperationCollector(HTMLParser):
    """Collects (METHOD, path) of each operation Swagger UI rendered."""

    def __init__(self):
        super().__init__()
        self.operations: set[tuple[str, str]] = set()
        self._in_method = False
        self._method = ""

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        classes = (attributes.get("class") or "").split()
        if "opblock-summary-method" in classes:
            self._in_method, self._method = True, ""
        elif "opblock-summary-path" in classes and self._method:
            self.operations.add((self._method, attributes.get("data-path", "")))

    def handle_endtag(self, tag):
        self._in_method = False

    def handle_data(self, data):
        if self._in_method:
            self._method += data.strip()


def rendered_operations(dom: str) -> set[tuple[str, str]]:
    collector = OperationCollector()
    collector.feed(dom)
    return collector.operations


@pytest.fixture(scope="module")
def chromium() -> str:
    return find_chromium()


@pytest.mark.parametrize("service", ["applications", "streaming"])
def test_docs_page_renders_every_operation_from_ovas_alone(chromium, serve, tmp_path, service):
    app = create_app({"TESTING": True}, backend=FakeBackend())
    spec = app.test_client().get(f"/{service}/openapi.json").get_json()
    documented = {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }
    server = serve(app)

    dom, net_log = load_page(chromium, f"{server.url}/{service}/docs", tmp_path)

    rendered = rendered_operations(dom)
    assert documented, "the OpenAPI document lists no operation"
    assert rendered == documented, f"rendered {sorted(rendered)}, documented {sorted(documented)}"
    asked = page_destinations(net_log, server.url)
    # The log is read right: the page's own loads are in it.
    assert f"{server.url}/{service}/openapi.json" in asked
    assert f"{server.url}/docs-assets/swagger-ui/swagger-ui-bundle.js" in asked
    outside = sorted(url for url in asked if urlsplit(url).hostname != LOOPBACK)
    assert not outside, f"the docs page asked for outside resources: {outside}"


VIEWER_PAGE = """<!doctype html><html><body><pre id="out">not run</pre><script>
const ovas = "%s", out = document.getElementById("out");
const say = (line) => { out.textContent += "\\n" + line; };
(async () => {
  out.textContent = "ran";
  try {
    const apps = await fetch(ovas + "/cfg/apps");
    say("apps " + apps.status + " " + (await apps.json()).count);
    const started = await fetch(ovas + "/streaming/stream", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({id: "usd-viewer", profile: "default"}),
    });
    say("started " + started.status + " " + (await started.json()).id);
  } catch (error) { say("refused " + error.name); }
  // A simple request, sent without a preflight; its answer is unreadable either way.
  await fetch(ovas + "/streaming/stream", {method: "POST", mode: "no-cors",
    body: JSON.stringify({id: "usd-viewer", profile: "default"})}).catch(() => {});
  say("done");
})();
</script></body></html>"""


def page_server(serve, html: str):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/html")])
        return [html.encode()]

    return serve(app)


def page_text(dom: str) -> str:
    return dom.split('<pre id="out">', 1)[1].split("</pre>", 1)[0]


def test_the_web_viewer_served_from_localhost_starts_a_stream(chromium, serve, tmp_path):
    backend = FakeBackend()
    ovas = serve(create_app({"TESTING": True}, backend=backend))
    viewer = page_server(serve, VIEWER_PAGE % ovas.url)
    # As `npm run dev` serves NVIDIA's web-viewer-sample: http://localhost:5173, another port.
    url = viewer.url.replace(LOOPBACK, "localhost") + "/"
    dom, _ = load_page(chromium, url, tmp_path)
    text = page_text(dom)
    assert "apps 200 " in text and "started 20" in text and "done" in text, text
    # One start: the body sent without a preflight is text/plain, which ovas does not read.
    assert len(backend.observe_all()) == 1


def test_a_page_from_another_site_cannot_drive_ovas_without_auth(chromium, serve, tmp_path):
    backend = FakeBackend()
    ovas = serve(create_app({"TESTING": True}, backend=backend))
    page = page_server(serve, VIEWER_PAGE % ovas.url)
    url = page.url.replace(LOOPBACK, "attacker.example") + "/"
    dom, _ = load_page(chromium, url, tmp_path, hostile="attacker.example")
    text = page_text(dom)
    assert "refused TypeError" in text and "done" in text, text
    assert "apps 200" not in text
    assert backend.observe_all() == []  # not even the request sent without a preflight


def test_dns_rebinding_reads_nothing_from_ovas(chromium, serve, tmp_path):
    ovas = serve(create_app({"TESTING": True}, backend=FakeBackend()))
    # The attacker's name now resolves to 127.0.0.1: its page and ovas are the same origin.
    url = ovas.url.replace(LOOPBACK, "rebound.example") + "/cfg/apps"
    dom, _ = load_page(chromium, url, tmp_path, hostile="rebound.example")
    assert "OVAS_ALLOWED_HOSTS" in dom
    assert "usd-viewer" not in dom
