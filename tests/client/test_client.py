"""XnatClient against scripted transports: auth, the shared re-login, retries, error classes."""

from __future__ import annotations

import functools
import pickle
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from xnat_flows.cli.hints import cli_hint
from xnat_flows.client.client import XnatClient
from xnat_flows.client.credentials import Credentials, TokenCache
from xnat_flows.client.errors import (
    AuthenticationError,
    ConflictError,
    NotFoundError,
    PermanentUploadError,
    PermissionDeniedError,
    TransientError,
    UnsupportedServerError,
    XnatConnectionError,
    XnatError,
)
from xnat_flows.tasks.hints import operator_hint

PASSWORD = "s3cret-Pa55word"
TOKEN = "0123456789ABCDEF0123456789ABCDEF"
IMPORT = "/data/services/import"


class Recorder:
    """A scripted XNAT: ``answers`` maps (method, path) to a list of responses used in order."""

    def __init__(self, answers: dict[tuple[str, str], list[httpx.Response | Exception]] | None = None) -> None:
        self.answers = answers or {}
        self.requests: list[httpx.Request] = []
        self.bodies: list[bytes] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.bodies.append(request.read())
        if request.url.path == "/data/JSESSION" and request.method == "POST":
            return httpx.Response(200, text=TOKEN)
        queue = self.answers.get((request.method, request.url.path))
        if not queue:
            return httpx.Response(200, text="ok")
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def calls(self, path: str) -> int:
        return sum(1 for r in self.requests if r.url.path == path)


@pytest.fixture
def make_client(scripted_client) -> Callable[..., XnatClient]:
    """``scripted_client`` as alice with a password and no token, unless a test says otherwise."""
    return functools.partial(scripted_client, url="https://xnat.test", username="alice", token=None, password=PASSWORD)


def test_logs_in_once_and_sends_the_session_cookie(make_client) -> None:
    xnat = Recorder()
    client = make_client(xnat)
    client.request("GET", "/data/projects")
    client.request("GET", "/data/projects")
    login = xnat.requests[0]
    assert login.method == "POST" and login.url.path == "/data/JSESSION"
    assert login.headers["Authorization"].startswith("Basic ")
    assert [r.headers.get("Cookie") for r in xnat.requests[1:]] == [f"JSESSIONID={TOKEN}"] * 2
    assert "Authorization" not in xnat.requests[1].headers
    assert client.login_count == 1


def test_html_login_page_with_200_is_an_authentication_failure(make_client) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<!DOCTYPE html><html><title>Login</title><body>login</body></html>")

    client = make_client(handler)
    with pytest.raises(AuthenticationError) as info:
        client.request("GET", "/data/projects")
    assert "web page" in str(info.value)
    assert info.value.hint
    assert PASSWORD not in str(info.value) and PASSWORD not in repr(info.value)


def test_bad_password_401_on_login(make_client) -> None:
    client = make_client(lambda r: httpx.Response(401, text="Unauthorized"))
    with pytest.raises(AuthenticationError, match="refused the login for user 'alice'") as info:
        client.login()
    assert info.value.status == 401
    assert PASSWORD not in str(info.value)


def test_no_password_and_no_token_says_how_to_log_in(make_client) -> None:
    client = make_client(Recorder(), password=None)
    with pytest.raises(AuthenticationError) as info:
        client.request("GET", "/data/projects")
    # the fact, and advice in each reader's terms from the layer that speaks to that reader
    assert info.value.reason == "no-password" and info.value.url == "https://xnat.test"
    assert "XNAT_PASS" in cli_hint(info.value) and "--username" in cli_hint(info.value)
    assert "xnat-credentials Block" in operator_hint(info.value)
    assert "XNAT_PASS" not in info.value.hint and "Block" not in info.value.hint


def test_eight_threads_seeing_401_cause_exactly_one_login(make_client) -> None:
    valid = {"token": "OLDTOKEN0000"}
    logins = []
    barrier = threading.Barrier(8, timeout=10)
    lock = threading.Lock()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/data/JSESSION":
            with lock:
                logins.append(1)
                valid["token"] = f"NEWTOKEN{len(logins):04d}"
            time.sleep(0.05)  # a slow login: the other threads must wait, not log in too
            return httpx.Response(200, text=valid["token"])
        cookie = request.headers.get("Cookie", "")
        if cookie == "JSESSIONID=OLDTOKEN0000":
            valid["token"] = "EXPIRED"
            barrier.wait()  # all eight hold the dead token at the same time
            return httpx.Response(401)
        if cookie == f"JSESSIONID={valid['token']}":
            return httpx.Response(200, text="ok")
        return httpx.Response(401)

    client = make_client(handler, token="OLDTOKEN0000")
    results: list[str] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(client.request("GET", "/data/experiments").text)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == ["ok"] * 8
    assert len(logins) == 1
    assert client.login_count == 1


def test_401_after_relogin_is_raised_not_looped(make_client) -> None:
    xnat = Recorder({("GET", "/data/x"): [httpx.Response(401)]})
    client = make_client(xnat, token="OLDTOKEN0000")
    with pytest.raises(AuthenticationError):
        client.request("GET", "/data/x")
    assert xnat.calls("/data/JSESSION") == 1
    assert xnat.calls("/data/x") == 2


def test_streamed_body_is_rebuilt_for_the_resend_after_401(make_client) -> None:
    xnat = Recorder({("POST", IMPORT): [httpx.Response(401), httpx.Response(200, text="/data/prearchive/x\r\n")]})
    client = make_client(xnat, token="OLDTOKEN0000")
    response = client.request("POST", IMPORT, content=lambda: iter([b"abc", b"def"]))
    assert response.text.strip() == "/data/prearchive/x"
    sent = [body for r, body in zip(xnat.requests, xnat.bodies, strict=True) if r.url.path == IMPORT]
    assert sent == [b"abcdef", b"abcdef"]


@pytest.mark.parametrize("status", [500, 502, 504])
def test_server_errors_on_idempotent_requests_are_retried(make_client, retry_sleeps, status) -> None:
    xnat = Recorder(
        {("GET", "/data/x"): [httpx.Response(status), httpx.Response(status), httpx.Response(200, text="fine")]}
    )
    assert make_client(xnat).request("GET", "/data/x").text == "fine"
    assert len(retry_sleeps) == 2
    assert 1.0 <= retry_sleeps[0] <= 2.0 and 2.0 <= retry_sleeps[1] <= 4.0  # jittered exponential backoff


def test_server_error_on_a_plain_post_is_not_resent(make_client, retry_sleeps) -> None:
    xnat = Recorder({("POST", "/data/services/archive"): [httpx.Response(500, text="boom")]})
    with pytest.raises(TransientError):
        make_client(xnat).request("POST", "/data/services/archive")
    assert xnat.calls("/data/services/archive") == 1 and retry_sleeps == []


def test_upload_post_is_resent_on_server_error(make_client) -> None:
    xnat = Recorder({("POST", IMPORT): [httpx.Response(502), httpx.Response(200, text="/data/x\r\n")]})
    assert make_client(xnat).request("POST", IMPORT, content=b"zip").status_code == 200
    assert xnat.calls(IMPORT) == 2


def test_retry_after_is_honoured_and_capped(make_client, retry_sleeps) -> None:
    xnat = Recorder(
        {
            ("POST", "/data/anything"): [
                httpx.Response(429, headers={"Retry-After": "7"}),
                httpx.Response(503, headers={"Retry-After": "100000"}),
                httpx.Response(200),
            ]
        }
    )
    make_client(xnat).request("POST", "/data/anything")  # 429/503: the server did not act, so even POST retries
    assert retry_sleeps == [7.0, 300.0]


def test_retry_after_as_http_date(make_client, retry_sleeps) -> None:
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    xnat = Recorder({("GET", "/x"): [httpx.Response(503, headers={"Retry-After": when}), httpx.Response(200)]})
    make_client(xnat).request("GET", "/x")
    assert 25 <= retry_sleeps[0] <= 31


def test_attempts_are_capped(make_client, retry_sleeps) -> None:
    xnat = Recorder({("GET", "/x"): [httpx.Response(503, text="busy")]})
    with pytest.raises(TransientError) as info:
        make_client(xnat).request("GET", "/x")
    assert xnat.calls("/x") == 6 and len(retry_sleeps) == 5
    assert info.value.status == 503


def test_permanent_import_400_fails_at_once_with_the_server_message(make_client, retry_sleeps) -> None:
    xnat = Recorder({("POST", IMPORT): [httpx.Response(400, text="Unable to identify destination project: NOPE")]})
    with pytest.raises(PermanentUploadError) as info:
        make_client(xnat).request("POST", IMPORT, content=b"x")
    assert xnat.calls(IMPORT) == 1 and retry_sleeps == []
    assert info.value.server_message == "Unable to identify destination project: NOPE"
    assert "NOPE" in str(info.value)


def test_transient_import_400_is_retried(make_client) -> None:
    busy = httpx.Response(400, text="Session processing in progress. Concurrent modification is discouraged.")
    xnat = Recorder({("POST", IMPORT): [busy, busy, httpx.Response(200, text="/data/x")]})
    assert make_client(xnat).request("POST", IMPORT, content=b"x").text == "/data/x"
    assert xnat.calls(IMPORT) == 3


def test_tomcat_html_error_page_is_reduced_to_its_message(make_client) -> None:
    page = "<html><head><title>HTTP Status 404 – Not Found</title></head><body><h1>HTTP Status 404 – Not Found</h1></body></html>"
    xnat = Recorder({("GET", "/data/projects/NOPE"): [httpx.Response(404, text=page)]})
    with pytest.raises(NotFoundError) as info:
        make_client(xnat).request("GET", "/data/projects/NOPE")
    assert info.value.server_message == "HTTP Status 404 – Not Found"


def test_403_is_permission_denied_and_not_retried(make_client, retry_sleeps) -> None:
    xnat = Recorder({("GET", "/x"): [httpx.Response(403)]})
    with pytest.raises(PermissionDeniedError):
        make_client(xnat).request("GET", "/x")
    assert retry_sleeps == []


def test_refused_connection_fails_fast_but_a_dropped_one_is_retried(make_client, retry_sleeps) -> None:
    refused = Recorder({("GET", "/x"): [httpx.ConnectError("Connection refused")]})
    with pytest.raises(XnatConnectionError) as info:
        make_client(refused, token=TOKEN).request("GET", "/x")
    assert not info.value.retryable and refused.calls("/x") == 1

    dropped = Recorder(
        {("GET", "/y"): [httpx.RemoteProtocolError("peer closed connection"), httpx.Response(200, text="ok")]}
    )
    assert make_client(dropped, token=TOKEN).request("GET", "/y").text == "ok"


def test_no_secret_in_any_error_message(make_client) -> None:
    echo = f"bad request: password={PASSWORD} cookie JSESSIONID={TOKEN}"
    xnat = Recorder({("GET", "/x"): [httpx.Response(418, text=echo)]})
    with pytest.raises(XnatError) as info:
        make_client(xnat).request("GET", "/x")
    text = str(info.value) + repr(info.value) + info.value.server_message
    assert PASSWORD not in text and TOKEN not in text
    assert "***" in text


def test_errors_survive_pickling() -> None:
    error = PermanentUploadError("upload failed", status=400, server_message="no", hint="fix it")
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is PermanentUploadError and clone.status == 400 and clone.hint == "fix it"


def test_get_rows_returns_strings(make_client) -> None:
    rows = {"ResultSet": {"Result": [{"ID": "P", "n": 3, "none": None, "flag": True}], "totalRecords": "1"}}
    xnat = Recorder({("GET", "/data/projects"): [httpx.Response(200, json=rows)]})
    client = make_client(xnat)
    assert client.get_rows("/data/projects") == [{"ID": "P", "n": "3", "none": "", "flag": "true"}]
    assert xnat.requests[-1].url.params["format"] == "json"


def test_get_json_on_a_login_page_explains(make_client) -> None:
    xnat = Recorder({("GET", "/data/projects"): [httpx.Response(200, text="<html>login</html>")]})
    with pytest.raises(XnatError, match="expected JSON"):
        make_client(xnat).get_json("/data/projects")


@pytest.mark.parametrize(
    ("answer", "allowed"),
    [
        (httpx.Response(200, text="1.9.2.1"), True),
        (httpx.Response(200, text="1.8.3"), True),
        (httpx.Response(200, text="1.8.2-SNAPSHOT"), False),
        (httpx.Response(404), True),  # unknown: proceed
    ],
)
def test_direct_archive_version_gate(make_client, answer, allowed) -> None:
    xnat = Recorder({("GET", "/xapi/siteConfig/buildInfo/version"): [answer]})
    client = make_client(xnat, token=TOKEN)
    if allowed:
        client.require_direct_archive()
    else:
        with pytest.raises(UnsupportedServerError, match="1.8.3"):
            client.require_direct_archive()
    client.server_version()
    assert xnat.calls("/xapi/siteConfig/buildInfo/version") == 1  # read once


def test_token_cache_is_private_and_reused(tmp_path: Path, make_client) -> None:
    cache = TokenCache(tmp_path / "profile")
    first = Recorder()
    make_client(first, cache=cache).request("GET", "/x")
    assert stat.S_IMODE(cache.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache.directory.stat().st_mode) == 0o700
    assert [p.name for p in cache.directory.iterdir()] == ["tokens.json"]  # no temp files left
    assert TOKEN in cache.path.read_text()

    second = Recorder()
    make_client(second, cache=cache).request("GET", "/x")
    assert second.calls("/data/JSESSION") == 0
    assert second.requests[0].headers["Cookie"] == f"JSESSIONID={TOKEN}"


def test_a_cached_session_is_not_reused_with_another_password(tmp_path: Path, make_client) -> None:
    cache = TokenCache(tmp_path / "profile")
    make_client(Recorder(), cache=cache).request("GET", "/x")
    assert PASSWORD not in cache.path.read_text()  # only a salted PBKDF2 check of it

    other = Recorder()
    make_client(other, cache=cache, password="not-the-password").request("GET", "/x")
    assert other.calls("/data/JSESSION") == 1  # a fresh login, where a wrong password fails as such

    no_password = Recorder()  # a caller with only the cached session (no password anywhere) reuses it
    make_client(no_password, cache=cache, password=None).request("GET", "/x")
    assert no_password.calls("/data/JSESSION") == 0


def test_token_cache_forgets_idle_tokens(tmp_path: Path) -> None:
    cache = TokenCache(tmp_path, max_idle_seconds=0.0)
    cache.put("https://a", "u", "TOKEN")
    time.sleep(0.01)  # the point: some idle time passes, more than max_idle_seconds=0
    assert cache.get("https://a", "u") is None
    fresh = TokenCache(tmp_path)
    assert fresh.get("https://a", "u") == "TOKEN"
    assert fresh.get("https://a", "other") is None
    fresh.delete("https://a", "u")
    assert fresh.get("https://a", "u") is None


def test_logout_ends_the_session_and_forgets_it(tmp_path: Path, make_client) -> None:
    cache = TokenCache(tmp_path)
    xnat = Recorder()
    client = make_client(xnat, cache=cache)
    client.request("GET", "/x")
    client.logout()
    assert xnat.requests[-1].method == "DELETE" and xnat.requests[-1].url.path == "/data/JSESSION"
    assert cache.get("https://xnat.test", "alice") is None


def test_whoami(make_client) -> None:
    xnat = Recorder({("GET", "/xapi/users/username"): [httpx.Response(200, text="alice\n")]})
    assert make_client(xnat).whoami() == "alice"


def test_a_busy_server_at_login_is_retried(make_client, retry_sleeps) -> None:
    answers = [httpx.Response(503, headers={"Retry-After": "1"}), httpx.Response(200, text=TOKEN)]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/data/JSESSION":
            return answers.pop(0)
        return httpx.Response(200, text="ok")

    assert make_client(handler).request("GET", "/x").text == "ok"
    assert retry_sleeps == [1.0]


def test_connection_error_keeps_its_retryable_flag_through_pickle() -> None:
    error = XnatConnectionError("refused", retryable=False)
    assert pickle.loads(pickle.dumps(error)).retryable is False


def test_unreadable_ca_bundle_is_an_input_error(tmp_path: Path) -> None:
    from xnat_flows.client.errors import InputError

    bundle = tmp_path / "ca.pem"
    bundle.write_text("not a certificate")
    with pytest.raises(InputError, match="CA bundle"):
        XnatClient(Credentials(url="https://x.test", verify=str(bundle)), token_cache=None)


def test_expired_session_seen_as_a_dropped_upload_leads_to_one_relogin(make_client) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        cookie = request.headers.get("Cookie", "")
        if request.url.path == "/data/JSESSION":
            if request.method == "POST":
                return httpx.Response(200, text="NEWTOKEN0001")
            return httpx.Response(200 if cookie == "JSESSIONID=NEWTOKEN0001" else 401)
        if cookie != "JSESSIONID=NEWTOKEN0001":
            raise httpx.WriteError("Broken pipe")  # the server hung up on the dead session
        return httpx.Response(200, text="/data/x\r\n")

    client = make_client(handler, token="OLDTOKEN0000")
    assert client.request("POST", IMPORT, content=lambda: iter([b"tar"])).text == "/data/x\r\n"
    assert client.login_count == 1


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            400,
            "Failed to archive 1 of 2 session(s): Unknown prearchive session.",
            TransientError,
        ),  # a race between batches
        (
            400,
            "Failed to archive 1 of 1 session(s): Session already exists, retry with overwrite enabled",
            PermanentUploadError,
        ),
        (400, "Duplicate archive attempt. Prearchive session already archiving.", TransientError),
        (400, "Scan 4 has 2 non-DICOM (or non-parsable DICOM) files", PermanentUploadError),
        (423, "Destination session in use.", TransientError),
        (409, "Session already exists", ConflictError),
    ],
)
def test_import_answers_are_classified(status, body, expected) -> None:
    from xnat_flows.client.errors import error_for_response

    request = httpx.Request("POST", "https://xnat.test/data/services/import")
    error = error_for_response(httpx.Response(status, text=body, request=request))
    assert type(error) is expected
    assert error.server_message == body


def test_nothing_secret_is_logged_even_at_debug_level(make_client, caplog) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    xnat = Recorder({("GET", "/x"): [httpx.Response(401), httpx.Response(503, text="busy"), httpx.Response(200)]})
    make_client(xnat, token="OLDTOKEN0000").request("GET", "/x")
    assert "session expired" in caplog.text and "retry 1/5" in caplog.text
    for secret in (PASSWORD, TOKEN, "OLDTOKEN0000"):
        assert secret not in caplog.text


def test_login_token_from_the_cookie_when_the_body_is_empty(make_client) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/data/JSESSION":
            return httpx.Response(200, headers={"Set-Cookie": f"JSESSIONID={TOKEN}; Path=/; HttpOnly"})
        return httpx.Response(200, text=request.headers.get("Cookie", ""))

    assert make_client(handler).request("GET", "/x").text == f"JSESSIONID={TOKEN}"


def test_cancel_cuts_a_backoff_short() -> None:
    from xnat_flows.client.errors import CancelledError

    answered = threading.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        answered.set()
        return httpx.Response(503, headers={"Retry-After": "120"})

    creds = Credentials(url="https://xnat.test", username="alice", token=SecretStr(TOKEN))
    client = XnatClient(creds, transport=httpx.MockTransport(handler), token_cache=None)  # real (event) sleeps
    outcome: list[BaseException] = []
    worker = threading.Thread(
        target=lambda: outcome.append(pytest.raises(CancelledError, client.request, "GET", "/x").value)
    )
    started = time.monotonic()
    worker.start()
    assert answered.wait(5)  # the 503 is in: the client is (about to be) in its 120 s backoff
    client.cancel()
    worker.join(5)
    assert not worker.is_alive() and time.monotonic() - started < 10  # not the 120 s backoff
    assert isinstance(outcome[0], CancelledError) and client.cancelled


# -- hints match the cause; only passing conditions are retried ---------------------------


def test_an_unrecognised_import_400_is_not_retried_as_busy(make_client, retry_sleeps) -> None:
    xnat = Recorder({("POST", IMPORT): [httpx.Response(400, text="Something XNAT has never said before")]})
    with pytest.raises(XnatError) as info:
        make_client(xnat).request("POST", IMPORT, content=b"x")
    assert xnat.calls(IMPORT) == 1 and retry_sleeps == []
    assert not isinstance(info.value, TransientError) and not info.value.retryable
    assert "busy" not in info.value.hint and "does not know" in info.value.hint


def test_a_full_disk_is_said_as_such_and_not_retried(make_client, retry_sleeps) -> None:
    from xnat_flows.client.errors import StorageFullError

    full = httpx.Response(500, text="java.io.IOException: No space left on device")
    xnat = Recorder({("POST", IMPORT): [full]})
    with pytest.raises(StorageFullError) as info:
        make_client(xnat).request("POST", IMPORT, content=b"x")
    assert xnat.calls(IMPORT) == 1 and retry_sleeps == []
    assert "storage is full" in str(info.value) and "busy" not in info.value.hint


def test_a_500_is_retried_with_an_internal_error_hint_and_a_503_as_busy(make_client) -> None:
    xnat = Recorder(
        {
            ("GET", "/x"): [httpx.Response(500, text="NullPointerException")],
            ("GET", "/y"): [httpx.Response(503, text="Service Unavailable")],
        }
    )
    client = make_client(xnat)
    with pytest.raises(TransientError) as internal:
        client.request("GET", "/x")
    with pytest.raises(TransientError) as busy:
        client.request("GET", "/y")
    assert xnat.calls("/x") == 6 and "internal error" in internal.value.hint and "busy" not in internal.value.hint
    assert "busy" in busy.value.hint


def test_reserve_connections_sizes_the_pool_to_the_workers() -> None:
    creds = Credentials(url="https://xnat.test", username="alice", password=SecretStr(PASSWORD))
    with XnatClient(creds, token_cache=None) as client:
        assert client.max_connections == 16
        client.reserve_connections(8)
        assert client.max_connections == 16
        client.reserve_connections(40)
        assert client.max_connections == 41
        pool = client._sender.transport.http._pool
        assert pool._max_connections == 41


def test_timeout_is_httpxs_own_and_a_float_is_accepted() -> None:
    """The client takes httpx's ``Timeout`` (or seconds for every phase) and narrows it for uploads
    by ``stall`` and for queries by ``answer``, never beyond what the caller allowed."""
    creds = Credentials(url="https://xnat.test", username="alice", password=SecretStr(PASSWORD))
    with XnatClient(creds, token_cache=None, timeout=5.0, stall=1.0, answer=2.0) as client:
        assert client.timeout == httpx.Timeout(5.0)
        assert client._sender.timeout == httpx.Timeout(5.0)
        assert client.upload_timeout(2_000_000) == httpx.Timeout(connect=5.0, read=2.0, write=1.0, pool=5.0)
        assert client.upload_timeout(100_000_000).read == 5.0  # stall + 50 s of storing, capped by read
        assert client._query_timeout() == httpx.Timeout(2.0, connect=5.0, pool=5.0)
    with XnatClient(creds, token_cache=None, timeout=httpx.Timeout(None, connect=3.0)) as client:
        assert client.upload_timeout(2_000_000) == httpx.Timeout(connect=3.0, read=301.0, write=300.0, pool=None)
        assert client._query_timeout().read == 60.0


def test_posts_that_reached_xnat_unanswered_are_counted_in_doubt(make_client, retry_sleeps) -> None:
    """An upload reads ``requests_in_doubt`` to know whether XNAT may still be working on a copy it
    gave up on (then it does not ask XNAT to archive the session at once)."""
    xnat = Recorder(
        {
            ("POST", IMPORT): [
                httpx.ReadTimeout("timed out"),
                httpx.RemoteProtocolError("peer closed connection"),
                httpx.Response(504),
                httpx.Response(200, text="/data/x\r\n"),
            ],
            ("POST", "/refused"): [httpx.ConnectError("Connection refused")],
            ("GET", "/query"): [httpx.ReadTimeout("timed out"), httpx.Response(200, text="ok")],
        }
    )
    client = make_client(xnat, token=TOKEN)
    assert client.request("POST", IMPORT, content=b"zip").status_code == 200
    assert client.requests_in_doubt == 3  # timed out, dropped, gateway gave up: each may have landed
    with pytest.raises(XnatConnectionError):
        client.request("POST", "/refused", content=b"x")  # never reached XNAT
    client.request("GET", "/query")  # reads change nothing
    assert client.requests_in_doubt == 3
