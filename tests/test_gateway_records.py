"""What the API and the gateway share (stream tokens, their secret, client counts), and how a
request names its session."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ovas.errors import ConfigurationError
from ovas.gateway import presence, tokens
from ovas.ledger import MemoryLedger
from ovas.testing import FakeBackend

SID = "0c5e7a9e-0a55-4a70-9c39-8a1d5d3b7f10"
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def test_a_token_names_its_session_and_user_and_only_its_secret_reads_it():
    token = tokens.issue("s3cret", SID, "alice@example.com")
    assert tokens.read("s3cret", token) == (SID, "alice@example.com")
    assert tokens.read("another", token) is None
    assert tokens.read("s3cret", token[:-2] + "xx") is None
    for junk in ("", "abc", "a.b.c", "Authorization-Bearer.x"):
        assert tokens.read("s3cret", junk) is None
    # It fits a WebSocket subprotocol element: RFC 7230 token characters only.
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


def test_without_a_setting_every_process_on_one_engine_shares_one_made_secret(caplog):
    ledger = MemoryLedger()
    first = tokens.gateway_secret({}, ledger)
    second = tokens.gateway_secret({"GATEWAY_SECRET": ""}, ledger)
    assert first == second and len(first) >= 40
    assert caplog.text.count("OVAS_GATEWAY_SECRET is not set") == 1
    assert tokens.gateway_secret({"GATEWAY_SECRET": "mine"}, ledger) == "mine"


def test_counts_add_up_over_replicas_and_expire_with_a_dead_one():
    ledger = MemoryLedger()
    ledger.create(presence.record_name(SID, "aaaaaaaaaaaa"), presence.data(2, NOW))
    ledger.create(presence.record_name(SID, "bbbbbbbbbbbb"), presence.data(1, NOW))
    other = "1d2e3f40-0a55-4a70-9c39-8a1d5d3b7f10"
    ledger.create(presence.record_name(other, "aaaaaaaaaaaa"), presence.data(0, NOW))
    assert presence.read(ledger, NOW + timedelta(seconds=10)) == {SID: 3, other: 0}
    # Replica b dies: its record is not renewed and counts for nothing once expired.
    renewed = ledger.get(presence.record_name(SID, "aaaaaaaaaaaa"))
    later = NOW + presence.TTL + timedelta(seconds=1)
    ledger.replace(renewed, presence.data(2, later - timedelta(seconds=5)))
    assert presence.read(ledger, later) == {SID: 2}
    gone = presence.expired(ledger.list(presence.PREFIX), later)
    assert sorted(e.name for e in gone) == sorted(
        [presence.record_name(SID, "bbbbbbbbbbbb"), presence.record_name(other, "aaaaaaaaaaaa")]
    )


def test_a_count_record_of_a_newer_format_is_skipped_and_left():
    ledger = MemoryLedger()
    name = presence.record_name(SID, "cccccccccccc")
    ledger.create(name, {"kind": "clients", "format": "2", "count": "5"})
    assert presence.read(ledger, NOW) == {}
    assert presence.expired(ledger.list(presence.PREFIX), NOW) == []


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("GATEWAY_DOMAIN", "not a domain"),
        ("GATEWAY_DOMAIN", "localhost"),
        ("GATEWAY_AUTH", "maybe"),
        ("GATEWAY_PUBLIC_PORT", "70000"),
        ("GATEWAY_MAX_CLIENTS", "0"),
        ("GATEWAY_TLS_CERT", "/etc/cert.pem"),
    ],
)
def test_a_bad_gateway_setting_stops_startup_naming_it(setting, value):
    from ovas import create_app

    with pytest.raises(ConfigurationError, match=f"OVAS_{setting}"):
        create_app({"TESTING": True, setting: value}, backend=FakeBackend())


@pytest.mark.parametrize(
    ("host", "path", "expected"),
    [
        (f"{SID}.streams.test", "/sign_in?x=1", (SID, "/sign_in?x=1")),
        (f"{SID.upper()}.Streams.Test:8443", "/", (SID, "/")),
        (f"{SID}.streams.test.", "/a", (SID, "/a")),  # a fully qualified name
        ("127.0.0.1:8443", f"/sessions/{SID}/sign_in?x=1", (SID, "/sign_in?x=1")),
        ("[::1]:8443", f"/sessions/{SID}?x=1", (SID, "/?x=1")),
        ("127.0.0.1", f"/sessions/{SID}", (SID, "/")),
        (f"{SID}.other.test", "/sign_in", None),  # another domain
        (f"x.{SID}.streams.test", "/sign_in", None),
        ("streams.test", "/metrics", None),
        ("127.0.0.1", f"/sessions/{SID}x/sign_in", None),
        ("127.0.0.1", "/sessions/0c5e7a9e-0a55-1a70-9c39-8a1d5d3b7f10/", None),  # not a UUID4
    ],
)
def test_a_request_names_its_session_by_host_or_by_path(host, path, expected):
    from ovas.gateway.routing import session_of

    assert session_of(host, path, "streams.test") == expected


def test_credentials_are_taken_out_of_what_goes_upstream():
    from multidict import CIMultiDict

    from ovas.gateway.routing import take_credentials

    headers = CIMultiDict(
        {
            "Sec-WebSocket-Protocol": f"{SID}, Authorization-Bearer.tok1",
            "authorization": "Bearer tok3",
            "Cookie": f"a=1; {tokens.cookie_name(SID)}=tok4; b=2",
            "Origin": "https://viewer.example.com",
            "Sec-WebSocket-Extensions": "permessage-deflate",
        }
    )
    offer = take_credentials(headers, "/sign_in?peer_id=p&access_token=tok2&v=2", SID)
    assert offer.credentials == ["tok1", "tok2", "tok3"]
    assert offer.cookie == "tok4"  # counted only from an allowed origin
    assert offer.protocols == [SID]
    assert offer.path == "/sign_in?peer_id=p&v=2"
    assert offer.headers == {"Cookie": "a=1; b=2", "Origin": "https://viewer.example.com"}
    basic = take_credentials(CIMultiDict({"Authorization": "Basic eDp5"}), "/?access_token=", SID)
    assert (basic.credentials, basic.path) == ([], "/")
    assert basic.headers == {}  # no Authorization of any scheme goes upstream
