"""Prearchive library end to end against the XNAT emulator: every status and odd answer."""

from __future__ import annotations

import pytest
from manage_helpers import dicom_zip, emulator_client, import_study, stage_session

from xnat_flows.client import archive, prearchive
from xnat_flows.client.errors import ConflictError, NotFoundError, XnatError

pytestmark = pytest.mark.e2e


def test_list_then_archive_ready_session_under_new_subject_and_label(client):
    staged = stage_session(client, "TEST", "S1")
    assert staged.status == "READY" and staged.subject == "SUB1" and staged.folder_name == "S1"
    assert [s.name for s in prearchive.list_sessions(client)] == ["S1"]

    outcome = prearchive.archive_session(client, "TEST", staged.timestamp, "S1", subject="NEWSUB", label="NEWLABEL")

    assert outcome.archive_uri and outcome.archive_uri.startswith("/data/archive/projects/TEST/subjects/")
    assert outcome.status_before == "READY" and not outcome.already_archived
    found = archive.find_archived(client, "TEST", "NEWLABEL", subject="NEWSUB")
    assert found is not None and outcome.archive_uri.endswith(found.experiment_id)
    assert prearchive.list_sessions(client, "TEST") == []


def test_archiving_twice_reports_already_archived(client):
    staged = stage_session(client, "TEST", "S1")
    first = prearchive.archive_session(client, "TEST", staged.timestamp, "S1")
    again = prearchive.archive_session(client, "TEST", staged.timestamp, "S1")
    assert again.already_archived and again.label == "S1"
    assert again.archive_uri == f"/data/experiments/{first.archive_uri.rsplit('/', 1)[-1]}"


def test_unknown_session_not_in_archive_is_not_found(client):
    with pytest.raises(NotFoundError, match="no archived session labelled 'NOPE'"):
        prearchive.archive_session(client, "TEST", "20000101_000000000", "NOPE")


def test_receiving_session_is_waited_for_then_archived(xnat_emulator_factory):
    # A 2 s idle interval: long enough to see RECEIVING even on a busy machine, short for a test.
    xnat = xnat_emulator_factory(rebuild_idle_seconds=2.0)
    with emulator_client(xnat) as client:
        client.request("PUT", "/data/projects/TEST/prearchive_code/0")
        staged = stage_session(client, "TEST", "S1", commit=False)
        assert staged.status == "RECEIVING"
        notices: list[str] = []
        outcome = prearchive.archive_session(
            client, "TEST", staged.timestamp, "S1", wait_seconds=20, poll_seconds=0.1, on_wait=notices.append
        )
    assert outcome.archive_uri and outcome.status_before == "READY"
    assert notices and "RECEIVING" in notices[0]


def test_receiving_wait_is_bounded(xnat_emulator_factory):
    xnat = xnat_emulator_factory(rebuild_idle_seconds=600)
    with emulator_client(xnat) as client:
        client.request("PUT", "/data/projects/TEST/prearchive_code/0")
        staged = stage_session(client, "TEST", "S1", commit=False)
        with pytest.raises(archive.WaitTimeoutError, match="still RECEIVING") as raised:
            prearchive.archive_session(client, "TEST", staged.timestamp, "S1", wait_seconds=0.3, poll_seconds=0.1)
    assert raised.value.retryable


def test_conflict_status_needs_an_overwrite_choice(client, manual_xnat):
    manual_xnat.faults.force_next_session("CONFLICT")
    staged = stage_session(client, "TEST", "S1")
    assert staged.status == "CONFLICT"
    with pytest.raises(ConflictError, match="append") as raised:
        prearchive.archive_session(client, "TEST", staged.timestamp, "S1")
    assert "overwrite" in str(raised.value)
    outcome = prearchive.archive_session(client, "TEST", staged.timestamp, "S1", overwrite="append")
    assert outcome.archive_uri and outcome.overwrite == "append" and outcome.status_before == "CONFLICT"


def test_session_already_in_archive_conflicts_until_merged(client):
    body = dicom_zip()
    first = stage_session(client, "TEST", "S1", body=body)
    prearchive.archive_session(client, "TEST", first.timestamp, "S1")
    second = stage_session(client, "TEST", "S1", body=dicom_zip(series=1))  # another study, same label
    with pytest.raises(ConflictError) as raised:
        prearchive.archive_session(client, "TEST", second.timestamp, "S1")
    assert raised.value.status == 409
    merged = prearchive.archive_session(client, "TEST", second.timestamp, "S1", overwrite="delete")
    assert merged.archive_uri and not merged.already_archived


def test_error_status_reports_the_session_log(client, manual_xnat):
    manual_xnat.faults.force_next_session("ERROR")
    staged = stage_session(client, "TEST", "S1")
    with pytest.raises(prearchive.PrearchiveSessionFailed) as raised:
        prearchive.archive_session(client, "TEST", staged.timestamp, "S1")
    assert raised.value.logs and "forced by fault injection" in raised.value.logs[-1]
    assert "forced by fault injection" in str(raised.value)


def test_failure_inside_a_200_body_is_detected(client, manual_xnat):
    staged = stage_session(client, "TEST", "S1")
    manual_xnat.faults.add(
        path="/data/services/archive", method="POST", error_body="Error: the archive operation failed (disk full)"
    )
    with pytest.raises(XnatError, match="disk full") as raised:
        prearchive.archive_session(client, "TEST", staged.timestamp, "S1")
    assert raised.value.status == 200
    assert [s.status for s in prearchive.list_sessions(client, "TEST")] == ["READY"]


@pytest.mark.parametrize("fault", [{"drop": True}, {"status": 423, "message": "Duplicate archive attempt."}])
def test_a_lost_or_busy_archive_answer_is_rechecked_not_reported(client, manual_xnat, fault):
    staged = stage_session(client, "TEST", "S1")
    rule = manual_xnat.faults.add(path="/data/services/archive", method="POST", **fault)
    outcome = prearchive.archive_session(client, "TEST", staged.timestamp, "S1", poll_seconds=0.05)
    assert rule.fired == 1
    assert outcome.archive_uri and archive.find_archived(client, "TEST", "S1") is not None


def test_delete_failure_inside_a_200_body_is_detected(client, manual_xnat):
    staged = stage_session(client, "TEST", "S1")
    manual_xnat.faults.add(
        path="/data/prearchive/projects/TEST", method="DELETE", error_body="Deletion failed: session locked"
    )
    with pytest.raises(XnatError, match="session locked"):
        prearchive.delete_session(client, "TEST", staged.timestamp, "S1")


def test_move_then_delete(client):
    staged = stage_session(client, "TEST", "S1")
    uri = prearchive.move_session(client, "TEST", staged.timestamp, "S1", "OTHER")
    assert uri == f"/data/prearchive/projects/OTHER/{staged.timestamp}/S1"
    assert prearchive.list_sessions(client, "TEST") == []
    (moved,) = prearchive.list_sessions(client, "OTHER")
    prearchive.delete_session(client, "OTHER", moved.timestamp, moved.folder_name)
    assert prearchive.list_sessions(client, "OTHER") == []
    with pytest.raises(NotFoundError):
        prearchive.delete_session(client, "OTHER", moved.timestamp, moved.folder_name)


def test_wait_for_archive_follows_auto_archiving(client):
    client.request("PUT", "/data/projects/TEST/prearchive_code/4")
    import_study(client, "TEST", "AUTO", commit=False)  # archived by the idle rebuilder a moment later
    found = archive.wait_for_archive(client, "TEST", "AUTO", timeout=30, poll=0.1)
    assert found.experiment_id and found.label == "AUTO"
