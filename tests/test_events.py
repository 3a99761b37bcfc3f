"""Event names, resources and payloads; nothing secret ever leaves in an event."""

from __future__ import annotations

import json

from prefect.events.worker import EventsWorker

from xnat_flows.client.prearchive import ArchiveOutcome
from xnat_flows.events import (
    SESSION_ARCHIVED,
    SESSION_UPLOADED,
    UPLOAD_FAILED,
    SessionRef,
    announce_archived,
    emit_archive_outcome,
    emit_session_archived,
    emit_session_uploaded,
    emit_upload_failed,
    emit_upload_result,
    redact,
    session_resource,
)
from xnat_flows.transfer.target import UploadTarget
from xnat_flows.transfer.upload_result import BatchResult, SessionResult, UploadResult
from xnat_flows.transfer.verify import VerifyResult

SERVER = "https://svc:hunter2@xnat.example.org:8443/xnat/?token=abc"


def _outcome(
    *,
    session: str = "P001_20240115",
    session_uri: str = "/data/experiments/XNAT_E00001",
    experiment_id: str | None = "XNAT_E00001",
    verified: bool | None = True,
    failed_files: tuple[str, ...] = (),
) -> SessionResult:
    """A session of 4 files sent (1000 bytes) in one batch, plus a failed batch of ``failed_files``;
    verified (or not) as said."""
    batches = [BatchResult(index=0, files=("a", "b", "c", "d"), bytes=1000, seconds=1.0, uris=(session_uri,), ok=True)]
    if failed_files:
        batches.append(BatchResult(index=1, files=failed_files, bytes=10, seconds=1.0, ok=False, error="refused"))
    verify = (
        None
        if verified is None
        else VerifyResult(ok=verified, experiment_id=experiment_id, uri=session_uri, expected_count=4, found_count=4)
    )
    return SessionResult(
        study_uid="1.2.3",
        target=UploadTarget("TEST", "P001", session),
        files=4 + len(failed_files),
        bytes=1000,
        batches=batches,
        verify=verify,
    )


def test_session_resource_names_the_session_on_its_server_without_credentials() -> None:
    resource = session_resource(
        SessionRef(SERVER, "TEST", "P001", "P001_MR", "XNAT_E00001", "/data/experiments/XNAT_E00001")
    )
    assert resource == {
        "prefect.resource.id": "xnat.session.xnat.example.org:8443.TEST.XNAT_E00001",
        "prefect.resource.name": "TEST/P001/P001_MR",
        "xnat.server": "https://xnat.example.org:8443/xnat",
        "xnat.project": "TEST",
        "xnat.subject": "P001",
        "xnat.experiment_id": "XNAT_E00001",
        "xnat.session_label": "P001_MR",
        "xnat.uri": "https://xnat.example.org:8443/xnat/data/experiments/XNAT_E00001",
    }


def test_resource_falls_back_to_the_label_and_omits_unknown_fields() -> None:
    resource = session_resource(SessionRef("http://127.0.0.1:8080", "TEST", None, "S1_MR"))
    assert resource["prefect.resource.id"] == "xnat.session.127.0.0.1:8080.TEST.S1_MR"
    assert "xnat.experiment_id" not in resource and "xnat.subject" not in resource


def test_redact_removes_credentials_from_messages() -> None:
    text = redact("login failed for https://svc:hunter2@xnat/ password=hunter2 token: abc")
    assert "hunter2" not in text and "abc" not in text
    assert "https://***@xnat/" in text
    assert len(redact("x" * 10_000)) < 2100


def test_direct_archive_upload_emits_uploaded_then_archived(events_worker: EventsWorker) -> None:
    emitted = emit_session_uploaded(_outcome(), SERVER, direct_archive=True, transport="dicom-zip")
    assert [e.event for e in emitted] == [SESSION_UPLOADED, SESSION_ARCHIVED]
    uploaded, archived = emitted
    assert uploaded.payload["files_sent"] == 4 and uploaded.payload["verified"] is True
    assert archived.follows == uploaded.id
    assert archived.resource["xnat.experiment_id"] == "XNAT_E00001"


def test_prearchive_upload_is_not_announced_as_archived(events_worker: EventsWorker) -> None:
    # Verified in the prearchive (a project that holds uploads): no experiment ID, not archived yet.
    held = _outcome(experiment_id=None, session_uri="/data/prearchive/projects/TEST/20240115_120000123/P001_20240115")
    emitted = emit_session_uploaded(held, SERVER, direct_archive=False)
    assert [e.event for e in emitted] == [SESSION_UPLOADED]
    unverified = emit_session_uploaded(_outcome(verified=None, experiment_id=None), SERVER, direct_archive=True)
    assert [e.event for e in unverified] == [SESSION_UPLOADED]


def test_prearchive_upload_that_auto_archive_took_in_is_announced_as_archived(events_worker: EventsWorker) -> None:
    """direct_archive=False into an auto-archive project: verification found it archived, so processing chains."""
    emitted = emit_session_uploaded(_outcome(), SERVER, direct_archive=False)
    assert [e.event for e in emitted] == [SESSION_UPLOADED, SESSION_ARCHIVED]
    assert emitted[1].payload == {"via": "auto-archive"}


def test_archived_and_failed_helpers_take_plain_fields(events_worker: EventsWorker) -> None:
    archived = emit_session_archived(
        SERVER, "TEST", "P001", "P001_MR", uri="/data/archive/projects/TEST/subjects/P001/experiments/P001_MR"
    )
    failed = emit_upload_failed(
        SERVER, "TEST", None, "P001_MR", RuntimeError("HTTP 401 for https://svc:hunter2@xnat"), source="/inbox/failed/x"
    )
    assert archived is not None and archived.event == SESSION_ARCHIVED and archived.payload == {"via": "prearchive"}
    assert failed is not None and failed.event == UPLOAD_FAILED
    assert failed.payload["error"].startswith("RuntimeError: HTTP 401")


def test_no_secret_in_any_emitted_event(events_worker: EventsWorker) -> None:
    emit_session_uploaded(_outcome(), SERVER)
    emit_upload_failed(SERVER, "TEST", "P001", "S", "password=hunter2 rejected")
    emit_session_archived(SERVER, "TEST", "P001", "S")
    events_worker.drain()
    events = events_worker._client.events
    assert len(events) == 4
    for event in events:
        text = json.dumps(event.model_dump(mode="json"))
        assert "hunter2" not in text and "token=abc" not in text and "svc:" not in text


def test_upload_result_reports_each_session_by_its_outcome(events_worker: EventsWorker) -> None:
    good = _outcome()
    partial = _outcome(session="P001_2", experiment_id=None, verified=None, failed_files=("s1/IM1", "s1/IM2"))
    result = UploadResult(sessions=[good, partial], seconds=1.0, upload_seconds=1.0)
    emitted = emit_upload_result(result, SERVER, direct_archive=True, transport="dicom-zip", source="/data/x")
    assert [(e.event, e.resource["xnat.session_label"]) for e in emitted] == [
        (SESSION_UPLOADED, "P001_20240115"),
        (SESSION_ARCHIVED, "P001_20240115"),
        (UPLOAD_FAILED, "P001_2"),
    ]
    assert emitted[2].payload["files_failed"] == 2 and "s1/IM1" in emitted[2].payload["error"]


def test_archive_outcome_of_the_prearchive_flow(events_worker: EventsWorker) -> None:
    outcome = ArchiveOutcome(
        project="TEST",
        timestamp="20240115_120000",
        folder_name="S1_MR",
        label="S1_MR",
        subject="S1",
        archive_uri="/data/archive/projects/TEST/subjects/S1/experiments/S1_MR",
    )
    event = emit_archive_outcome(outcome, "http://127.0.0.1:8080")
    assert event is not None and event.event == SESSION_ARCHIVED
    assert event.resource["prefect.resource.id"] == "xnat.session.127.0.0.1:8080.TEST.S1_MR"
    assert (
        event.resource["xnat.uri"] == "http://127.0.0.1:8080/data/archive/projects/TEST/subjects/S1/experiments/S1_MR"
    )


def test_archived_is_announced_once_per_arrival(events_worker: EventsWorker, tmp_path) -> None:
    """The same files found in the same session again (a re-run) are not announced twice; other
    files are a new arrival. Two hosts announcing one arrival send one event id, which Prefect
    stores (and its triggers act on) once."""
    from xnat_flows.transfer.journal import UploadJournal

    ref = SessionRef(SERVER, "TEST", "P001", "P001_MR", "XNAT_E00001")
    journal = UploadJournal(tmp_path / "host-a")
    first = announce_archived(ref, "a" * 64, {"via": "c-store"}, journal=journal)
    again = announce_archived(ref, "a" * 64, {"via": "c-store"}, journal=journal)
    changed = announce_archived(ref, "b" * 64, {"via": "c-store"}, journal=journal)
    elsewhere = announce_archived(ref, "a" * 64, {"via": "c-store"}, journal=UploadJournal(tmp_path / "host-b"))

    assert first is not None and first.event == SESSION_ARCHIVED and first.payload == {"via": "c-store"}
    assert again is None
    assert changed is not None and changed.id != first.id
    assert elsewhere is not None and elsewhere.id == first.id
