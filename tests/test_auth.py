"""Authentication modes and roles, by real HTTP requests."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import jwt
import pytest
import requests
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask, jsonify

from ovas import create_app
from ovas.auth import hash_key
from ovas.errors import ConfigurationError
from ovas.testing import FakeBackend

START = {"id": "usd-viewer", "profile": "default"}
ISSUER_PATH = "/realms/ovas"


class Issuer:
    """An OIDC issuer served over HTTP by the test: discovery document, JWKS, signing."""

    def __init__(self, serve):
        self.keys = {"k1": rsa.generate_private_key(public_exponent=65537, key_size=2048)}
        self.jwks_fetches = 0
        web = Flask("issuer")

        @web.get(f"{ISSUER_PATH}/.well-known/openid-configuration")
        def discovery():
            return jsonify(issuer=self.url, jwks_uri=f"{self.url}/certs")

        @web.get(f"{ISSUER_PATH}/certs")
        def certs():
            self.jwks_fetches += 1
            found = []
            for kid, key in self.keys.items():
                jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
                found.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
            return jsonify(keys=found)

        self.server = serve(web)
        self.url = self.server.url + ISSUER_PATH

    def token(self, user="alice", roles=("streamer",), kid="k1", **claims):
        now = int(time.time())
        body = {
            "iss": self.url,
            "aud": "ovas",
            "sub": f"id-{user}",
            "preferred_username": user,
            "iat": now,
            "exp": now + 300,
            "realm_access": {"roles": list(roles)},
            **claims,
        }
        return jwt.encode(body, self.keys[kid], algorithm="RS256", headers={"kid": kid})


@pytest.fixture
def issuer(serve):
    return Issuer(serve)


def jwt_config(issuer, **settings):
    return {
        "TESTING": True,
        "AUTH": "jwt",
        "JWT_ISSUER": issuer.url,
        "JWT_AUDIENCE": "ovas",
        "JWT_ROLES_CLAIM": "realm_access.roles",
        **settings,
    }


@pytest.fixture
def jwt_server(serve, issuer):
    return serve(create_app(jwt_config(issuer), backend=FakeBackend()))


def call(server, method, path, token=None, **kw):
    headers = kw.pop("headers", {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return requests.request(method, server.url + path, headers=headers, timeout=10, **kw)


def test_jwt_roles_decide_what_a_caller_may_do(jwt_server, issuer):
    viewer = issuer.token("val", roles=["viewer"])
    streamer = issuer.token("sam", roles=["streamer"])
    assert call(jwt_server, "GET", "/cfg/apps", viewer).status_code == 200
    refused = call(jwt_server, "POST", "/streaming/stream", viewer, json=START)
    assert refused.status_code == 403
    assert "streamer" in refused.json()["detail"]
    started = call(jwt_server, "POST", "/streaming/stream", streamer, json=START)
    assert started.status_code in (200, 202)
    assert started.json()["username"] == "sam"
    # Editing needs admin, whatever the editing switch says.
    assert call(jwt_server, "POST", "/cfg/apps", streamer, json={"id": "x"}).status_code == 403


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"aud": "someone-else"}, "not meant for this service"),
        ({"iss": "http://127.0.0.1:1/evil"}, "untrusted issuer"),
    ],
)
def test_bad_tokens_are_401_with_www_authenticate(jwt_server, issuer, claims, message):
    answer = call(jwt_server, "GET", "/streaming/stream", issuer.token(**claims))
    assert answer.status_code == 401
    assert message in answer.json()["detail"]
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")


def test_missing_forged_or_foreign_tokens_are_401(jwt_server, issuer):
    assert call(jwt_server, "GET", "/cfg/apps").status_code == 401
    assert call(jwt_server, "GET", "/cfg/apps", "not.a.token").status_code == 401
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(
        {"iss": issuer.url, "aud": "ovas", "exp": int(time.time()) + 60, "sub": "x"},
        stranger,
        algorithm="RS256",
        headers={"kid": "k1"},
    )
    assert call(jwt_server, "GET", "/cfg/apps", forged).status_code == 401
    unsigned = jwt.encode({"iss": issuer.url, "aud": "ovas", "sub": "x"}, None, algorithm="none")
    assert call(jwt_server, "GET", "/cfg/apps", unsigned).status_code == 401


def test_keys_are_cached_and_refreshed_on_rotation(serve, issuer):
    server = serve(create_app(jwt_config(issuer, JWT_REFRESH_COOLDOWN=0), backend=FakeBackend()))
    for _ in range(3):
        assert call(server, "GET", "/cfg/apps", issuer.token()).status_code == 200
    assert issuer.jwks_fetches == 1
    issuer.keys["k2"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert call(server, "GET", "/cfg/apps", issuer.token(kid="k2")).status_code == 200
    assert issuer.jwks_fetches == 2


def test_unknown_key_ids_cannot_make_ovas_hammer_the_issuer(jwt_server, issuer):
    assert call(jwt_server, "GET", "/cfg/apps", issuer.token()).status_code == 200
    issuer.keys["k2"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    # Within the refresh cooldown (30 s by default) after a fetch, no unknown key id
    # fetches the JWKS again: a flood of tokens naming made-up keys costs the issuer nothing.
    tokens = [issuer.token(kid="k2")]
    for kid in ("nope-1", "nope-2", "nope-3"):
        body = {"iss": issuer.url, "aud": "ovas", "exp": int(time.time()) + 60, "sub": "x"}
        tokens.append(jwt.encode(body, issuer.keys["k2"], algorithm="RS256", headers={"kid": kid}))
    for token in tokens:
        assert call(jwt_server, "GET", "/cfg/apps", token).status_code == 401
    assert issuer.jwks_fetches == 1


def test_public_endpoints_need_no_credentials(jwt_server):
    for path in ("/health", "/ready", "/streaming/openapi.json", "/applications/docs"):
        assert call(jwt_server, "GET", path).status_code == 200, path
    preflight = call(
        jwt_server,
        "OPTIONS",
        "/streaming/stream",
        headers={"Origin": "http://x.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 200


def header_server(serve, **config):
    base = {"TESTING": True, "AUTH": "header", **config}
    return serve(create_app(base, backend=FakeBackend()))


def test_gateway_headers_from_a_trusted_proxy(serve):
    server = header_server(serve)
    headers = {"X-Forwarded-User": "gina", "X-Forwarded-Roles": "streamer"}
    started = call(server, "POST", "/streaming/stream", headers=headers, json=START)
    assert started.status_code in (200, 202)
    assert started.json()["username"] == "gina"
    assert call(server, "GET", "/streaming/stream").status_code == 401


def test_forged_headers_from_an_untrusted_address_are_refused(serve):
    server = header_server(serve, AUTH_TRUSTED_PROXIES="10.0.0.0/8")
    headers = {"X-Forwarded-User": "admin", "X-Forwarded-Roles": "admin"}
    answer = call(server, "GET", "/streaming/stream", headers=headers)
    assert answer.status_code == 401
    assert "trusted proxies" in answer.json()["detail"]


def test_shared_secret_is_required_when_set(serve):
    server = header_server(serve, AUTH_PROXY_SECRET="s3cret")
    user = {"X-Forwarded-User": "gina", "X-Forwarded-Roles": "viewer"}
    assert call(server, "GET", "/cfg/apps", headers=user).status_code == 401
    wrong = {**user, "X-Ovas-Proxy-Secret": "guess"}
    assert call(server, "GET", "/cfg/apps", headers=wrong).status_code == 401
    right = {**user, "X-Ovas-Proxy-Secret": "s3cret"}
    assert call(server, "GET", "/cfg/apps", headers=right).status_code == 200


@pytest.fixture
def keys_file(tmp_path):
    path = tmp_path / "keys.yaml"
    entries = [
        {"sha256": hash_key("key-alice"), "user": "alice", "roles": ["streamer"]},
        {"sha256": hash_key("key-bob"), "user": "bob", "roles": ["streamer"]},
        {"sha256": hash_key("key-root"), "user": "root", "roles": ["admin"]},
        {"sha256": hash_key("key-val"), "user": "val", "roles": ["viewer"]},
    ]
    path.write_text(yaml.safe_dump(entries))
    return path


@pytest.fixture
def key_server(serve, keys_file):
    config = {"TESTING": True, "AUTH": "apikey", "APIKEYS_FILE": str(keys_file)}
    return serve(create_app(config, backend=FakeBackend()))


def test_api_keys_by_bearer_or_header_and_revocation(key_server, keys_file):
    assert call(key_server, "GET", "/cfg/apps", "key-val").status_code == 200
    by_header = call(key_server, "GET", "/cfg/apps", headers={"X-API-Key": "key-val"})
    assert by_header.status_code == 200
    wrong = call(key_server, "GET", "/cfg/apps", "key-nobody")
    assert wrong.status_code == 401
    assert "WWW-Authenticate" in wrong.headers
    assert call(key_server, "POST", "/streaming/stream", "key-val", json=START).status_code == 403
    keys_file.write_text(yaml.safe_dump([]))
    assert call(key_server, "GET", "/cfg/apps", "key-val").status_code == 401


def test_ownership_across_two_users(key_server):
    started = call(key_server, "POST", "/streaming/stream", "key-alice", json=START).json()
    call(key_server, "POST", "/streaming/stream", "key-bob", json=START)
    sid = started["id"]
    assert call(key_server, "GET", f"/streaming/stream/{sid}", "key-alice").status_code == 200
    theirs = call(key_server, "GET", f"/streaming/stream/{sid}", "key-bob")
    missing = call(
        key_server, "GET", "/streaming/stream/00000000-0000-4000-8000-000000000000", "key-bob"
    )
    assert (theirs.status_code, theirs.json()["detail"].replace(sid, "X")) == (
        missing.status_code,
        missing.json()["detail"].replace("00000000-0000-4000-8000-000000000000", "X"),
    )
    bob_list = call(key_server, "GET", "/streaming/stream", "key-bob").json()["items"]
    assert {s["username"] for s in bob_list} == {"bob"}
    spying = call(key_server, "GET", "/streaming/stream?username=alice", "key-bob").json()
    assert spying["items"] == []
    assert call(key_server, "DELETE", f"/streaming/stream/{sid}", "key-bob").status_code == 404
    assert call(key_server, "DELETE", "/stream", "key-bob", json={"id": sid}).status_code == 404

    every = call(key_server, "GET", "/streaming/stream?sort-by=username&order=asc", "key-root")
    assert [s["username"] for s in every.json()["items"]] == ["alice", "bob"]
    only = call(key_server, "GET", "/streaming/stream?username=bob", "key-root").json()["items"]
    assert [s["username"] for s in only] == ["bob"]
    assert call(key_server, "DELETE", f"/streaming/stream/{sid}", "key-root").status_code == 204


def test_apikey_new_makes_a_key_that_authenticates(serve, tmp_path):
    import subprocess
    import sys

    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "flask",
            "--app",
            "ovas",
            "ovas",
            "apikey",
            "new",
            "--user",
            "carol",
            "--role",
            "viewer",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    key = made.stderr.split("key: ", 1)[1].split()[0]
    assert key not in made.stdout  # only the hash goes to the file
    path = tmp_path / "keys.yaml"
    path.write_text(made.stdout)
    config = {"TESTING": True, "AUTH": "apikey", "APIKEYS_FILE": str(path)}
    server = serve(create_app(config, backend=FakeBackend()))
    answer = call(server, "GET", "/streaming/stream", key)
    assert answer.status_code == 200
    assert call(server, "POST", "/streaming/stream", key, json=START).status_code == 403


@pytest.mark.parametrize(
    ("roles", "status"), [("guest", 403), ("", 403), ("Viewer", 403), ("Streamer", 202)]
)
def test_gateway_roles_ovas_does_not_know_grant_nothing(serve, roles, status):
    server = header_server(serve)
    headers = {"X-Forwarded-User": "eve", "X-Forwarded-Roles": roles}
    answer = call(server, "POST", "/streaming/stream", headers=headers, json=START)
    assert answer.status_code in ((200, 202) if status == 202 else (status,))


def test_an_unreachable_issuer_without_a_jwks_url_is_401_not_500():
    config = {
        "TESTING": True,
        "AUTH": "jwt",
        "JWT_ISSUER": "http://127.0.0.1:1/realms/nowhere",
        "JWT_AUDIENCE": "ovas",
    }
    client = create_app(config, backend=FakeBackend()).test_client()
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(
        {"iss": config["JWT_ISSUER"], "aud": "ovas", "exp": int(time.time()) + 60, "sub": "x"},
        stranger,
        algorithm="RS256",
        headers={"kid": "k1"},
    )
    answer = client.get("/cfg/apps", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 401
    assert answer.json["detail"] == "The issuer's keys cannot be fetched right now"
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")


GOOD_ENTRY = {"sha256": hash_key("good"), "user": "ann", "roles": ["viewer"]}


def entry_for(user) -> dict:
    """What `ovas apikey new --user <user>` printed before it checked the name."""
    return {"sha256": hash_key("new"), "user": user, "roles": ["streamer"]}


def appended(entry) -> Callable[[Path], None]:
    return lambda keys: keys.write_text(keys.read_text() + yaml.safe_dump([entry]))


def symlink_loop(keys: Path) -> None:
    keys.unlink()
    keys.symlink_to(keys.with_name("loop.yaml"))
    keys.with_name("loop.yaml").unlink(missing_ok=True)
    keys.with_name("loop.yaml").symlink_to(keys)


# How a keys file goes bad, and what /ready then says of it.
GOING_BAD = {
    "deleted": (Path.unlink, "does not exist"),
    "a YAML error": (lambda keys: keys.write_text("- {sha256: [\n"), "cannot be parsed"),
    "a blank user": (appended(entry_for("")), "entry 2: user is empty"),
    "a user of spaces": (appended(entry_for("   ")), "entry 2: user is empty"),
    "a newline in a user": (appended(entry_for("a\nb")), "entry 2: user holds a control"),
    "an escape in a user": (appended(entry_for("a\x1bb")), "entry 2: user holds a control"),
    "a user too long": (appended(entry_for("u" * 254)), "entry 2: user is longer than 253"),
    "a user not a string": (appended(entry_for(1.10)), "entry 2: user is not a string"),
    "an entry nested 1000 deep": (
        lambda keys: keys.write_text(keys.read_text() + "- " + "[" * 1000 + "]" * 1000 + "\n"),
        "nests too deep",
    ),
    "a symlink loop": (symlink_loop, "cannot be read: Too many levels of symbolic links"),
}


@pytest.mark.parametrize("going_bad", GOING_BAD)
def test_a_keys_file_that_goes_bad_keeps_the_last_good_keys(tmp_path, going_bad):
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump([GOOD_ENTRY]))
    config = {"TESTING": True, "AUTH": "apikey", "APIKEYS_FILE": str(keys)}
    client = create_app(config, backend=FakeBackend()).test_client()
    assert client.get("/cfg/apps", headers={"X-API-Key": "good"}).status_code == 200
    spoil, reason = GOING_BAD[going_bad]
    spoil(keys)
    assert client.get("/cfg/apps", headers={"X-API-Key": "good"}).status_code == 200
    assert client.get("/cfg/apps", headers={"X-API-Key": "new"}).status_code == 401
    refused = client.get("/cfg/apps", headers={"X-API-Key": "bad"})
    assert refused.status_code == 401
    assert str(tmp_path) not in refused.get_data(as_text=True)
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert reason in ready.json["checks"]["auth"]
    assert "the last good keys stay in use" in ready.json["checks"]["auth"]
    assert str(tmp_path) not in ready.get_data(as_text=True)

    # Made whole again, it is used again; made bad before ovas starts, startup says why.
    keys.unlink(missing_ok=True)
    keys.write_text(yaml.safe_dump([GOOD_ENTRY, entry_for("val")]))
    assert client.get("/cfg/apps", headers={"X-API-Key": "new"}).status_code == 200
    assert "auth" not in client.get("/ready").json["checks"]
    keys.write_text(yaml.safe_dump([GOOD_ENTRY]))
    spoil(keys)
    with pytest.raises(ConfigurationError, match=f"OVAS_APIKEYS_FILE {keys} .*{reason}"):
        create_app(config, backend=FakeBackend())


@pytest.mark.parametrize(
    ("user", "why"),
    [
        ("", "'' is empty"),
        ("  ", "'  ' is empty"),
        ("a\nb", "holds a control character or a line break"),
        ("a\x1bb", "holds a control character or a line break"),
        ("u" * 254, "is longer than 253 characters"),
    ],
)
def test_apikey_new_refuses_a_user_the_server_would_refuse(user, why):
    from click.testing import CliRunner

    from ovas.cli import ovas_cli

    made = CliRunner().invoke(ovas_cli, ["apikey", "new", "--user", user])
    assert made.exit_code != 0
    assert "Invalid value for '--user'" in made.output and why in made.output
    assert "sha256" not in made.output and "key:" not in made.output
