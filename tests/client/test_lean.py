"""The lean send path (http.client connections behind httpx's transport interface) against the emulator over real sockets.

Everything above the send must behave as on httpx's path: re-login, retries, error classes,
cancel; and the path must only be taken where it sends what httpx would.
"""

from __future__ import annotations

import http.client
import http.server
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from transfer_helpers import connect, write_study

from xnat_flows.client.client import XnatClient, proxy_for
from xnat_flows.client.credentials import Credentials
from xnat_flows.client.errors import CancelledError, XnatConnectionError
from xnat_flows.client.lean import LeanTransport
from xnat_flows.client.retry import RetryPolicy
from xnat_flows.testing import XnatEmulator
from xnat_flows.testing.pytest_plugin import wait_until
from xnat_flows.transfer import UploadTarget, scan_directory
from xnat_flows.transfer.scan import read_exactly
from xnat_flows.transfer.upload import import_answer_uris, upload_gradual

IMPORT = "/data/services/import"


@pytest.fixture
def lean_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths sent through ``LeanTransport`` (the lean pool), in order."""
    calls: list[str] = []
    original = LeanTransport.handle_request

    def counting(self: LeanTransport, request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return original(self, request)

    monkeypatch.setattr(LeanTransport, "handle_request", counting)
    return calls


@pytest.fixture
def instance(tmp_path: Path) -> Any:
    root = tmp_path / "export"
    write_study(root, series=1, instances=1)
    (item,) = scan_directory(root).files
    return item


def post_gradual(client: XnatClient, item: Any, label: str, **options: Any) -> httpx.Response:
    return client.request(
        "POST",
        IMPORT,
        params=UploadTarget("TEST", "S", label).gradual_params(),
        content=lambda: read_exactly(item),
        headers={"Content-Type": "application/dicom", "Content-Length": str(item.size)},
        lean=True,
        **options,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_lean_post_lands_and_answers_an_httpx_response(xnat_emulator: XnatEmulator, tmp_path, instance, lean_calls):
    with connect(xnat_emulator, tmp_path) as client:
        response = post_gradual(client, instance, "LEAN")
        uris = import_answer_uris(client, response)
        assert response.request.method == "POST" and response.request.url.path == IMPORT
        assert response.request.url.params["import-handler"] == "gradual-DICOM"
    assert lean_calls == [IMPORT]
    assert len(uris) == 1 and "LEAN" in uris[0]


def test_expired_session_on_the_lean_path_logs_in_once_and_resends(
    xnat_emulator: XnatEmulator, tmp_path, instance, lean_calls
):
    with connect(xnat_emulator, tmp_path) as client:
        client.whoami()
        assert client.login_count == 1
        rule = xnat_emulator.faults.add(path=IMPORT, method="POST", evict_token=True)
        response = post_gradual(client, instance, "RELOGIN")
        assert response.status_code == 200 and rule.fired == 1
        assert client.login_count == 2
    assert lean_calls == [IMPORT, IMPORT]


def test_a_server_error_on_the_lean_path_is_retried(xnat_emulator: XnatEmulator, tmp_path, instance, lean_calls):
    rule = xnat_emulator.faults.add(path=IMPORT, method="POST", status=503, message="busy")
    with connect(xnat_emulator, tmp_path) as client:
        response = post_gradual(client, instance, "RETRIED")
    assert response.status_code == 200 and rule.fired == 1
    assert lean_calls == [IMPORT, IMPORT]


def test_a_refused_connection_on_the_lean_path_is_unreachable_and_not_retried(instance, lean_calls):
    # A token: no login, so the refused connection is met by the lean send itself.
    creds = Credentials(url=f"http://127.0.0.1:{free_port()}", username="u", token=SecretStr("TOKEN0123456789"))
    with (
        XnatClient(creds, token_cache=None, retry=RetryPolicy(sleep=lambda _: None)) as client,
        pytest.raises(XnatConnectionError, match="ConnectError") as info,
    ):
        post_gradual(client, instance, "REFUSED")
    assert not info.value.retryable and not info.value.timed_out
    assert lean_calls == [IMPORT]


def test_no_answer_within_the_read_timeout_is_timed_out(xnat_emulator: XnatEmulator, tmp_path, instance, lean_calls):
    xnat_emulator.faults.add(path=IMPORT, method="POST", delay_ms=3000)
    with connect(xnat_emulator, tmp_path) as client:
        started = time.monotonic()
        with pytest.raises(XnatConnectionError, match="ReadTimeout") as info:
            post_gradual(client, instance, "SLOW", timeout=httpx.Timeout(10.0, read=0.3), retry=False)
    assert info.value.timed_out and time.monotonic() - started < 2.5
    assert lean_calls == [IMPORT]


def test_cancel_stops_a_lean_request_blocked_on_the_server(xnat_emulator: XnatEmulator, tmp_path, lean_calls):
    # The server takes no byte for 8 s; 16 MB is more than the socket buffers hold, so the sender blocks.
    xnat_emulator.faults.add(path=IMPORT, method="POST", times=None, delay_ms=8000)
    body = b"\0" * (16 << 20)
    outcome: list[BaseException | None] = []
    with connect(xnat_emulator, tmp_path) as client:
        client.whoami()

        def run() -> None:
            try:
                client.request("POST", IMPORT, content=body, headers={"Content-Type": "application/dicom"}, lean=True)
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                outcome.append(exc)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        wait_until(lambda: xnat_emulator.stats()["active_imports"], 10, interval=0.02, what="the import to start")
        wait_until(lambda: lean_calls, 5, what="the lean send")
        cancelled_at = time.monotonic()
        client.cancel()
        worker.join(timeout=5)
        assert not worker.is_alive(), "the lean request was still running 5 s after cancel()"
        assert time.monotonic() - cancelled_at < 5
        assert len(outcome) == 1 and isinstance(outcome[0], CancelledError)
        # A send that slipped past the cancel check opens no new connection.
        with pytest.raises(XnatConnectionError, match="cancelled"):
            client._sender.send("GET", "/xapi/users/username", lean=True)


def gradual_upload(client: XnatClient, root: Path, label: str) -> Any:
    return upload_gradual(client, scan_directory(root).files, UploadTarget("TEST", "S", label), workers=2)


def test_gradual_uploads_take_the_lean_path_on_a_real_socket(xnat_emulator: XnatEmulator, tmp_path, lean_calls):
    root = tmp_path / "export"
    write_study(root, series=2, instances=3)
    with connect(xnat_emulator, tmp_path) as client:
        result = gradual_upload(client, root, "GRADUAL_LEAN")
    assert result.sent_count == 6 and not result.failures
    assert lean_calls == [IMPORT] * 6


def test_a_mock_transport_sees_every_gradual_request(scripted_client: Callable[..., XnatClient], tmp_path, lean_calls):
    root = tmp_path / "export"
    write_study(root, series=1, instances=3)
    seen: list[str] = []

    def xnat(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        request.read()
        return httpx.Response(200, text="/data/prearchive/projects/TEST/20260101_000000000/MOCK\n")

    client = scripted_client(xnat)
    result = gradual_upload(client, root, "MOCK")
    assert result.sent_count == 3 and seen.count(IMPORT) == 3
    assert lean_calls == []


class _ForwardProxy(http.server.ThreadingHTTPServer):
    """An HTTP forward proxy that reaches every host it is asked for at one local port (so the
    test's made-up host name resolves only through it) and records what it forwarded."""

    daemon_threads = True

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.seen: list[tuple[str, str, str]] = []
        super().__init__(("127.0.0.1", 0), _ProxyHandler)


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ForwardProxy

    def _forward(self) -> None:
        url = urllib.parse.urlsplit(self.path)  # a proxy gets the absolute form
        self.server.seen.append((self.command, url.hostname or "", url.path))
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.target_port, timeout=30)
        skip = {"proxy-connection", "connection", "host", "content-length"}
        headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
        upstream.request(self.command, url.path + (f"?{url.query}" if url.query else ""), body=body, headers=headers)
        answer = upstream.getresponse()
        data = answer.read()
        upstream.close()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _forward

    def log_message(self, *args: Any) -> None:  # quiet
        pass


@pytest.fixture
def no_proxy_in_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy variable from the caller's shell: each test sets the ones it means."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY"])
def test_a_proxy_in_the_environment_carries_every_request_and_keeps_uploads_on_httpx(
    xnat_emulator: XnatEmulator, tmp_path, lean_calls, no_proxy_in_environment, variable
):
    monkeypatch = no_proxy_in_environment
    """The XNAT host here resolves only through the proxy: the upload lands only if every request
    (login, imports) went through it. httpx reads no proxy from the environment when given a
    transport, so the client must find it itself."""
    proxy = _ForwardProxy(xnat_emulator.port)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    monkeypatch.setenv(variable, f"http://127.0.0.1:{proxy.server_port}")
    root = tmp_path / "export"
    write_study(root, series=1, instances=2)
    creds = Credentials(url=f"http://xnat.invalid:{xnat_emulator.port}", username="admin", password=SecretStr("admin"))
    try:
        with XnatClient(creds, token_cache=None) as client:
            assert (
                client.proxy == f"http://127.0.0.1:{proxy.server_port}"
                and client._sender.transport is not None
                and client._sender.transport.lean is None
            )
            result = gradual_upload(client, root, "PROXIED")
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert result.sent_count == 2 and not result.failures
    assert lean_calls == []
    assert {host for _, host, _ in proxy.seen} == {"xnat.invalid"}
    assert [path for _, _, path in proxy.seen].count(IMPORT) == 2


def test_which_urls_a_proxy_in_the_environment_applies_to(no_proxy_in_environment) -> None:
    monkeypatch = no_proxy_in_environment
    assert proxy_for("https://xnat.example.org") is None
    monkeypatch.setenv("https_proxy", "proxy.site:3128")
    assert proxy_for("https://xnat.example.org") == "http://proxy.site:3128"  # scheme added, as curl does
    assert proxy_for("http://xnat.example.org") is None  # no proxy for plain http
    monkeypatch.setenv("ALL_PROXY", "http://all.site:8080")
    assert proxy_for("http://xnat.example.org") == "http://all.site:8080"
    monkeypatch.setenv("NO_PROXY", "example.org,other.site")
    assert proxy_for("https://xnat.example.org") is None  # covered by NO_PROXY
    assert proxy_for("https://xnat.hospital.net") == "http://proxy.site:3128"
    for local in ("http://127.0.0.1:8080", "http://localhost", "http://[::1]:80"):
        assert proxy_for(local) is None  # loopback never goes through a proxy


def test_the_lean_pool_is_sized_with_the_httpx_pool(xnat_emulator: XnatEmulator, tmp_path) -> None:
    with connect(xnat_emulator, tmp_path) as client:
        first = client._sender.transport
        client.reserve_connections(30)
        transport = client._sender.transport
        assert transport is not first and transport is not None and transport.lean is not None
        assert transport.lean.pool.max_connections == transport.http._pool._max_connections == 31
        assert transport.lean.pool.tls is None  # a plain-HTTP origin; an https one gets httpx's TLS context


def test_https_origins_get_the_client_tls_context(tmp_path) -> None:
    creds = Credentials(url="https://xnat.invalid:8443/xnat", username="u", token=SecretStr("TOKEN0123456789"))
    with XnatClient(creds, token_cache=None) as client:
        transport = client._sender.transport
        assert transport is not None and transport.lean is not None
        assert transport.lean.pool.tls is transport.http._pool._ssl_context is not None
        assert (transport.lean.pool.host, transport.lean.pool.port) == ("xnat.invalid", 8443)
        # the URL is the one httpx.Client(base_url=...) builds, under the base URL's path
        for path, params in (
            (IMPORT, {"a": "b", "c": "d e/f"}),
            ("data/projects", None),
            ("/x?format=json", {"y": 1}),
            ("/x?z=1", {}),
            ("/x?z=1", None),
        ):
            with httpx.Client(base_url=creds.url) as reference:
                assert client._sender.build_url(path, params) == reference.build_request("GET", path, params=params).url
        assert client._sender.build_url(IMPORT, {"a": "b"}).raw_path == b"/xnat/data/services/import?a=b"


def test_a_kept_connection_the_server_closed_meanwhile_is_replaced_not_failed(lean_calls) -> None:
    """Servers close idle keep-alive connections on their own timer; the next request must open a
    new connection rather than fail (or, worse, count as unanswered) on the dead one."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[int] = []
    closed: list[int] = []

    def serve() -> None:
        while True:
            try:
                peer, _ = server.accept()
            except OSError:
                return
            accepted.append(1)
            with peer:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += peer.recv(65536)
                head, _, rest = data.partition(b"\r\n\r\n")
                length = int(
                    next(
                        (
                            line.split(b":")[1]
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length")
                        ),
                        b"0",
                    )
                )
                while len(rest) < length:
                    rest += peer.recv(65536)
                # a keep-alive answer, then the server drops the idle connection
                peer.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n")
            closed.append(1)

    threading.Thread(target=serve, daemon=True).start()
    creds = Credentials(
        url=f"http://127.0.0.1:{server.getsockname()[1]}", username="u", token=SecretStr("TOKEN0123456789")
    )
    try:
        with XnatClient(creds, token_cache=None, retry=RetryPolicy(sleep=lambda _: None)) as client:
            for sent in range(1, 4):
                answer = client.request("POST", IMPORT, content=b"x" * 1000, lean=True)
                assert answer.status_code == 200 and answer.text == "ok\n"
                wait_until(lambda sent=sent: len(closed) == sent, 5, what="the server to drop the connection")
            assert client.requests_in_doubt == 0
    finally:
        server.close()
    assert lean_calls == [IMPORT] * 3 and len(accepted) == 3
