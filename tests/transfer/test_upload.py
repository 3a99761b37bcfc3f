"""Upload requests on a scripted transport: exact parameters, content types, failure handling."""

from __future__ import annotations

import io
import tarfile
import threading
import time
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from xnat_flows.client.client import XnatClient
from xnat_flows.client.credentials import Credentials
from xnat_flows.client.errors import InputError, NoAnswerError, PermanentUploadError, PermissionDeniedError
from xnat_flows.client.retry import RetryPolicy
from xnat_flows.testing.pytest_plugin import wait_until
from xnat_flows.transfer.scan import scan_directory
from xnat_flows.transfer.target import UploadTarget
from xnat_flows.transfer.upload import parse_uris, upload_batch, upload_gradual

TARGET = UploadTarget("PROJ", "SUBJ", "SESS")


def client_for(handler) -> XnatClient:
    creds = Credentials(url="http://xnat.test", username="u", token=SecretStr("TOKEN0000001"))
    return XnatClient(
        creds, transport=httpx.MockTransport(handler), token_cache=None, retry=RetryPolicy(sleep=lambda s: None)
    )


def test_labels_are_validated_naming_the_bad_one() -> None:
    with pytest.raises(InputError, match="subject label 'bad name'"):
        UploadTarget("P", "bad name", "S")
    with pytest.raises(InputError, match="session"):
        UploadTarget("P", "S", "a/b")
    with pytest.raises(InputError, match="overwrite"):
        UploadTarget("P", "S", "E", overwrite="merge")  # type: ignore[arg-type]


def test_dicom_zip_request_shape_direct_archive(study_dir: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        request.read()
        return httpx.Response(200, text="/xapi/direct-archive/PROJ/1.2.3/SESS\r\n")

    files = scan_directory(study_dir).files
    with client_for(handler) as client:
        result = upload_batch(client, files, TARGET, "tar", index=3)
    (request,) = seen
    assert request.method == "POST" and request.url.path == "/data/services/import"
    assert dict(request.url.params) == {
        "import-handler": "DICOM-zip",
        "inbody": "true",
        "project": "PROJ",
        "subject": "SUBJ",
        "session": "SESS",
        "overwrite": "append",
        "overwrite_files": "true",
        "Ignore-Unparsable": "true",
        "quarantine": "false",
        "triggerPipelines": "true",
        "rename": "false",
        "Direct-Archive": "true",
    }
    assert request.headers["Content-Type"] == "application/x-tar"
    assert int(request.headers["Content-Length"]) == len(request.content)
    assert "Transfer-Encoding" not in request.headers
    with tarfile.open(fileobj=io.BytesIO(request.content)) as tf:
        assert tf.getnames() == [f.relpath for f in files]
    assert result.ok and result.index == 3 and result.uris == ("/xapi/direct-archive/PROJ/1.2.3/SESS",)
    assert result.files == tuple(f.relpath for f in files) and result.bytes == sum(f.size for f in files)


def test_prearchive_destination_and_zip_content_type(study_dir: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        request.read()
        return httpx.Response(200, text="/data/prearchive/projects/PROJ/20240101_120000000/SESS\r\n")

    target = UploadTarget("PROJ", "SUBJ", "SESS", direct_archive=False, overwrite="append")
    with client_for(handler) as client:
        upload_batch(client, scan_directory(study_dir).files, target, "zip")
    params = seen[0].url.params
    assert params["dest"] == "/prearchive/projects/PROJ" and "Direct-Archive" not in params
    assert params["overwrite"] == "append"
    assert seen[0].headers["Content-Type"] == "application/zip"


def test_batch_failure_raises_or_is_reported(study_dir: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        return httpx.Response(400, text="Unable to identify subject.")

    files = scan_directory(study_dir).files
    with client_for(handler) as client:
        with pytest.raises(PermanentUploadError, match="Unable to identify subject"):
            upload_batch(client, files, TARGET)
        result = upload_batch(client, files, TARGET, raise_on_error=False)
    assert not result.ok and "Unable to identify subject." in result.error and result.uris == ()


def test_parse_uris_handles_crlf_and_blank_lines() -> None:
    assert parse_uris("/data/a\r\n/data/b\r\n\r\n") == ["/data/a", "/data/b"]
    assert parse_uris("") == []


def test_gradual_uses_upper_case_keys_and_application_dicom(study_dir: Path) -> None:
    seen: list[httpx.Request] = []
    lock = threading.Lock()

    def handler(request: httpx.Request) -> httpx.Response:
        with lock:
            seen.append(request)
        request.read()
        return httpx.Response(200, text="/xapi/direct-archive/PROJ/1.2.3/SESS\r\n")

    files = scan_directory(study_dir).files
    with client_for(handler) as client:
        result = upload_gradual(client, files, TARGET, workers=3)
    assert result.ok and result.sent_count == 6 and result.bytes_sent == sum(f.size for f in files)
    assert result.uris == ["/xapi/direct-archive/PROJ/1.2.3/SESS"]
    params = dict(seen[0].url.params)
    assert params == {
        "import-handler": "gradual-DICOM",
        "inbody": "true",
        "PROJECT_ID": "PROJ",
        "SUBJECT_ID": "SUBJ",
        "EXPT_LABEL": "SESS",
        "Direct-Archive": "true",
    }
    assert {r.headers["Content-Type"] for r in seen} == {"application/dicom"}
    assert all(int(r.headers["Content-Length"]) == len(r.content) for r in seen)
    assert sorted(r.content for r in seen) == sorted(f.path.read_bytes() for f in files)
    # warm-up: the first instance of each series went first, one at a time
    first_two = {r.content for r in seen[:2]}
    assert first_two == {files[0].path.read_bytes(), files[3].path.read_bytes()}


def test_gradual_collects_per_file_failures_with_the_server_message(study_dir: Path) -> None:
    files = scan_directory(study_dir).files
    bad = files[4].path.read_bytes()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.read() == bad:
            return httpx.Response(400, text="unable to read DICOM object upload.dcm")
        return httpx.Response(200, text="/data/x\r\n")

    with client_for(handler) as client:
        result = upload_gradual(client, files, TARGET, workers=2)
    assert not result.ok and result.sent_count == 5
    (failure,) = result.failures
    assert (
        failure.relpath == files[4].relpath and "unable to read DICOM object" in failure.error and failure.status == 400
    )


def test_gradual_stops_when_every_first_instance_fails_alike(study_dir: Path) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.read())
        return httpx.Response(400, text="Unable to identify destination project")

    with client_for(handler) as client, pytest.raises(PermanentUploadError, match="destination project"):
        upload_gradual(client, scan_directory(study_dir).files, TARGET, workers=2)
    assert len(calls) == 2  # one per series, then stop


def test_gradual_stops_when_first_instances_fail_alike_in_different_words(study_dir: Path) -> None:
    # Two dripped answers cut at their deadline read a different number of bytes: one failure.
    from xnat_flows.client.lean import AnswerTooSlow

    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.read())
        raise AnswerTooSlow(f"the answer was still arriving 3 s after the request ({len(calls)} bytes so far)")

    with client_for(handler) as client, pytest.raises(NoAnswerError, match="still arriving"):
        upload_gradual(client, scan_directory(study_dir).files, TARGET, workers=2)
    assert len(calls) == 2  # one per series, then stop


def test_gradual_aborts_on_an_error_every_request_would_hit(study_dir: Path) -> None:
    count = {"n": 0}
    lock = threading.Lock()

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        with lock:
            count["n"] += 1
            n = count["n"]
        return httpx.Response(200, text="/data/x") if n <= 2 else httpx.Response(403, text="no access")

    with client_for(handler) as client, pytest.raises(PermissionDeniedError):
        upload_gradual(client, scan_directory(study_dir).files, TARGET, workers=1)
    assert count["n"] == 3


def test_gradual_in_flight_requests_stay_within_the_workers(tmp_path: Path) -> None:
    from transfer_helpers import write_study

    write_study(tmp_path, series=1, instances=25)
    files = scan_directory(tmp_path).files
    active = {"now": 0, "peak": 0}
    lock = threading.Lock()

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        with lock:
            active["now"] += 1
            active["peak"] = max(active["peak"], active["now"])
        time.sleep(0.01)
        with lock:
            active["now"] -= 1
        return httpx.Response(200, text="/data/x")

    with client_for(handler) as client:
        result = upload_gradual(client, files, TARGET, workers=4)
    assert result.ok
    assert 2 <= active["peak"] <= 4


def test_gradual_salvages_transient_failures(study_dir: Path) -> None:
    files = scan_directory(study_dir).files
    flaky = files[5].path.read_bytes()
    seen = {"flaky": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.read() == flaky:
            seen["flaky"] += 1
            if seen["flaky"] <= 6:  # exhausts the client's 6 attempts once
                return httpx.Response(503, text="busy")
        return httpx.Response(200, text="/data/x")

    with client_for(handler) as client:
        result = upload_gradual(client, files, TARGET, workers=2)
    assert result.ok and seen["flaky"] == 7


def test_upload_batch_resumable_skips_what_the_journal_holds(study_dir: Path, tmp_path: Path) -> None:
    from xnat_flows.transfer.journal import UploadJournal
    from xnat_flows.transfer.session import upload_batch_resumable

    posts = []
    batch = scan_directory(study_dir).files

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":  # the session the journal's entries went to is still there
            fields = {"ID": "XNAT_E00001", "label": "SESS", "UID": batch[0].study_uid}
            return httpx.Response(200, json={"items": [{"data_fields": fields}]})
        posts.append(request.read())
        return httpx.Response(200, text="/data/x\r\n")

    journal = UploadJournal(tmp_path / "journal")
    with client_for(handler) as client:
        first = upload_batch_resumable(client, batch, TARGET, journal=journal)
        again = upload_batch_resumable(client, batch, TARGET, journal=journal)
        elsewhere = upload_batch_resumable(client, batch, TARGET.with_session("OTHER"), journal=journal)
    assert first.ok and not first.resumed
    assert again.ok and again.resumed and again.uris == ()
    assert not elsewhere.resumed
    assert len(posts) == 2


def test_the_journal_is_per_server_and_checked_against_what_xnat_still_holds(study_dir: Path, tmp_path: Path) -> None:
    """A batch delivered to server X is not skipped on server Y, nor on X once the session is gone."""
    from xnat_flows.transfer.journal import UploadJournal
    from xnat_flows.transfer.session import upload_batch_resumable

    batch = scan_directory(study_dir).files
    present = {"http://x.test": True, "http://y.test": True}
    posts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        server = f"{request.url.scheme}://{request.url.host}"
        if request.url.path == "/xapi/direct-archive":  # nothing being received
            return httpx.Response(200, json=[])
        if request.method == "GET":
            if request.url.path.startswith("/data/prearchive"):
                return httpx.Response(200, json={"ResultSet": {"Result": []}})
            if not present[server]:
                return httpx.Response(404, text="not found")
            fields = {"ID": "XNAT_E00001", "label": "SESS", "UID": batch[0].study_uid}
            return httpx.Response(200, json={"items": [{"data_fields": fields}]})
        posts.append(server)
        return httpx.Response(200, text="/data/x\r\n")

    def client(url: str) -> XnatClient:
        creds = Credentials(url=url, username="u", token=SecretStr("TOKEN0000001"))
        return XnatClient(
            creds, transport=httpx.MockTransport(handler), token_cache=None, retry=RetryPolicy(sleep=lambda s: None)
        )

    journal = UploadJournal(tmp_path / "journal")
    with client("http://x.test") as x, client("http://y.test") as y:
        assert not upload_batch_resumable(x, batch, TARGET, journal=journal).resumed
        assert not upload_batch_resumable(y, batch, TARGET, journal=journal).resumed  # same labels, another server
        assert upload_batch_resumable(x, batch, TARGET, journal=journal).resumed
        present["http://x.test"] = False  # the session was deleted on X meanwhile
        assert not upload_batch_resumable(x, batch, TARGET, journal=journal).resumed
    assert posts == ["http://x.test", "http://y.test", "http://x.test"]


def test_one_bad_first_instance_of_a_single_series_does_not_stop_the_upload(tmp_path: Path) -> None:
    from transfer_helpers import write_study

    write_study(tmp_path, series=1, instances=4)
    files = scan_directory(tmp_path).files
    bad = files[0].path.read_bytes()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.read() == bad:
            return httpx.Response(400, text="object upload.dcm contains no SOP Instance UID")
        return httpx.Response(200, text="/data/x")

    with client_for(handler) as client:
        result = upload_gradual(client, files, TARGET, workers=2)
    assert result.sent_count == 3 and [f.relpath for f in result.failures] == [files[0].relpath]


def test_batch_reports_streamed_bytes_and_restarts_on_a_retry(study_dir: Path) -> None:
    answers = [httpx.Response(502), httpx.Response(200, text="/data/x")]

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        return answers.pop(0)

    files = scan_directory(study_dir).files
    size = sum(f.size for f in files)
    seen: list[int] = []
    with client_for(handler) as client:
        assert upload_batch(client, files, TARGET, on_streamed=seen.append).ok
    assert seen[0] == 0 and seen[-1] == size
    assert seen.count(size) == 2  # streamed twice: the 502 and the resend


def test_cancel_stops_a_streaming_batch_at_the_next_chunk(tmp_path: Path) -> None:
    import os

    from xnat_flows.client.errors import CancelledError
    from xnat_flows.transfer.scan import DicomFile
    from xnat_flows.transfer.session import upload_batches

    files = []
    for i in range(40):
        path = tmp_path / f"f{i}"
        path.write_bytes(os.urandom(1 << 20))
        files.append(DicomFile(path, path.name, 1 << 20, "1.2", "1.2.3", 1, f"1.2.3.{i}", "1.2", "1.2.840.10008.1.2.1"))
    chunks_read = []

    class SlowNetwork(httpx.BaseTransport):  # MockTransport would read the whole body first
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            for chunk in request.stream:
                chunks_read.append(len(chunk))
                time.sleep(0.05)
            return httpx.Response(200, text="/data/x")

    creds = Credentials(url="http://xnat.test", username="u", token=SecretStr("TOKEN0000001"))
    client = XnatClient(creds, transport=SlowNetwork(), token_cache=None)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            upload_batches(client, files, TARGET, workers=1)
        except BaseException as exc:  # noqa: BLE001 - inspected below
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    wait_until(lambda: chunks_read, 10, interval=0.01, what="the batch's body to start streaming")
    client.cancel()
    worker.join(5)
    assert not worker.is_alive()
    assert isinstance(errors[0], CancelledError)
    assert len(chunks_read) < 8  # stopped well before the 8 MiB body was sent


def test_ctrl_c_during_batches_stops_the_streams(tmp_path: Path) -> None:
    import os
    import signal

    from xnat_flows.transfer.scan import DicomFile
    from xnat_flows.transfer.session import upload_batches

    files = []
    for i in range(8):
        path = tmp_path / f"f{i}"
        path.write_bytes(os.urandom(1 << 20))
        files.append(DicomFile(path, path.name, 1 << 20, "1.2", "1.2.3", 1, f"1.2.3.{i}", "1.2", "1.2.840.10008.1.2.1"))

    class SlowNetwork(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            for _ in request.stream:
                time.sleep(0.4)
            return httpx.Response(200, text="/data/x")

    creds = Credentials(url="http://xnat.test", username="u", token=SecretStr("TOKEN0000001"))
    client = XnatClient(creds, transport=SlowNetwork(), token_cache=None)
    timer = threading.Timer(0.15, os.kill, (os.getpid(), signal.SIGINT))
    # pytest-xdist workers ignore SIGINT; Python's own handler turns it into KeyboardInterrupt.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            upload_batches(client, files, TARGET, workers=2)  # would take 8 s per batch
    finally:
        timer.join()
        signal.signal(signal.SIGINT, previous)
    assert client.cancelled
    assert time.monotonic() - started < 4.0  # half a batch: the streams stopped, they did not finish


def test_archive_now_asks_xnat_once_per_session_and_not_while_a_copy_may_be_on_its_way(scripted_client) -> None:
    from xnat_flows.transfer.session import archive_now

    seen: list[tuple[str, str]] = []

    def xnat(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path))
        if request.url.path.endswith("/GONE"):
            return httpx.Response(404, text="No direct archive session found")
        return httpx.Response(200)

    client = scripted_client(xnat)
    target = UploadTarget("PROJ", "SUBJ", "SESS")
    uri = "/xapi/direct-archive/PROJ/1.2.3/SESS"
    assert archive_now(client, target, "1.2.3", [uri, uri, "/data/prearchive/projects/PROJ/x/y"]) == [uri]
    assert seen == [("POST", uri)]

    seen.clear()  # every part delivered by an earlier run: no answer to read the URI from
    assert archive_now(client, target, "1.2.3", []) == [uri]
    assert seen == [("POST", uri)]

    seen.clear()  # already archived by the idle timer (or an XNAT without the call): not an error
    assert archive_now(client, target.with_session("GONE"), "1.2.3", []) == []
    assert seen == [("POST", "/xapi/direct-archive/PROJ/1.2.3/GONE")]

    seen.clear()
    assert archive_now(client, target, "1.2.3", [uri], requests_in_doubt=1) == []
    assert archive_now(client, UploadTarget("PROJ", "SUBJ", "SESS", archive_when_complete=False), "1.2.3", [uri]) == []
    assert archive_now(client, UploadTarget("PROJ", "SUBJ", "SESS", direct_archive=False), "1.2.3", [uri]) == []
    assert seen == []


def test_a_failure_to_record_a_sent_instance_stops_the_upload_with_that_error(tmp_path: Path) -> None:
    """``on_sent`` records a delivery (the resume journal): if that fails (a full disk), the upload
    stops with the error, rather than workers ending one by one and leaving instances neither
    sent nor failed."""
    from transfer_helpers import write_study

    write_study(tmp_path, series=1, instances=12)
    files = scan_directory(tmp_path).files
    recorded: list[str] = []

    def on_sent(item) -> None:
        if len(recorded) == 5:
            raise OSError(28, "No space left on device")
        recorded.append(item.relpath)

    with (
        client_for(lambda request: httpx.Response(200, text="/data/x")) as client,
        pytest.raises(OSError, match="No space"),
    ):
        upload_gradual(client, files, TARGET, workers=3, on_sent=on_sent)
    assert len(recorded) == 5


def test_a_request_in_doubt_is_counted_on_its_own_batch_only(study_dir: Path) -> None:
    """Parallel batches share one client: the request that reached XNAT unanswered is counted on
    the batch that sent it, not on a batch whose request merely overlapped it in time (the
    client-wide counter's before/after difference counted it on both)."""
    from xnat_flows.transfer.partition import partition_by_bytes
    from xnat_flows.transfer.session import upload_batches
    from xnat_flows.transfer.upload_result import SessionResult

    files = scan_directory(study_dir).files
    doubtful = {f.relpath for f in partition_by_bytes(files, 2)[0]}
    dropped = threading.Event()
    lock = threading.Lock()
    drops = []

    def handler(request: httpx.Request) -> httpx.Response:
        with tarfile.open(fileobj=io.BytesIO(request.read())) as tf:
            members = set(tf.getnames())
        if members == doubtful:
            with lock:
                first = not drops
                drops.append(1)
            if first:
                dropped.set()
                raise httpx.ReadTimeout("timed out after the body was sent")  # XNAT may have it
        else:
            assert dropped.wait(10)  # this batch's request is in flight while the other one is dropped
        return httpx.Response(200, text="/xapi/direct-archive/PROJ/1.2.3/SESS\r\n")

    with client_for(handler) as client:
        client.reserve_connections(2)
        batches = upload_batches(client, files, TARGET, workers=2)
        assert client.requests_in_doubt == 1
    assert [b.ok for b in batches] == [True, True]
    assert [b.requests_in_doubt for b in batches] == [1, 0]
    session = SessionResult(study_uid="1.2.3", target=TARGET, files=len(files), bytes=0, batches=batches)
    assert session.requests_in_doubt == 1
