"""What the signaling gateway changes in the API's answers, on the fake backend with an
injected clock: routes, stream tokens and their cookie, and clients counted through the
gateway's records driving `connected` and the connect and idle clocks."""

from __future__ import annotations

import pytest
import yaml

from ovas import create_app
from ovas.auth import STREAMER, Identity, hash_key
from ovas.errors import BackendUnavailable
from ovas.gateway import presence, tokens
from ovas.gateway.rules import GatewayRules
from ovas.ledger import MemoryLedger
from ovas.models import Reason, SessionState, WarmPool
from ovas.testing import FakeBackend, FakeClock, sample_catalog, service_for
from ovas.workloads import SESSION_PREFIX, SLOT_PREFIX

DOMAIN = "streams.example.com"
SECRET = "a-secret-every-replica-shares"
GATEWAY = {"GATEWAY_DOMAIN": DOMAIN, "GATEWAY_SECRET": SECRET}
START = {"id": "usd-viewer", "profile": "default"}
USERS = {"alice": STREAMER, "bob": STREAMER, "root": "admin"}


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def backend(clock):
    catalog = sample_catalog()
    catalog.pools["viewers"] = WarmPool("viewers", "usd-viewer", "latest", "default", 1)
    return FakeBackend(catalog, now=clock)


@pytest.fixture
def make_client(tmp_path, backend):
    keys = tmp_path / "keys.yaml"
    entries = [{"sha256": hash_key(f"key-{u}"), "user": u, "roles": [r]} for u, r in USERS.items()]
    keys.write_text(yaml.safe_dump(entries))

    def make(**config):
        settings = {"AUTH": "apikey", "APIKEYS_FILE": str(keys), **config}
        app = create_app({"TESTING": True, "REAP_INTERVAL": 0, **settings}, backend=backend)
        return app.test_client()

    return make


def as_user(user: str, **kw) -> dict:
    return {"headers": {"Authorization": f"Bearer key-{user}"}, **kw}


def signaling_and_media(body: dict) -> tuple[str, dict, dict]:
    ((key, value),) = body["routes"].items()
    found = {r["description"]: r for r in value["routes"]}
    return key, found["signaling"], found["media"]


# Routes


def test_without_the_gateway_a_session_is_reached_on_its_own_ports(make_client, backend):
    client = make_client()
    body = client.post("/stream", json=START, **as_user("alice")).get_json()
    key, signaling, media = signaling_and_media(body)
    own = {r.description: r for r in backend.observe(body["id"]).seen.routes}
    assert key == backend.host
    assert signaling["source_port"] == own["signaling"].source_port
    assert media["source_port"] == own["media"].source_port
    assert body["stream_token"] is None


def test_with_the_gateway_every_answer_routes_signaling_through_it(make_client, backend):
    client = make_client(**GATEWAY, GATEWAY_PUBLIC_PORT=8443)
    started = client.post("/stream", json=START, **as_user("alice"))
    sid = started.get_json()["id"]
    own = {r.description: r for r in backend.observe(sid).seen.routes}
    # A warm pool's session, claimed by a start, is routed the same way.
    client.application.extensions["ovas"].sessions.reap()
    claimed = client.post("/stream", json=START, **as_user("bob"))
    assert claimed.status_code == 200 and claimed.get_json()["id"] != sid
    answers = [
        started.get_json(),
        client.get(f"/stream/{sid}", **as_user("alice")).get_json(),
        client.get("/stream", **as_user("alice")).get_json()["items"][0],
        *[
            item
            for item in client.get("/stream", **as_user("root")).get_json()["items"]
            if item["id"] == sid
        ],
    ]
    assert len(answers) == 4
    for body in answers:
        key, signaling, media = signaling_and_media(body)
        assert key == f"{sid}.{DOMAIN}"
        assert (signaling["source_port"], signaling["destination_port"]) == (
            8443,
            own["signaling"].destination_port,
        )
        assert media["source_port"] == own["media"].source_port  # UDP goes direct
    key, signaling, _ = signaling_and_media(claimed.get_json())
    assert key == f"{claimed.get_json()['id']}.{DOMAIN}" and signaling["source_port"] == 8443
    # The gateway still reaches the session where it is.
    _, upstream = client.application.extensions["ovas"].sessions.signaling(sid)
    assert upstream == (backend.host, own["signaling"].source_port)


# Stream tokens


def test_the_owner_and_admins_get_the_owners_stream_token(make_client):
    client = make_client(**GATEWAY)
    started = client.post("/stream", json=START, **as_user("alice")).get_json()
    sid = started["id"]
    by_owner = client.get(f"/stream/{sid}", **as_user("alice")).get_json()["stream_token"]
    by_admin = client.get(f"/stream/{sid}", **as_user("root")).get_json()["stream_token"]
    listed = client.get("/stream", **as_user("root")).get_json()["items"]
    for token in (started["stream_token"], by_owner, by_admin, listed[0]["stream_token"]):
        assert tokens.read(SECRET, token) == (sid, "alice")
    # Another user sees neither the session nor its token.
    assert client.get(f"/stream/{sid}", **as_user("bob")).status_code == 404
    assert client.get("/stream", **as_user("bob")).get_json()["items"] == []
    sessions = client.application.extensions["ovas"].sessions
    session = sessions.get(sid)
    sessions.stream_tokens([session], Identity("bob", frozenset({STREAMER})))
    assert session.stream_token is None


def test_no_stream_token_without_token_checks(make_client, backend):
    client = make_client(**GATEWAY, GATEWAY_AUTH="none")
    body = client.post("/stream", json=START, **as_user("alice")).get_json()
    assert body["stream_token"] is None
    assert client.get(f"/stream/{body['id']}", **as_user("root")).get_json()["stream_token"] is None
    # Routes still go through the gateway, where the session id is the only key.
    assert signaling_and_media(body)[0] == f"{body['id']}.{DOMAIN}"


class CountingLedger(MemoryLedger):
    """A ledger that counts, in `others`, its calls on records other than the sessions' own
    and their places (`session.*`, `slot.*`), which the backend reads for every request
    (and the whole ledger's list, the clean-up's read of both)."""

    others = 0

    def _count(self, name: str) -> None:
        if not name.startswith((SESSION_PREFIX, SLOT_PREFIX)):
            self.others += 1

    def create(self, name, data):
        self._count(name)
        return super().create(name, data)

    def replace(self, entry, data):
        self._count(entry.name)
        return super().replace(entry, data)

    def list(self, prefix=""):
        if prefix:
            self._count(prefix)
        return super().list(prefix)

    def delete(self, target):
        self._count(target if isinstance(target, str) else target.name)
        return super().delete(target)


def test_without_a_secret_set_tokens_are_signed_with_the_ledgers_read_once(make_client, backend):
    backend.ledger = CountingLedger()
    client = make_client(GATEWAY_DOMAIN=DOMAIN)
    sid = client.post("/stream", json=START, **as_user("alice")).get_json()["id"]
    made = tokens.gateway_secret({}, backend.ledger)  # what a gateway process reads
    calls = backend.ledger.others
    token = client.get(f"/stream/{sid}", **as_user("alice")).get_json()["stream_token"]
    assert tokens.read(made, token) == (sid, "alice")
    assert backend.ledger.others - calls == 1  # the clients' list, not the secret again


# The cookie


def cookie_of(answer) -> str:
    (value,) = answer.headers.getlist("Set-Cookie")
    return value


def test_the_owners_answers_set_the_token_as_a_cookie_for_the_gateways_domain(make_client):
    client = make_client(**GATEWAY)
    api = f"https://api.{DOMAIN}"
    started = client.post("/stream", json=START, **as_user("alice", base_url=api))
    sid = started.get_json()["id"]
    got = client.get(f"/stream/{sid}", **as_user("alice", base_url=api))
    for answer in (started, got):
        attributes = [a.strip() for a in cookie_of(answer).split(";")]
        token = answer.get_json()["stream_token"]
        assert attributes[0] == f"{tokens.COOKIE}_{sid}={token}"
        assert tokens.cookie_name(sid) == f"{tokens.COOKIE}_{sid}"
        assert {f"Domain={DOMAIN}", "Secure", "HttpOnly", "Path=/", "SameSite=Lax"} <= set(
            attributes
        )
        assert "Max-Age=28800" in attributes  # the session's max lifetime, no longer
    # Over plain HTTP (development) without Secure, which a browser would refuse there.
    plain = client.get(f"/stream/{sid}", **as_user("alice", base_url=f"http://{DOMAIN}"))
    assert "Secure" not in cookie_of(plain) and f"Domain={DOMAIN}" in cookie_of(plain)
    # Not to an admin, nor under another domain (a browser would not keep it), nor with
    # a name that only ends like the domain.
    for user, base in [
        ("root", api),
        ("alice", "https://ovas.internal"),
        ("alice", f"https://evil{DOMAIN}"),
    ]:
        answer = client.get(f"/stream/{sid}", **as_user(user, base_url=base))
        assert answer.status_code == 200
        assert answer.headers.getlist("Set-Cookie") == []
    # Stopping the session makes the browser forget it.
    stopped = client.delete(f"/stream/{sid}", **as_user("alice", base_url=api))
    assert stopped.status_code == 204
    assert cookie_of(stopped).startswith(f"{tokens.COOKIE}_{sid}=;")
    assert "Max-Age=0" in cookie_of(stopped)


def test_no_cookie_without_tokens(make_client):
    for config in ({}, {**GATEWAY, "GATEWAY_AUTH": "none"}):
        client = make_client(**config)
        answer = client.post(
            "/stream", json=START, **as_user("alice", base_url=f"https://{DOMAIN}")
        )
        assert answer.headers.getlist("Set-Cookie") == []


# Clients counted through the gateway


@pytest.fixture
def sessions(backend):
    return service_for(backend, gateway=GatewayRules(domain=DOMAIN, secret=SECRET))


def arrive(ledger, sid: str, count: int, now, replica: str = "aaaaaaaaaaaa") -> None:
    """A gateway replica records `count` clients of `sid` at `now`, as it does when one
    arrives or leaves, and to renew its record."""
    name = presence.record_name(sid, replica)
    held = ledger.get(name)
    if held is None:
        ledger.create(name, presence.data(count, now))
    else:
        ledger.replace(held, presence.data(count, now))


def test_clients_through_the_gateway_drive_connected_and_the_idle_clock(sessions, backend, clock):
    sid = sessions.start("usd-viewer", "default", username="alice").id
    backend.connect(sid)  # straight to the session's port: not through the gateway
    assert sessions.get(sid).connected is False
    arrive(backend.ledger, sid, 1, clock())
    seen = sessions.get(sid)
    assert (seen.connected, seen.last_connected_time) == (True, clock())
    arrive(backend.ledger, sid, 2, clock(), replica="bbbbbbbbbbbb")  # replicas add up
    clock.advance(20)
    arrive(backend.ledger, sid, 0, clock())
    arrive(backend.ledger, sid, 0, clock(), replica="bbbbbbbbbbbb")
    left = clock()
    seen = sessions.get(sid)
    assert (seen.connected, seen.last_connected_time) == (False, left)
    clock.advance(299)
    arrive(backend.ledger, sid, 0, clock())  # a live gateway renews what it holds
    sessions.reap()
    assert sessions.get(sid).state is SessionState.READY
    clock.advance(2)
    sessions.reap()
    ended = sessions.get(sid)
    assert (ended.state, ended.reason) == (SessionState.ENDED, Reason.IDLE_TIMEOUT)
    assert ended.last_connected_time == left


def test_nobody_through_the_gateway_ends_a_session_at_the_connect_timeout(sessions, backend, clock):
    sid = sessions.start("usd-viewer", "default", username="alice").id
    backend.connect(sid)
    clock.advance(301)
    sessions.reap()
    assert sessions.get(sid).reason is Reason.CONNECT_TIMEOUT


def test_a_dead_replicas_clients_expire_and_the_reaper_deletes_its_records(
    sessions, backend, clock
):
    sid = sessions.start("usd-viewer", "default", username="alice").id
    arrive(backend.ledger, sid, 2, clock(), replica="deaddeaddead")
    assert sessions.get(sid).connected is True
    # The replica dies: its record is never renewed.
    clock.advance(presence.TTL.total_seconds() + 1)
    assert sessions.get(sid).connected is False
    removed = sessions.reap_pass()
    assert removed == {
        presence.record_name(sid, "deaddeaddead"): "its gateway replica stopped renewing it"
    }
    assert backend.ledger.list(presence.PREFIX) == []
    clock.advance(300)
    sessions.reap()
    assert sessions.get(sid).reason is Reason.IDLE_TIMEOUT


class BrokenLedger(MemoryLedger):
    """A ledger whose engine stops answering lists of the clients connected (the sessions'
    own records, and the whole ledger's list the clean-up reads, still read)."""

    broken = False

    def list(self, prefix: str = ""):
        if self.broken and prefix and presence.PREFIX.startswith(prefix):
            raise BackendUnavailable("the engine does not answer")
        return super().list(prefix)


def test_counts_that_cannot_be_read_stop_no_clock(sessions, backend, clock):
    backend.ledger = BrokenLedger(now=clock)
    sid = sessions.start("usd-viewer", "default", username="alice").id
    backend.ledger.broken = True
    clock.advance(301)
    sessions.reap_pass(tend_pools=False)
    seen = sessions.get(sid)
    assert (seen.state, seen.connected) == (SessionState.READY, None)


def test_one_ledger_list_per_request_and_none_while_a_session_starts(backend, clock):
    backend.ledger = CountingLedger()
    sessions = service_for(backend, gateway=GatewayRules(domain=DOMAIN, secret=SECRET))
    backend.ready_after = 10
    sid = sessions.start("usd-viewer", "default", username="alice").id
    calls = backend.ledger.others
    sessions.get(sid)
    assert backend.ledger.others == calls  # nothing counts clients of a starting session
    sessions.list()
    assert backend.ledger.others == calls + 1  # the line of queued starts, read once
    calls = backend.ledger.others
    clock.advance(11)
    sessions.get(sid)
    assert backend.ledger.others == calls + 1
    sessions.start("usd-viewer", "default", username="alice")
    clock.advance(11)
    sessions.list()
    assert backend.ledger.others == calls + 3  # the clients, and the line
    # Without the gateway, no client is counted: a get reads nothing, a list and a pass
    # read the line alone (and a process's first pass the idempotency keys).
    plain = service_for(backend)
    plain.get(sid)
    assert backend.ledger.others == calls + 3
    plain.list()
    assert backend.ledger.others == calls + 4
    plain.reap_pass(tend_pools=False)
    assert backend.ledger.others == calls + 6
    plain.reap_pass(tend_pools=False)
    assert backend.ledger.others == calls + 7
