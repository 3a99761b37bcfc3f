"""The ``ingest-inbox`` flow against the emulator (Prefect's test harness, in-process)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from orchestration_helpers import write_session

from xnat_flows.client.errors import XnatConnectionError
from xnat_flows.flows import inbox as inbox_flow
from xnat_flows.flows.inbox import InboxRunResult, ingest_inbox
from xnat_flows.models import XnatConnection
from xnat_flows.testing import XnatEmulator


@pytest.fixture
def inbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XNAT_USER", "admin")
    monkeypatch.setenv("XNAT_PASS", "admin")
    root = tmp_path / "inbox"
    root.mkdir()
    return root


def _experiments(xnat: XnatEmulator) -> dict[str, str]:
    """label -> subject label of the sessions in the emulator's archive."""
    rows = httpx.get(
        f"{xnat.url}/data/projects/TEST/experiments", params={"format": "json"}, auth=("admin", "admin")
    ).json()
    return {row["label"]: row["subject_label"] for row in rows["ResultSet"]["Result"]}


def test_quiet_period_then_upload_then_nothing_twice(
    prefect_harness: None, xnat_emulator: XnatEmulator, inbox: Path
) -> None:
    write_session(inbox / "good", patient_id="P010", study_date="20240102")
    write_session(inbox / "anonymised", patient_id="")
    connection = XnatConnection(url=xnat_emulator.url)

    waiting = ingest_inbox(str(inbox), "TEST", quiet_seconds=3600, connection=connection, workers=2)
    assert isinstance(waiting, InboxRunResult)
    assert waiting.items == [] and sorted(waiting.waiting) == ["anonymised", "good"]
    assert xnat_emulator.stats()["imports"] == 0

    state = ingest_inbox(str(inbox), "TEST", quiet_seconds=0, connection=connection, workers=2, return_state=True)
    assert state.is_failed() and "anonymised moved to" in state.message and "RoutingError" in state.message
    assert _experiments(xnat_emulator) == {"P010_20240102": "P010"}
    done = json.loads((inbox / "done" / "good.report.json").read_text())
    assert done["status"] == "done" and done["route"]["sources"]["session"] == "template"
    assert done["sessions"][0]["verified"] is True and done["files_sent"] == 4
    failed = json.loads((inbox / "failed" / "anonymised.report.json").read_text())
    assert failed["status"] == "failed" and "PatientID is empty" in failed["error"] and failed["hint"]
    assert (inbox / "failed" / "anonymised" / "series1" / "IM0001").is_file()  # nothing lost

    imports = xnat_emulator.stats()["imports"]
    again = ingest_inbox(str(inbox), "TEST", quiet_seconds=0, connection=connection)
    assert again.items == [] and xnat_emulator.stats()["imports"] == imports


def test_folder_left_in_processing_by_a_crash_is_uploaded_by_the_next_run(
    prefect_harness: None, xnat_emulator: XnatEmulator, inbox: Path
) -> None:
    # What a run that died mid-upload leaves: the claimed folder in processing/, nobody holding it.
    write_session(inbox / "processing" / "crashed", patient_id="P011", study_date="20240103")
    result = ingest_inbox(str(inbox), "TEST", quiet_seconds=0, connection=XnatConnection(url=xnat_emulator.url))
    assert [(i.folder, i.status, i.recovered) for i in result.items] == [("crashed", "done", True)]
    assert _experiments(xnat_emulator) == {"P011_20240103": "P011"}
    assert json.loads((inbox / "done" / "crashed.report.json").read_text())["recovered_after_crash"] is True
    assert list((inbox / "processing").iterdir()) == []


def test_server_unreachable_keeps_the_folder_for_the_next_run(
    prefect_harness: None, inbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(connection: XnatConnection, project: str) -> None:
        """The run's first call to the server, failing as it does once the client's retries are spent."""
        raise XnatConnectionError("Cannot connect to http://127.0.0.1:9: Connection refused")

    monkeypatch.setattr(inbox_flow, "check_project", unreachable)
    write_session(inbox / "later", patient_id="P012")
    state = ingest_inbox(
        str(inbox), "TEST", quiet_seconds=0, connection=XnatConnection(url="http://127.0.0.1:9"), return_state=True
    )
    assert state.is_failed() and "later kept in" in state.message  # an outage is a failed run, so alerts fire
    assert not (inbox / "failed").exists() or list((inbox / "failed").iterdir()) == []
    assert (inbox / "processing" / "later" / "series1" / "IM0001").is_file()
    note = json.loads((inbox / "processing" / "later.last-attempt.json").read_text())
    assert note["status"] == "retry" and "Connection refused" in note["error"]
    # The claim was released: the next run takes the folder up again.
    retried = ingest_inbox(
        str(inbox), "TEST", quiet_seconds=0, connection=XnatConnection(url="http://127.0.0.1:9"), return_state=True
    )
    assert retried.is_failed()
    note = json.loads((inbox / "processing" / "later.last-attempt.json").read_text())
    assert note["recovered_after_crash"] is False  # released for the outage, not left by a crash


def test_refused_credentials_keep_every_folder_and_stop_at_the_first_refusal(
    prefect_harness: None, xnat_emulator: XnatEmulator, inbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong password is the Block's fault, not the folders': they stay for the run after the Block
    is fixed, and the run does not try one login per folder (XNAT locks accounts after failed logins)."""
    monkeypatch.setenv("XNAT_PASS", "not-the-password")
    for name in ("a-first", "b-second", "c-third"):
        write_session(inbox / name, patient_id=f"P0{name[0]}")
    state = ingest_inbox(
        str(inbox), "TEST", quiet_seconds=0, connection=XnatConnection(url=xnat_emulator.url), return_state=True
    )
    assert state.is_failed() and "AuthenticationError" in state.message
    assert "not tried (left where they are)" in state.message
    assert not (inbox / "failed").exists() or list((inbox / "failed").iterdir()) == []
    assert (inbox / "processing" / "a-first" / "series1" / "IM0001").is_file()  # kept for the next run
    # not claimed, so not tried: one refused login in the whole run
    assert (inbox / "b-second" / "series1" / "IM0001").is_file() and (inbox / "c-third").is_dir()

    monkeypatch.setenv("XNAT_PASS", "admin")  # the Block fixed: the next run uploads all three
    result = ingest_inbox(str(inbox), "TEST", quiet_seconds=0, connection=XnatConnection(url=xnat_emulator.url))
    assert sorted((i.folder, i.status) for i in result.items) == [
        ("a-first", "done"),
        ("b-second", "done"),
        ("c-third", "done"),
    ]
    # each in the archive once, in its own session
    assert _experiments(xnat_emulator) == {"P0a_20240115": "P0a", "P0b_20240115": "P0b", "P0c_20240115": "P0c"}


def test_incomplete_upload_during_an_outage_keeps_the_folder(
    prefect_harness: None, xnat_emulator: XnatEmulator, inbox: Path
) -> None:
    """Batches that did not land (here refused at once, so the test needs no retry back-off; an outage
    that outlasts the retries ends the same way) used to move the folder to failed/, although a
    re-run sends only what is missing."""
    write_session(inbox / "brief-outage", patient_id="P014", series=2, instances=2)
    xnat_emulator.faults.add(
        method="POST", path=r"/data/services/import", status=400, message="Unable to identify subject.", times=100
    )
    state = ingest_inbox(
        str(inbox),
        "TEST",
        quiet_seconds=0,
        connection=XnatConnection(url=xnat_emulator.url),
        workers=2,
        return_state=True,
    )
    assert state.is_failed() and "brief-outage kept in" in state.message
    assert (inbox / "processing" / "brief-outage" / "series1" / "IM0001").is_file()
    xnat_emulator.faults.clear()
    result = ingest_inbox(
        str(inbox), "TEST", quiet_seconds=0, connection=XnatConnection(url=xnat_emulator.url), workers=2
    )
    assert [(i.folder, i.status, i.recovered) for i in result.items] == [("brief-outage", "done", False)]
    assert "P014_20240115" in _experiments(xnat_emulator)


def test_unknown_project_is_refused_before_anything_is_sent(
    prefect_harness: None, xnat_emulator: XnatEmulator, inbox: Path
) -> None:
    write_session(inbox / "wrong-project", patient_id="P013")
    (inbox / "wrong-project" / "xnat.json").write_text(json.dumps({"project": "NOSUCHPROJECT"}))
    state = ingest_inbox(
        str(inbox), "TEST", quiet_seconds=0, connection=XnatConnection(url=xnat_emulator.url), return_state=True
    )
    assert state.is_failed()
    report = json.loads((inbox / "failed" / "wrong-project.report.json").read_text())
    assert report["status"] == "failed" and report["route"]["project"] == "NOSUCHPROJECT"
    assert "does not exist" in report["error"]  # checked first: XNAT would file it under Unassigned
    assert (inbox / "failed" / "wrong-project" / "xnat.json").is_file()
    assert xnat_emulator.stats()["imports"] == 0


def test_inbox_deidentifies_and_files_a_folder_the_script_cannot_take_under_failed(
    prefect_harness: None, xnat_emulator: XnatEmulator, inbox: Path
) -> None:
    import pydicom

    from xnat_flows.models import Deidentification

    write_session(inbox / "clean", patient_id="P020", study_date="20240104")
    unreadable_for_script = write_session(inbox / "report", patient_id="P021", study_date="20240105")
    ds = pydicom.dcmread(unreadable_for_script[0])
    del ds.PixelData  # alterPixels has nothing to blank in it
    ds.save_as(unreadable_for_script[0], enforce_file_format=True)
    script = 'version "6.1"\n(0010,0010) := subject\n(0010,0020) := session\n- (0010,0030)\n'
    script += 'alterPixels["rectangle", "l=0, t=0, r=4, b=4", "solid", "v=0"]\n'

    state = ingest_inbox(
        str(inbox),
        "TEST",
        quiet_seconds=0,
        connection=XnatConnection(url=xnat_emulator.url),
        deidentify=Deidentification(script=script),
        return_state=True,
    )
    assert state.is_failed() and "report moved to" in state.message
    stored = [pydicom.dcmread(p) for p in xnat_emulator.archived_files("P020_20240104").values()]
    assert len(stored) == 4 and {str(d.PatientName) for d in stored} == {"P020"}
    assert {d.PatientID for d in stored} == {"P020_20240104"} and all("PatientBirthDate" not in d for d in stored)
    failed = json.loads((inbox / "failed" / "report.report.json").read_text())
    assert "NotDeidentifiedError" in failed["error"] and "not de-identified" in failed["error"]
    assert (inbox / "failed" / "report" / "series1" / "IM0001").is_file()  # the original, untouched


def test_the_deidentification_gate_files_a_folder_whose_identifiers_survive_under_failed_unsent(
    prefect_harness: None, xnat_emulator: XnatEmulator, inbox: Path
) -> None:
    from xnat_flows.models import Deidentification

    write_session(inbox / "leaky", patient_id="P030", study_date="20240106")
    script = 'version "6.1"\n(0010,0010) := subject\n(0010,0020) := session\n'  # dates, UIDs... stay
    state = ingest_inbox(
        str(inbox),
        "TEST",
        quiet_seconds=0,
        connection=XnatConnection(url=xnat_emulator.url),
        deidentify=Deidentification(script=script, require_clean=True, allow=["StudyDate"]),
        return_state=True,
    )
    assert state.is_failed() and "identifying attributes survive: AcquisitionDate" in state.message
    assert "nothing was sent" in state.message and "StudyDate" not in state.message  # allowed: kept on purpose
    failed = json.loads((inbox / "failed" / "leaky.report.json").read_text())
    assert failed["error"].startswith("IdentifiersSurvive: script: identifying attributes survive")
    assert xnat_emulator.stats()["imports"] == 0
    assert (inbox / "failed" / "leaky" / "series1" / "IM0001").is_file()  # the original, untouched


def test_files_that_arrive_during_the_upload_are_sent_before_the_folder_is_done(
    prefect_harness: None, xnat_emulator: XnatEmulator, inbox: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """150 of 200 files are in the folder when it is claimed; the other 50 arrive
    (from a thread) while it is uploaded. The folder is not filed as done with 150 delivered: it
    stays in processing/, and once quiet the next run sends it again, so done/ means all 200."""
    import shutil
    import threading

    from xnat_flows.testing.synth import write_studies

    manifest = write_studies(tmp_path / "export", series=4, instances=200, instance_kb=2, seed=49)
    assert len(manifest.files) == 200
    late = manifest.files[150:]
    for item in manifest.files[:150]:
        target = inbox / "arriving" / item.path.relative_to(tmp_path / "export")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(item.path, target)
    real_upload = inbox_flow.upload_dicom_session
    import xnat_flows.tasks.upload as upload_tasks

    real_scan = upload_tasks.scan_directory
    scanned = threading.Event()

    def scan_then_signal(*args, **kwargs):
        result = real_scan(*args, **kwargs)
        scanned.set()
        return result

    monkeypatch.setattr(upload_tasks, "scan_directory", scan_then_signal)

    def upload_while_files_arrive(**kwargs):
        folder = Path(kwargs["request"].source_dir)  # in processing/ now

        def exporter() -> None:
            scanned.wait(60)  # the 50 arrive after the upload scanned the folder, while it sends
            for item in late:
                target = folder / item.path.relative_to(tmp_path / "export")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(item.path, target)

        writer = threading.Thread(target=exporter)
        xnat_emulator.faults.add(method="POST", path=r"/data/services/import", delay_ms=1000, times=1)
        writer.start()
        try:
            return real_upload(**kwargs)
        finally:
            writer.join(60)

    monkeypatch.setattr(inbox_flow, "upload_dicom_session", upload_while_files_arrive)
    connection = XnatConnection(url=xnat_emulator.url)
    first = ingest_inbox(str(inbox), "TEST", quiet_seconds=0, connection=connection, workers=1, return_state=True)

    assert (
        first.is_failed() and "arriving kept in" in first.message and "changed while it was uploaded" in first.message
    )
    assert not (inbox / "done" / "arriving").exists()
    on_disk = [p for p in (inbox / "processing" / "arriving").rglob("*") if p.is_file()]
    assert len(on_disk) == 200

    monkeypatch.setattr(inbox_flow, "upload_dicom_session", real_upload)
    monkeypatch.setattr(upload_tasks, "scan_directory", real_scan)
    waiting = ingest_inbox(str(inbox), "TEST", quiet_seconds=3600, connection=connection)
    assert waiting.waiting == ["arriving"] and waiting.items == []  # changed just now: not quiet yet
    second = ingest_inbox(str(inbox), "TEST", quiet_seconds=0, connection=connection, workers=2)
    assert [(i.folder, i.status) for i in second.items] == [("arriving", "done")]
    assert second.items[0].files_delivered == 200
    (experiment,) = xnat_emulator.archived_experiments("TEST")
    assert len(xnat_emulator.archived_files(experiment["ID"])) == 200
    assert len([p for p in (inbox / "done" / "arriving").rglob("*") if p.is_file()]) == 200


def test_a_missing_inbox_folder_is_one_line_that_says_what_to_do(
    prefect_harness: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "unmounted" / "inbox"
    with caplog.at_level("INFO"):
        state = ingest_inbox(
            str(missing),
            "TEST",
            quiet_seconds=0,
            connection=XnatConnection(url="http://127.0.0.1:9"),
            return_state=True,
        )
    assert state.is_failed()
    assert f"the inbox folder {missing} does not exist on this worker's host" in state.message
    assert "XNAT_INBOX_DIR" in state.message and "\n" not in state.message
    assert "Traceback" not in caplog.text
    assert not missing.exists()  # a run never creates the inbox: a typo would swallow the drops elsewhere
