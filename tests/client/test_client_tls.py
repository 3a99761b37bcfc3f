"""TLS: verification is on by default and a CA bundle makes a private certificate acceptable."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import SecretStr

from xnat_flows.client.client import XnatClient
from xnat_flows.client.credentials import Credentials
from xnat_flows.client.errors import XnatConnectionError

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class Handler(BaseHTTPRequestHandler):
    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # /data/JSESSION
        self._answer(b"0123456789ABCDEF0123456789ABCDEF")

    def do_GET(self) -> None:  # /xapi/users/username
        self._answer(b"alice")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    cert, key = self_signed(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", cert
    server.shutdown()
    server.server_close()


def test_ca_bundle_is_honoured_and_verification_is_on_by_default(https_server) -> None:
    url, cert = https_server
    trusted = Credentials(url=url, username="alice", password=SecretStr("pw"), verify=str(cert))
    with XnatClient(trusted, token_cache=None) as client:
        assert client.whoami() == "alice"

    default = Credentials(url=url, username="alice", password=SecretStr("pw"))
    with (
        XnatClient(default, token_cache=None) as client,
        pytest.raises(XnatConnectionError, match="CERTIFICATE_VERIFY_FAILED") as info,
    ):
        client.whoami()
    assert not info.value.retryable
    assert "CA bundle" in info.value.hint


def test_the_lean_send_path_verifies_as_httpx_does(https_server) -> None:
    url, cert = https_server
    token = SecretStr("0123456789ABCDEF0123456789ABCDEF")  # no login: the lean send meets TLS first
    trusted = Credentials(url=url, username="alice", token=token, verify=str(cert))
    with XnatClient(trusted, token_cache=None) as client:
        assert client._sender.transport.lean is not None
        assert client.request("POST", "/data/services/import", content=b"x", lean=True).text == token.get_secret_value()

    default = Credentials(url=url, username="alice", token=token)
    with (
        XnatClient(default, token_cache=None) as client,
        pytest.raises(XnatConnectionError, match="CERTIFICATE_VERIFY_FAILED") as info,
    ):
        client.request("POST", "/data/services/import", content=b"x", lean=True)
    assert not info.value.retryable
