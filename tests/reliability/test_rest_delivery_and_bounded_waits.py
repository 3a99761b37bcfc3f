"""REST uploads: paths where an upload once said "sent"/"verified" while the data was not in the archive,
and waits that were not bounded. Each test reproduces the condition with the emulator's faults."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import httpx
import pydicom
import pytest
from pydantic import SecretStr
from transfer_helpers import connect, write_study

from xnat_flows.client.client import XnatClient
from xnat_flows.client.credentials import Credentials
from xnat_flows.client.errors import AuthenticationError, CancelledError, NoAnswerError
from xnat_flows.client.prearchive import list_sessions
from xnat_flows.testing import XnatEmulator
from xnat_flows.testing.pytest_plugin import wait_until
from xnat_flows.testing.synth import write_studies
from xnat_flows.transfer import UploadTarget, scan_directory, upload_batch, upload_session
from xnat_flows.transfer.journal import UploadJournal

pytestmark = pytest.mark.e2e

IMPORT = "/data/services/import"
FAST = {"verify_timeout": 20.0, "poll_interval": 0.1}
LOGIN_PAGE = "<html><head><title>XNAT - Login</title></head><body><form action='/login'>...</form></body></html>"


@pytest.fixture
def client(xnat_emulator: XnatEmulator, tmp_path: Path):
    with connect(xnat_emulator, tmp_path) as xnat:
        yield xnat


@pytest.fixture
def export(tmp_path: Path) -> Path:
    root = tmp_path / "export"
    write_study(root, series=2, instances=3)
    return root


# -- 3: only XNAT's import answer (a session URI) counts as delivered --------------------------------


@pytest.mark.parametrize(
    ("fault", "words"),
    [
        ({"status": 302, "headers": {"Location": "/app/template/Login.vm"}}, "redirect to /app/template/Login.vm"),
        ({"error_body": LOGIN_PAGE}, "a web page (probably a login page)"),
    ],
    ids=["302-to-login", "200-html"],
)
def test_a_login_page_from_the_import_endpoint_is_not_a_delivery(xnat_emulator, client, export, fault, words) -> None:
    xnat_emulator.faults.add(path=IMPORT, method="POST", times=None, **fault)
    result = upload_session(client, export, UploadTarget("TEST", "S", "LOGIN"), workers=2, verify=False)
    assert not result.ok
    (study,) = result.sessions
    assert not any(b.ok for b in study.batches) and len(study.failed_files) == 6
    assert all(words in b.error and "authentication or proxy" in b.error for b in study.batches)
    assert xnat_emulator.archived_experiments("TEST") == []

    with pytest.raises(AuthenticationError, match="nothing"):  # gradual stops at once: every request would meet it
        upload_session(client, export, UploadTarget("TEST", "S", "LOGIN"), gradual=True, verify=False)


# -- 7: verification is never satisfied by what was there before ------------------------------------


def test_the_scan_listing_has_no_uid_column_as_in_xnat(xnat_emulator, client, export) -> None:
    assert upload_session(client, export, UploadTarget("TEST", "S", "NOUID"), **FAST).ok
    (experiment,) = xnat_emulator.archived_experiments("TEST")
    rows = client.get_rows(f"/data/experiments/{experiment['ID']}/scans")
    assert rows and all("UID" not in row for row in rows)


def test_an_upload_parked_in_error_is_not_verified_by_the_old_session(xnat_emulator, client, tmp_path) -> None:
    """The label already holds a session with the same scan numbers and counts: the new upload, parked
    in ERROR, was reported "verified" from the old session's scans."""
    old, new = tmp_path / "old", tmp_path / "new"
    write_study(old, series=2, instances=3)
    write_study(new, series=2, instances=3)
    target = UploadTarget("TEST", "S", "PARKED")
    assert upload_session(client, old, target, **FAST).ok

    xnat_emulator.faults.force_next_session("ERROR")
    result = upload_session(client, new, target, allow_other_study=True, verify_timeout=3.0, poll_interval=0.1)
    (study,) = result.sessions
    assert study.uploaded and not study.verify.ok and not result.ok
    assert study.verify.found_count == 0  # the old study's scans 1 and 2 are not the new series
    # That session is done (parked) before the next outcome is forced: on a loaded machine it could
    # still be receiving here, and would then take the next forced ERROR meant for the upload below.
    wait_until(
        lambda: not [row for row in list_sessions(client, "TEST") if row.status == "RECEIVING"],
        timeout=30,
        what="the parked upload's session to leave RECEIVING",
    )

    # The same study again, parked in ERROR: the archive still holds the earlier copy, but this upload
    # did not land, and verification says so instead of counting the files that were there before.
    xnat_emulator.faults.force_next_session("ERROR")
    again = upload_session(client, old, target, verify_timeout=3.0, poll_interval=0.1)
    (study,) = again.sessions
    assert not study.verify.ok and study.verify.parked
    assert "parked it in the prearchive" in study.verify.summary() and "ERROR" in study.verify.summary()


def test_files_waiting_in_the_prearchive_when_the_wait_ends_are_in_progress_not_missing(
    xnat_emulator_factory, tmp_path
) -> None:
    """A label XNAT already archived takes a re-run through the prearchive, where it waits for XNAT's
    idle timer: verification that runs out meanwhile says XNAT is still at work, not "short"."""
    xnat_emulator = xnat_emulator_factory(rebuild_idle_seconds=60.0)  # XNAT's is minutes
    paths = write_study(tmp_path / "all", series=2, instances=4)
    part = tmp_path / "part"
    for path in paths:
        if path.name != "IM0004":  # an earlier run that sent 3 of each series' 4 instances
            (part / path.parent.name).mkdir(parents=True, exist_ok=True)
            (part / path.parent.name / path.name).write_bytes(path.read_bytes())
    target = UploadTarget("TEST", "S", "PENDING")
    journal = UploadJournal()
    with connect(xnat_emulator, tmp_path) as client:
        assert upload_session(client, part, target, **FAST).ok
        result = upload_session(
            client, tmp_path / "all", target, journal=journal, verify_timeout=1.0, poll_interval=0.1
        )
        # Run again before XNAT's timer: nothing to send, and still XNAT's work in progress.
        again = upload_session(client, tmp_path / "all", target, journal=journal, verify_timeout=1.0, poll_interval=0.1)
    for run in (result, again):
        (study,) = run.sessions
        assert not run.ok and study.verify.processing and not study.verify.parked
        summary = study.verify.summary()
        assert summary.startswith("XNAT was still processing this upload when the wait ran out (6/8 files"), summary
        assert "short" not in summary
    assert again.sessions[0].files_sent == 0


# -- 8: two series sharing a SeriesNumber ------------------------------------------------------------


def test_two_series_with_one_series_number_verify(xnat_emulator, client, tmp_path) -> None:
    root = tmp_path / "export"
    paths = write_study(root, series=2, instances=3)
    for path in paths:  # the second series also numbered 1: XNAT names its scan 1-CT1
        ds = pydicom.dcmread(path)
        ds.SeriesNumber = 1
        ds.save_as(path, enforce_file_format=True)
    result = upload_session(client, root, UploadTarget("TEST", "S", "SAMENUM"), workers=2, **FAST)
    assert result.ok, result.sessions[0].verify
    (study,) = result.sessions
    assert sorted(study.verify.scans) == ["1", "1-CT1"]
    assert study.verify.scans["1"] == study.verify.scans["1-CT1"] == (3, 3)


# -- 9: stalled DICOM-zip: progress-based timeouts, and a cancel that stops within seconds ----------


def test_a_stalled_dicom_zip_upload_ends_on_the_stall_timeout(xnat_emulator, tmp_path, export) -> None:
    xnat_emulator.faults.add(path=IMPORT, method="POST", times=None, delay_ms=6000)
    with connect(xnat_emulator, tmp_path, stall=0.5) as xnat:
        started = time.monotonic()
        result = upload_session(xnat, export, UploadTarget("TEST", "S", "STALL"), workers=1, verify=False)
        took = time.monotonic() - started
    (batch,) = result.sessions[0].batches
    assert not batch.ok and "sent no answer (2 attempts" in batch.error
    assert took < 10.0, took  # not the six hours of the old read timeout


def test_cancel_stops_an_upload_blocked_in_send_within_seconds(xnat_emulator, tmp_path) -> None:
    root = tmp_path / "big"
    write_studies(
        root, studies=1, series=1, instances=48, instance_kb=512, seed=3
    )  # ~24 MB: more than the socket buffers
    files = scan_directory(root).files
    xnat_emulator.faults.add(path=IMPORT, method="POST", times=None, delay_ms=8000)  # takes no byte for 8 s
    outcome: list[BaseException | None] = []
    with connect(xnat_emulator, tmp_path) as xnat:  # default timeouts: a 300 s stall allowance

        def run() -> None:
            try:
                upload_batch(xnat, files, UploadTarget("TEST", "S", "CANCEL"))
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                outcome.append(exc)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        wait_until(lambda: xnat_emulator.stats()["active_imports"], 10, interval=0.02, what="the import to start")
        # The point: give the client time to fill the socket buffers (the server reads nothing for
        # 8 s), so cancel() has to end a send that is blocked, not one about to start.
        time.sleep(0.5)
        cancelled_at = time.monotonic()
        xnat.cancel()
        worker.join(timeout=5)
        assert not worker.is_alive(), "the upload thread was still blocked 5 s after cancel()"
    assert time.monotonic() - cancelled_at < 5
    assert len(outcome) == 1 and isinstance(outcome[0], CancelledError)


# -- 10: a server failing everything stops gradual early, with the list of what did not land --------


def test_gradual_stops_when_the_server_fails_persistently(xnat_emulator, client, tmp_path) -> None:
    root = tmp_path / "export"
    write_study(root, series=2, instances=20)
    xnat_emulator.faults.add(
        path=IMPORT, method="POST", after=6, times=None, status=500, message="Internal Server Error"
    )
    result = upload_session(client, root, UploadTarget("TEST", "S", "BREAK"), gradual=True, workers=2, verify=False)
    (study,) = result.sessions
    assert not result.ok and study.gradual.stopped and "in a row failed on XNAT's side" in study.gradual.stopped
    assert study.gradual.sent_count + len(study.failed_files) == 40  # everything not landed is listed
    assert study.gradual.sent_count == 6
    # 34 instances x 6 attempts without the breaker; with it, one retry cycle and single probes.
    assert xnat_emulator.stats()["imports"] < 6 + 40, xnat_emulator.stats()["imports"]


# -- 11: a server that takes connections and never answers ------------------------------------------


def test_a_server_that_never_answers_fails_a_command_in_bounded_time(tmp_path) -> None:
    silent = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def swallow() -> None:
        silent.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):  # the 0.1 s accept timeout, or closed at the end
                accepted.append(silent.accept()[0])

    threading.Thread(target=swallow, daemon=True).start()
    creds = Credentials(url=f"http://127.0.0.1:{silent.getsockname()[1]}", username="u", password=SecretStr("pw"))
    try:
        with XnatClient(creds, token_cache=None, answer=0.5) as xnat:
            started = time.monotonic()
            with pytest.raises(NoAnswerError) as info:
                xnat.whoami()
            took = time.monotonic() - started
    finally:
        stop.set()
        silent.close()
        for conn in accepted:
            conn.close()
    assert took < 15.0, took  # was 6 attempts of 60 s
    assert "took the connection but sent no answer (2 attempts" in str(info.value)
    assert info.value.status is None and not info.value.retryable  # the CLI maps it to exit 7


# -- 15: more workers than the default pool ----------------------------------------------------------


def test_more_workers_than_sixteen_do_not_wait_on_the_connection_pool(xnat_emulator, tmp_path) -> None:
    root = tmp_path / "export"
    write_study(root, series=4, instances=6)
    xnat_emulator.faults.add(path=IMPORT, method="POST", times=None, delay_ms=1500)  # slow but healthy
    with connect(xnat_emulator, tmp_path, timeout=httpx.Timeout(60.0, pool=0.5)) as xnat:
        result = upload_session(xnat, root, UploadTarget("TEST", "S", "WIDE"), workers=24, **FAST)
        assert xnat.max_connections >= 25
    assert result.ok, [b.error for b in result.sessions[0].batches if not b.ok]
