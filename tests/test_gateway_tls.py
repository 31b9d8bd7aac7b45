"""The gateway over TLS, with a certificate for `*.<domain>` made by the test's own CA."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ovas import create_app
from ovas.errors import ConfigurationError
from ovas.gateway import tokens
from ovas.gateway.server import Gateway, tls_context
from ovas.testing import FakeBackend
from tests.support.gateway import DOMAIN, PEER_PATH, Echo, client_session, viewer_protocols


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_certificates(folder) -> tuple[str, str, str]:
    """(CA certificate, leaf certificate, leaf key) PEM paths: a CA, and a leaf it signed
    for `*.DOMAIN` and `DOMAIN`."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("ovas test CA"))
        .issuer_name(_name("ovas test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name(f"*.{DOMAIN}"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(f"*.{DOMAIN}"), x509.DNSName(DOMAIN)]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (folder / "ca.pem", folder / "leaf.pem", folder / "leaf.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return tuple(str(p) for p in paths)


@pytest_asyncio.fixture
async def echo():
    echo = await Echo().start()
    yield echo
    await echo.stop()


@pytest.mark.asyncio
async def test_wss_by_session_name_with_a_wildcard_certificate(tmp_path, echo):
    ca, cert, key = make_certificates(tmp_path)
    backend = FakeBackend()
    backend.signaling = ("127.0.0.1", echo.port)
    settings = {
        "TESTING": True,
        "REAP_INTERVAL": 0,
        "GATEWAY_DOMAIN": DOMAIN,
        "GATEWAY_SECRET": "tls-secret",
        "GATEWAY_TLS_CERT": cert,
        "GATEWAY_TLS_KEY": key,
    }
    core = create_app(settings, backend=backend)
    gateway = Gateway(core)
    port = await gateway.start("127.0.0.1", 0, tls_context(cert, key))
    sid = core.extensions["ovas"].sessions.start("usd-viewer", "default", username="alice").id
    token = tokens.issue("tls-secret", sid, "alice")
    trusted = ssl.create_default_context(cafile=ca)
    try:
        async with client_session(trusted) as http:
            url = f"wss://{sid}.{DOMAIN}:{port}{PEER_PATH}"
            async with http.ws_connect(url, protocols=viewer_protocols(sid, token)) as ws:
                assert ws.protocol == sid
                await ws.send_str("over TLS")
                assert await ws.receive_str() == "over TLS"
            assert echo.seen[-1].headers["X-Forwarded-Proto"] == "wss"
        # A client that does not trust the test's CA is refused by TLS, before any route.
        async with client_session() as untrusting:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await untrusting.ws_connect(url, protocols=[sid])
    finally:
        await gateway.stop()


def test_certificate_files_that_cannot_be_used_are_named(tmp_path):
    ca, _, key = make_certificates(tmp_path)
    with pytest.raises(ConfigurationError, match="OVAS_GATEWAY_TLS_CERT"):
        tls_context(str(tmp_path / "missing.pem"), key)
    with pytest.raises(ConfigurationError, match="OVAS_GATEWAY_TLS_KEY"):
        tls_context(ca, key)  # the CA's certificate does not go with the leaf's key
