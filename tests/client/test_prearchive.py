"""``client.prearchive`` against scripted XNAT answers (the request shapes and the odd answers the
emulator cannot easily force: 200 with an error body, 301 on move, 404 meaning "already archived"),
then end to end against the XNAT emulator: every status and odd answer."""

from __future__ import annotations

from urllib.parse import parse_qs

import httpx
import pytest
from manage_helpers import (
    dicom_zip,
    emulator_client,
    experiment_document,
    import_study,
    prearchive_row,
    result_set,
    stage_session,
)

from xnat_flows.client import archive, prearchive
from xnat_flows.client import archive as client_archive
from xnat_flows.client.errors import ConflictError, NotFoundError, XnatError

SESSION_PATH = "/data/prearchive/projects/P/20240115_120000123/S1"
LISTING_PATH = "/data/prearchive/projects/P"
ARCHIVE_URI = "/data/archive/projects/P/subjects/XNAT_S00001/experiments/XNAT_E00001"


def _json(payload: object, status: int = 200) -> httpx.Response:
    return httpx.Response(status, json=payload)


def test_list_rows_are_typed_and_folder_name_falls_back_to_name(scripted_client):
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return _json(result_set(prearchive_row(), prearchive_row(status="RECEIVING", folderName="", name="S2")))

    with scripted_client(handler) as client:
        sessions = prearchive.list_sessions(client, "P")
    assert seen == ["/data/prearchive/projects/P"]
    assert [(s.folder_name, s.status) for s in sessions] == [("S1", "READY"), ("S2", "RECEIVING")]
    assert sessions[0].model_dump(by_alias=True)["folderName"] == "S1"
    assert sessions[1].src == "/prearchive/projects/P/20240115_120000123/S2"


def test_archive_sends_src_dest_and_overwrite_as_form(scripted_client):
    posted: list[dict[str, list[str]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == LISTING_PATH:
            return _json(result_set(prearchive_row(status="CONFLICT")))
        assert request.url.path == "/data/services/archive" and request.method == "POST"
        posted.append(parse_qs(request.content.decode()))
        return httpx.Response(200, text=ARCHIVE_URI + "\r\n")

    with scripted_client(handler) as client:
        outcome = prearchive.archive_session(client, "P", "20240115_120000123", "S1", label="NEW", overwrite="append")
    assert posted == [
        {
            "src": ["/prearchive/projects/P/20240115_120000123/S1"],
            "dest": ["/archive/projects/P/subjects/SUB1/experiments/NEW"],
            "overwrite": ["append"],
        }
    ]
    assert outcome.archive_uri == ARCHIVE_URI and outcome.label == "NEW" and outcome.status_before == "CONFLICT"
    assert not outcome.already_archived


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("Session already exists with matching files.", ConflictError),
        ("The archive operation failed: java.lang.NullPointerException", XnatError),
    ],
)
def test_archive_failure_inside_a_200_body_raises(scripted_client, body, error):
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == LISTING_PATH:
            return _json(result_set(prearchive_row()))
        return httpx.Response(200, text=body)

    with scripted_client(handler) as client, pytest.raises(error) as raised:
        prearchive.archive_session(client, "P", "20240115_120000123", "S1")
    assert raised.value.status == 200 and body in str(raised.value)


def test_archive_404_means_already_archived_when_the_archive_has_the_label(scripted_client):
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == LISTING_PATH:
            return _json(result_set(prearchive_row()))
        if request.url.path == "/data/services/archive":
            return httpx.Response(404, text="Unknown prearchive session.")
        assert request.url.path == "/data/projects/P/experiments/S1"
        return _json(experiment_document())

    with scripted_client(handler) as client:
        outcome = prearchive.archive_session(client, "P", "20240115_120000123", "S1")
    assert outcome.already_archived and outcome.archive_uri == "/data/experiments/XNAT_E00001"


def test_archive_404_with_another_study_under_the_label_is_not_found(scripted_client):
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == LISTING_PATH:
            return _json(result_set(prearchive_row()))
        if request.url.path == "/data/services/archive":
            return httpx.Response(404, text="Unknown prearchive session.")
        return _json(experiment_document(uid="9.9.9"))

    with scripted_client(handler) as client, pytest.raises(NotFoundError, match="another study"):
        prearchive.archive_session(client, "P", "20240115_120000123", "S1")


def test_archive_404_without_archived_session_is_not_found(scripted_client):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, text="not found")

    with scripted_client(handler) as client, pytest.raises(NotFoundError, match="no archived session labelled 'S1'"):
        prearchive.archive_session(client, "P", "20240115_120000123", "S1")


def test_archive_waits_out_an_operation_in_progress(scripted_client):
    answers = iter([403, 200])
    statuses = iter(["READY", "READY"])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == LISTING_PATH:
            return _json(result_set(prearchive_row(status=next(statuses))))
        status = next(answers)
        if status == 403:
            return httpx.Response(403, text="Operation already in progress on this prearchive entry.")
        return httpx.Response(200, text=ARCHIVE_URI)

    waits: list[str] = []
    with scripted_client(handler) as client:
        outcome = prearchive.archive_session(
            client, "P", "20240115_120000123", "S1", poll_seconds=0.01, on_wait=waits.append
        )
    assert outcome.archive_uri == ARCHIVE_URI
    assert len(waits) == 1 and "in progress" in waits[0]


def test_move_accepts_301_with_the_new_uri_in_the_body(scripted_client):
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.method == "POST" and request.url.path == SESSION_PATH
        assert dict(request.url.params) == {"action": "move", "newProject": "Q"}
        return httpx.Response(301, text="/data/prearchive/projects/Q/20240115_120000123/S1")

    with scripted_client(handler) as client:
        uri = prearchive.move_session(client, "P", "20240115_120000123", "S1", "Q")
    assert uri == "/data/prearchive/projects/Q/20240115_120000123/S1"


def test_move_refusal_inside_a_200_body_raises(scripted_client):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="Unable to modify session data for destination project: access denied")

    with scripted_client(handler) as client, pytest.raises(XnatError, match="destination project"):
        prearchive.move_session(client, "P", "20240115_120000123", "S1", "Q")


def test_wait_for_archive_backs_off_until_the_session_appears(scripted_client, monkeypatch):
    answers = iter([404, 404, 200])
    sleeps: list[float] = []
    monkeypatch.setattr(client_archive.time, "sleep", sleeps.append)  # wait_for_archive lives in client.archive

    def handler(request: httpx.Request) -> httpx.Response:
        status = next(answers)
        return _json(experiment_document()) if status == 200 else httpx.Response(404)

    with scripted_client(handler) as client:
        found = client_archive.wait_for_archive(client, "P", "S1", timeout=60, poll=1.0)
    assert found.experiment_id == "XNAT_E00001"
    assert sleeps == [1.0, 1.5]


def test_wait_for_archive_times_out_with_a_retryable_error(scripted_client):
    with (
        scripted_client(lambda request: httpx.Response(404)) as client,
        pytest.raises(client_archive.WaitTimeoutError) as raised,
    ):
        client_archive.wait_for_archive(client, "P", "S1", timeout=0.05, poll=0.01)
    assert raised.value.retryable


def test_session_failed_error_survives_pickling():
    import pickle

    error = prearchive.PrearchiveSessionFailed("in ERROR", logs=["first", "Empty sessions cannot be archived."])
    copy = pickle.loads(pickle.dumps(error))
    assert "Empty sessions cannot be archived." in str(copy)


def test_an_error_body_quoting_the_source_uri_is_still_an_error(scripted_client):
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == LISTING_PATH:
            return _json(result_set(prearchive_row()))
        return httpx.Response(200, text="Error archiving /prearchive/projects/P/20240115_120000123/S1: disk full")

    with scripted_client(handler) as client, pytest.raises(XnatError, match="disk full"):
        prearchive.archive_session(client, "P", "20240115_120000123", "S1")


def test_queued_and_building_statuses_are_waited_for(scripted_client):
    statuses = iter(["QUEUED_BUILDING", "_BUILDING", "BUILDING", "READY"])
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == LISTING_PATH:
            seen.append(status := next(statuses))
            return _json(result_set(prearchive_row(status=status)))
        return httpx.Response(200, text=ARCHIVE_URI)

    notices: list[str] = []
    with scripted_client(handler) as client:
        outcome = prearchive.archive_session(
            client, "P", "20240115_120000123", "S1", poll_seconds=0.01, on_wait=notices.append
        )
    assert seen == ["QUEUED_BUILDING", "_BUILDING", "BUILDING", "READY"]
    assert [n.split(" is ")[1].split(";")[0] for n in notices] == ["QUEUED_BUILDING", "_BUILDING", "BUILDING"]
    assert outcome.archive_uri == ARCHIVE_URI


def test_a_status_that_never_clears_is_an_error(scripted_client):
    def handler(request: httpx.Request) -> httpx.Response:
        return _json(result_set(prearchive_row(status="SOMETHING_NEW")))

    with scripted_client(handler) as client, pytest.raises(XnatError, match="SOMETHING_NEW"):
        prearchive.archive_session(client, "P", "20240115_120000123", "S1")


@pytest.mark.e2e
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


@pytest.mark.e2e
def test_archiving_twice_reports_already_archived(client):
    staged = stage_session(client, "TEST", "S1")
    first = prearchive.archive_session(client, "TEST", staged.timestamp, "S1")
    again = prearchive.archive_session(client, "TEST", staged.timestamp, "S1")
    assert again.already_archived and again.label == "S1"
    assert again.archive_uri == f"/data/experiments/{first.archive_uri.rsplit('/', 1)[-1]}"


@pytest.mark.e2e
def test_unknown_session_not_in_archive_is_not_found(client):
    with pytest.raises(NotFoundError, match="no archived session labelled 'NOPE'"):
        prearchive.archive_session(client, "TEST", "20000101_000000000", "NOPE")


@pytest.mark.e2e
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


@pytest.mark.e2e
def test_receiving_wait_is_bounded(xnat_emulator_factory):
    xnat = xnat_emulator_factory(rebuild_idle_seconds=600)
    with emulator_client(xnat) as client:
        client.request("PUT", "/data/projects/TEST/prearchive_code/0")
        staged = stage_session(client, "TEST", "S1", commit=False)
        with pytest.raises(archive.WaitTimeoutError, match="still RECEIVING") as raised:
            prearchive.archive_session(client, "TEST", staged.timestamp, "S1", wait_seconds=0.3, poll_seconds=0.1)
    assert raised.value.retryable


@pytest.mark.e2e
def test_conflict_status_needs_an_overwrite_choice(client, manual_xnat):
    manual_xnat.faults.force_next_session("CONFLICT")
    staged = stage_session(client, "TEST", "S1")
    assert staged.status == "CONFLICT"
    with pytest.raises(ConflictError, match="append") as raised:
        prearchive.archive_session(client, "TEST", staged.timestamp, "S1")
    assert "overwrite" in str(raised.value)
    outcome = prearchive.archive_session(client, "TEST", staged.timestamp, "S1", overwrite="append")
    assert outcome.archive_uri and outcome.overwrite == "append" and outcome.status_before == "CONFLICT"


@pytest.mark.e2e
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


@pytest.mark.e2e
def test_error_status_reports_the_session_log(client, manual_xnat):
    manual_xnat.faults.force_next_session("ERROR")
    staged = stage_session(client, "TEST", "S1")
    with pytest.raises(prearchive.PrearchiveSessionFailed) as raised:
        prearchive.archive_session(client, "TEST", staged.timestamp, "S1")
    assert raised.value.logs and "forced by fault injection" in raised.value.logs[-1]
    assert "forced by fault injection" in str(raised.value)


@pytest.mark.e2e
def test_failure_inside_a_200_body_is_detected(client, manual_xnat):
    staged = stage_session(client, "TEST", "S1")
    manual_xnat.faults.add(
        path="/data/services/archive", method="POST", error_body="Error: the archive operation failed (disk full)"
    )
    with pytest.raises(XnatError, match="disk full") as raised:
        prearchive.archive_session(client, "TEST", staged.timestamp, "S1")
    assert raised.value.status == 200
    assert [s.status for s in prearchive.list_sessions(client, "TEST")] == ["READY"]


@pytest.mark.e2e
@pytest.mark.parametrize("fault", [{"drop": True}, {"status": 423, "message": "Duplicate archive attempt."}])
def test_a_lost_or_busy_archive_answer_is_rechecked_not_reported(client, manual_xnat, fault):
    staged = stage_session(client, "TEST", "S1")
    rule = manual_xnat.faults.add(path="/data/services/archive", method="POST", **fault)
    outcome = prearchive.archive_session(client, "TEST", staged.timestamp, "S1", poll_seconds=0.05)
    assert rule.fired == 1
    assert outcome.archive_uri and archive.find_archived(client, "TEST", "S1") is not None


@pytest.mark.e2e
def test_delete_failure_inside_a_200_body_is_detected(client, manual_xnat):
    staged = stage_session(client, "TEST", "S1")
    manual_xnat.faults.add(
        path="/data/prearchive/projects/TEST", method="DELETE", error_body="Deletion failed: session locked"
    )
    with pytest.raises(XnatError, match="session locked"):
        prearchive.delete_session(client, "TEST", staged.timestamp, "S1")


@pytest.mark.e2e
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


@pytest.mark.e2e
def test_wait_for_archive_follows_auto_archiving(client):
    client.request("PUT", "/data/projects/TEST/prearchive_code/4")
    import_study(client, "TEST", "AUTO", commit=False)  # archived by the idle rebuilder a moment later
    found = archive.wait_for_archive(client, "TEST", "AUTO", timeout=30, poll=0.1)
    assert found.experiment_id and found.label == "AUTO"
