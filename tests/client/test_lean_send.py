"""The lean send path (httpcore without httpx's models) against the emulator over real sockets.

Everything above the send must behave as on httpx's path: re-login, retries, error classes,
cancel; and the path must only be taken where it sends what httpx would.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from transfer_helpers import connect, write_study

from xnat_flows.client.client import XnatClient
from xnat_flows.client.credentials import Credentials
from xnat_flows.client.errors import CancelledError, XnatConnectionError
from xnat_flows.client.retry import RetryPolicy
from xnat_flows.testing import XnatEmulator
from xnat_flows.testing.pytest_plugin import wait_until
from xnat_flows.transfer import UploadTarget, scan_directory
from xnat_flows.transfer.scan import read_exactly
from xnat_flows.transfer.upload import import_answer_uris, upload_gradual

IMPORT = "/data/services/import"


@pytest.fixture
def lean_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths sent through ``XnatClient._send_lean``, in order."""
    calls: list[str] = []
    original = XnatClient._send_lean

    def counting(self: XnatClient, pool: Any, method: str, path: str, *args: Any) -> httpx.Response:
        calls.append(path)
        return original(self, pool, method, path, *args)

    monkeypatch.setattr(XnatClient, "_send_lean", counting)
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
            client._send_lean(client._lean, "GET", "/xapi/users/username", None, None, None, None, None)


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


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "https_proxy", "ALL_PROXY"])
def test_a_proxy_in_the_environment_keeps_uploads_on_httpx(
    xnat_emulator: XnatEmulator, tmp_path, lean_calls, monkeypatch, variable
):
    monkeypatch.setenv(variable, "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # so that either path reaches the emulator
    root = tmp_path / "export"
    write_study(root, series=1, instances=2)
    with connect(xnat_emulator, tmp_path) as client:
        assert client._lean is None
        result = gradual_upload(client, root, "PROXIED")
    assert result.sent_count == 2 and not result.failures
    assert lean_calls == []


def test_the_lean_pool_is_sized_with_the_httpx_pool(xnat_emulator: XnatEmulator, tmp_path) -> None:
    with connect(xnat_emulator, tmp_path) as client:
        first = client._lean
        client.reserve_connections(30)
        assert client._lean is not first and client._lean is not None
        assert client._lean._max_connections == client._http._transport._pool._max_connections == 31
        assert client._lean._ssl_context is client._http._transport._pool._ssl_context
