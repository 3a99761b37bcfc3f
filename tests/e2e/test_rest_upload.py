"""End to end over real sockets: the library uploads into the XNAT emulator and reads back."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from transfer_helpers import connect, write_studies, write_study

from xnat_flows.cli.hints import cli_hint
from xnat_flows.client.errors import AuthenticationError, ConflictError, InputError, PermanentUploadError
from xnat_flows.client.prearchive import direct_archive_sessions
from xnat_flows.testing import XnatEmulator
from xnat_flows.transfer import (
    UploadJournal,
    UploadTarget,
    partition_by_bytes,
    scan_directory,
    upload_batch,
    upload_session,
)
from xnat_flows.transfer.journal import resume_key
from xnat_flows.transfer.session import study_label

pytestmark = pytest.mark.e2e

FAST = {"verify_timeout": 30.0, "poll_interval": 0.1}


@pytest.fixture
def client(xnat_emulator: XnatEmulator, tmp_path: Path):
    with connect(xnat_emulator, tmp_path) as xnat:
        yield xnat


@pytest.fixture
def export(tmp_path: Path) -> Path:
    root = tmp_path / "export"
    write_study(root, series=3, instances=4)
    return root


def archived(emulator: XnatEmulator, label: str) -> dict:
    (experiment,) = [e for e in emulator.archived_experiments("TEST") if e["label"] == label]
    return experiment


@pytest.mark.parametrize("fmt", ["tar", "zip"])
def test_dicom_zip_direct_archive_lands_and_verifies(xnat_emulator, client, export, fmt) -> None:
    target = UploadTarget("TEST", "SUBJ01", f"SESS_{fmt}")
    seen = []
    result = upload_session(client, export, target, workers=2, fmt=fmt, progress=seen.append, **FAST)
    assert result.ok, result
    assert seen[-1].done == 12 and seen[-1].bytes_done == seen[-1].bytes_total == result.bytes_sent
    assert (seen[0].done, seen[0].bytes_done) == (0, 0)  # sending starts: reported before the first request
    assert all(a.bytes_done <= b.bytes_done for a, b in itertools.pairwise(seen))
    (study,) = result.sessions
    assert len(study.batches) == 2 and all(b.ok for b in study.batches)
    assert all(uri.startswith("/xapi/direct-archive/TEST/") for uri in study.uris)
    assert study.verify.ok and study.verify.found_count == 12
    assert study.verify.scans == {"1": (4, 4), "2": (4, 4), "3": (4, 4)}
    experiment = archived(xnat_emulator, f"SESS_{fmt}")
    assert experiment["subject"] == "SUBJ01" and experiment["scans"] == {"1": 4, "2": 4, "3": 4}
    assert result.files_sent == 12


def test_gradual_direct_archive(xnat_emulator, client, export) -> None:
    seen = []
    result = upload_session(
        client, export, UploadTarget("TEST", "SUBJ01", "GRAD"), gradual=True, workers=4, progress=seen.append, **FAST
    )
    assert result.ok, result
    (study,) = result.sessions
    assert study.gradual.sent_count == 12 and not study.gradual.failures
    assert seen[-1].done == 12 and seen[-1].bytes_done == seen[-1].bytes_total
    assert (seen[0].done, seen[0].bytes_done, len(seen)) == (0, 0, 13)  # sending starts, then each instance
    assert archived(xnat_emulator, "GRAD")["scans"] == {"1": 4, "2": 4, "3": 4}


def test_repeating_a_completed_gradual_upload_sends_nothing(xnat_emulator, client, export, tmp_path) -> None:
    target = UploadTarget("TEST", "SUBJ01", "AGAIN")
    assert upload_session(client, export, target, gradual=True, **FAST).ok
    again = upload_session(client, export, target, gradual=True, **FAST)
    (study,) = again.sessions
    assert again.ok and study.gradual.already_archived and study.gradual.sent_count == 0
    assert study.verify.ok
    assert xnat_emulator.prearchive_sessions(include_direct_archive=True) == []  # no CONFLICT copy parked

    # Another study under the same label, with the same scan numbers and counts, is not "complete":
    # scans are matched by SeriesInstanceUID. It is refused unless asked for explicitly, then sent.
    other = tmp_path / "other"
    write_study(other, series=3, instances=4)
    with pytest.raises(ConflictError, match="already holds another study"):
        upload_session(client, other, target, gradual=True, verify=False)
    different = upload_session(client, other, target, gradual=True, verify=False, allow_other_study=True)
    assert not different.sessions[0].gradual.already_archived
    assert different.sessions[0].gradual.sent_count == 12


def test_prearchive_destination_held_by_a_manual_project(tmp_path, export, xnat_emulator_factory) -> None:
    emulator = xnat_emulator_factory(tmp_path / "xnat", rebuild_idle_seconds=0.3, prearchive_codes={"TEST": 0})
    with connect(emulator, tmp_path) as xnat:
        target = UploadTarget("TEST", "SUBJ01", "STAGED", direct_archive=False)
        result = upload_session(xnat, export, target, workers=2, **FAST)
        assert result.ok, result
        (study,) = result.sessions
        assert all(uri.startswith("/data/prearchive/projects/TEST/") for uri in study.uris)
        assert study.verify.experiment_id is None and study.verify.uri.startswith("/data/prearchive/")
        assert emulator.archived_experiments("TEST") == []
        (row,) = emulator.prearchive_sessions()
        assert row["status"] == "READY" and row["file_count"] == 12


def test_prearchive_destination_on_an_auto_archive_project_ends_in_the_archive(xnat_emulator, client, export) -> None:
    result = upload_session(client, export, UploadTarget("TEST", "SUBJ01", "AUTO", direct_archive=False), **FAST)
    assert result.ok, result
    assert archived(xnat_emulator, "AUTO")["scans"] == {"1": 4, "2": 4, "3": 4}


def test_resume_after_a_failure_halfway_sends_only_what_did_not_land(xnat_emulator, client, export, tmp_path) -> None:
    journal = UploadJournal(tmp_path / "journal")
    target = UploadTarget("TEST", "SUBJ01", "RESUME")
    xnat_emulator.faults.add(
        path="/data/services/import",
        method="POST",
        after=2,
        times=None,
        status=400,
        message="Unable to identify subject.",
    )
    first = upload_session(client, export, target, workers=4, journal=journal, **FAST)
    assert not first.ok
    (study,) = first.sessions
    assert sorted(b.ok for b in study.batches) == [False, False, True, True]
    failed = [b for b in study.batches if not b.ok]
    assert all("Unable to identify subject." in b.error for b in failed)
    assert study.verify is None  # nothing to verify while batches are missing
    key = resume_key(client.base_url, target.key)
    assert len(journal.done(key)) == 2

    xnat_emulator.faults.clear()
    second = upload_session(client, export, target, workers=4, journal=journal, **FAST)
    assert second.ok, second
    (study,) = second.sessions
    assert sorted(b.resumed for b in study.batches) == [False, False, True, True]
    assert second.files_sent == sum(len(b.files) for b in failed)
    assert archived(xnat_emulator, "RESUME")["scans"] == {"1": 4, "2": 4, "3": 4}
    assert len(journal.done(key)) == 4  # verified: the journal keeps what was delivered

    third = upload_session(client, export, target, workers=4, journal=journal, **FAST)
    assert third.ok and third.files_sent == 0 and third.sessions[0].verified  # nothing new: nothing sent

    changed = min(p for p in export.rglob("*") if p.is_file())
    os.utime(changed, (changed.stat().st_atime, changed.stat().st_mtime + 60))  # touched since: a new batch
    fourth = upload_session(client, export, target, workers=4, journal=journal, **FAST)
    (study,) = fourth.sessions
    (resent,) = [b for b in study.batches if not b.resumed]
    assert fourth.ok and study.verified and changed.relative_to(export).as_posix() in resent.files
    assert fourth.files_sent == len(resent.files) < 12


def test_gradual_resume_skips_instances_that_landed(xnat_emulator, client, export, tmp_path) -> None:
    journal = UploadJournal(tmp_path / "journal")
    target = UploadTarget("TEST", "SUBJ01", "GRESUME")
    xnat_emulator.faults.add(
        path="/data/services/import",
        method="POST",
        after=7,
        times=None,
        status=400,
        message="Unable to identify subject.",
    )
    first = upload_session(client, export, target, gradual=True, workers=2, journal=journal, **FAST)
    assert not first.ok and len(first.sessions[0].failed_files) == 5
    xnat_emulator.faults.clear()
    second = upload_session(client, export, target, gradual=True, workers=2, journal=journal, **FAST)
    assert second.ok, second
    assert second.files_sent == 5 and second.sessions[0].gradual.resumed_count == 7
    assert archived(xnat_emulator, "GRESUME")["scans"] == {"1": 4, "2": 4, "3": 4}


def test_multi_study_input_needs_per_study(xnat_emulator, client, tmp_path) -> None:
    root = tmp_path / "two"
    uids = write_studies(root, studies=2, series=2, instances=2)
    with pytest.raises(InputError) as info:
        upload_session(client, root, UploadTarget("TEST", "SUBJ01", "MULTI"), **FAST)
    assert all(uid in str(info.value) for uid in uids)
    assert "per_study" in info.value.hint

    result = upload_session(client, root, UploadTarget("TEST", "SUBJ01", "MULTI"), per_study=True, **FAST)
    assert result.ok, result
    assert [s.target.session for s in result.sessions] == [study_label("MULTI", uid) for uid in uids]
    assert {e["label"]: e["UID"] for e in xnat_emulator.archived_experiments("TEST")} == {
        study_label("MULTI", s.study_uid): s.study_uid for s in result.sessions
    }


def test_adding_a_study_that_sorts_first_keeps_every_label_on_its_study(xnat_emulator, client, tmp_path) -> None:
    """--per-study labels once followed path order, so a new study sorting first shifted every
    label and each re-run merged one study into another's session (exit 0, "verified")."""
    root = tmp_path / "export"
    b_uid, a_uid = generate_uid(), generate_uid()
    write_study(root / "b", series=2, instances=3, study_uid=b_uid)
    first = upload_session(client, root, UploadTarget("TEST", "SUBJ01", "PS"), per_study=True, **FAST)
    assert first.ok
    write_study(root / "a", series=2, instances=3, study_uid=a_uid)  # sorts before b
    again = upload_session(client, root, UploadTarget("TEST", "SUBJ01", "PS"), per_study=True, **FAST)
    assert again.ok, again
    labels = {e["label"]: e["UID"] for e in xnat_emulator.archived_experiments("TEST")}
    assert labels == {study_label("PS", b_uid): b_uid, study_label("PS", a_uid): a_uid}
    counts = {label: archived(xnat_emulator, label)["scans"] for label in labels}
    assert counts == {label: {"1": 3, "2": 3} for label in labels}  # nothing merged: 6 files each


def test_an_existing_session_of_another_study_is_refused_before_anything_is_sent(
    xnat_emulator, client, tmp_path
) -> None:
    """Uploading into a label that holds another study once merged the two (overwrite=delete
    skips XNAT's UID check). Now refused with the reason unless asked for, and the default overwrite
    (append) lets XNAT refuse it too."""
    write_study(tmp_path / "one", series=1, instances=2)
    write_study(tmp_path / "two", series=1, instances=2)
    target = UploadTarget("TEST", "SUBJ01", "TAKEN")
    assert target.overwrite == "append"
    assert upload_session(client, tmp_path / "one", target, **FAST).ok
    imports = xnat_emulator.stats()["imports"]
    with pytest.raises(ConflictError, match="already holds another study") as info:
        upload_session(client, tmp_path / "two", target, **FAST)
    assert "allow_other_study=True" in info.value.hint and info.value.reason == "other-study"
    assert "--into-other-study" in cli_hint(info.value)  # the command line words it with its flag
    assert xnat_emulator.stats()["imports"] == imports  # nothing sent
    assert archived(xnat_emulator, "TAKEN")["scans"] == {"1": 2}


def test_token_expiry_mid_upload_with_8_workers_causes_one_relogin(xnat_emulator, client, tmp_path, caplog) -> None:
    root = tmp_path / "many"
    write_study(root, series=4, instances=12)
    xnat_emulator.faults.add(path="/data/services/import", method="POST", after=12, evict_token=True)
    # A slow second login: meanwhile every other worker meets the dead session too.
    xnat_emulator.faults.add(path="/data/JSESSION", method="POST", after=1, delay_ms=300)
    with caplog.at_level("INFO", logger="xnat_flows.client"):
        result = upload_session(client, root, UploadTarget("TEST", "SUBJ01", "EXPIRY"), gradual=True, workers=8, **FAST)
    assert result.ok, result
    assert caplog.text.count("session expired (401)") >= 2  # several threads saw the 401...
    assert client.login_count == 2  # ...and there was the first login and exactly one re-login
    assert archived(xnat_emulator, "EXPIRY")["scans"] == {"1": 12, "2": 12, "3": 12, "4": 12}


def test_transient_failures_are_retried_over_the_wire(xnat_emulator, client, export) -> None:
    xnat_emulator.faults.add(path="/data/services/import", method="POST", times=1, status=503, retry_after=0.01)
    xnat_emulator.faults.add(
        path="/data/services/import", method="POST", times=1, status=400, message="Session processing in progress"
    )
    xnat_emulator.faults.add(path="/data/services/import", method="POST", times=1, drop=True)
    result = upload_session(client, export, UploadTarget("TEST", "SUBJ01", "FLAKY"), workers=2, **FAST)
    assert result.ok, result


def test_permanent_rejection_raises_with_the_server_message(xnat_emulator, client, export) -> None:
    rule = xnat_emulator.faults.add(
        path="/data/services/import",
        method="POST",
        times=None,
        status=400,
        message="Unable to identify destination project",
    )
    batch = scan_directory(export).files
    with pytest.raises(PermanentUploadError, match="Unable to identify destination project"):
        upload_batch(client, batch, UploadTarget("TEST", "SUBJ01", "NOPE"))
    assert rule.fired == 1  # no retry of a permanent rejection


def test_html_login_page_means_wrong_password(tmp_path, xnat_emulator_factory) -> None:
    emulator = xnat_emulator_factory(tmp_path / "xnat", login_failure_mode="html200")
    with connect(emulator, tmp_path, password="wrong") as xnat, pytest.raises(AuthenticationError, match="web page"):
        xnat.whoami()


def test_single_batch_upload_api(xnat_emulator, client, export) -> None:
    files = scan_directory(export).files
    batches = partition_by_bytes(files, 3)
    results = [
        upload_batch(client, b, UploadTarget("TEST", "SUBJ01", "BATCHED"), "zip", index=i)
        for i, b in enumerate(batches)
    ]
    assert [r.index for r in results] == [0, 1, 2] and all(r.ok for r in results)
    assert sum(len(r.files) for r in results) == 12


def test_token_expiry_during_dicom_zip_batches(xnat_emulator, client, tmp_path) -> None:
    root = tmp_path / "zip"
    write_study(root, series=4, instances=10)
    xnat_emulator.faults.add(path="/data/services/import", method="POST", after=1, evict_token=True)
    result = upload_session(client, root, UploadTarget("TEST", "SUBJ01", "ZIPEXPIRY"), workers=4, **FAST)
    assert result.ok, result
    assert client.login_count == 2


@pytest.mark.parametrize("gradual", [False, True], ids=["dicom-zip", "gradual"])
def test_a_complete_upload_is_archived_at_once_not_after_the_idle_interval(
    xnat_emulator_factory, tmp_path, export, gradual
) -> None:
    """XNAT waits its idle interval (5 min by default; an hour here) before it archives a
    Direct-Archive session; once every file is in, the upload asks it to archive at once."""
    emulator = xnat_emulator_factory(tmp_path / "xnat", rebuild_idle_seconds=3600)
    with connect(emulator, tmp_path) as xnat:
        result = upload_session(xnat, export, UploadTarget("TEST", "S", "NOW"), gradual=gradual, **FAST)
        assert result.ok and result.sessions[0].verify.found_count == 12
        assert result.sessions[0].verify.waited_seconds < 10
        assert archived(emulator, "NOW")["scans"] == {"1": 4, "2": 4, "3": 4}

        # Left to the idle interval on request: received, not archived.
        waiting = UploadTarget("TEST", "S", "IDLE", archive_when_complete=False)
        other = tmp_path / "other"
        write_study(other, series=1, instances=2)
        result = upload_session(xnat, other, waiting, gradual=gradual, verify=False)
        assert result.sessions[0].uploaded
        listed = direct_archive_sessions(xnat, "TEST")
        assert [(row["label"], row["status"]) for row in listed] == [("IDLE", "RECEIVING")]
        assert not [e for e in emulator.archived_experiments("TEST") if e["label"] == "IDLE"]
