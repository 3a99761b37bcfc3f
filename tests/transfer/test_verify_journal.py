"""verify_session against scripted read-back answers; the resume journal on disk."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import httpx
from pydantic import SecretStr

from xnat_flows.client.client import XnatClient
from xnat_flows.client.credentials import Credentials
from xnat_flows.client.retry import RetryPolicy
from xnat_flows.transfer.journal import UploadJournal, content_digest
from xnat_flows.transfer.scan import DicomFile
from xnat_flows.transfer.target import UploadTarget
from xnat_flows.transfer.verify import verify_session

TARGET = UploadTarget("P", "S", "E")
SESSION_PATH = "/data/projects/P/subjects/S/experiments/E"  # verification looks under the subject


def instance(series_uid: str, number: int | None, sop: str, relpath: str = "") -> DicomFile:
    return DicomFile(
        Path(relpath or sop), relpath or sop, 10, "1.2.3", series_uid, number, sop, "1.2", "1.2.840.10008.1.2.1"
    )


def rows(*items: dict) -> dict:
    return {"ResultSet": {"Result": list(items), "totalRecords": str(len(items))}}


def client_for(routes: dict[str, object], hits: list[str] | None = None) -> XnatClient:
    def handler(request: httpx.Request) -> httpx.Response:
        if hits is not None:
            hits.append(request.url.path)
        answer = routes.get(request.url.path)
        if callable(answer):
            answer = answer()
        if answer is None:
            return httpx.Response(404, text="not found")
        return httpx.Response(200, json=answer)

    creds = Credentials(url="http://xnat.test", username="u", token=SecretStr("TOKEN0000001"))
    return XnatClient(
        creds, transport=httpx.MockTransport(handler), token_cache=None, retry=RetryPolicy(sleep=lambda s: None)
    )


def experiment(*scans: dict) -> dict:
    """XNAT's session document: the scans (with their UIDs) are children of the session item."""
    children = [{"field": "scans/scan", "items": [{"data_fields": scan} for scan in scans]}] if scans else []
    return {"items": [{"data_fields": {"ID": "XNAT_E00007", "label": "E"}, "children": children}]}


EXPERIMENT = experiment({"ID": "4-MR1", "UID": "1.1"}, {"ID": "5", "UID": ""})


def test_waits_for_the_session_then_compares_per_scan_counts() -> None:
    appearances = iter([None, None, EXPERIMENT])
    hits: list[str] = []
    routes = {
        SESSION_PATH: lambda: next(appearances, EXPERIMENT),
        # series 1.1 is matched by UID even though XNAT renamed its scan; 1.2 (no UID recorded) by SeriesNumber
        "/data/experiments/XNAT_E00007/scans/4-MR1/resources": rows({"label": "DICOM", "file_count": "2"}),
        "/data/experiments/XNAT_E00007/scans/5/resources": rows({"label": "DICOM", "file_count": "1"}),
    }
    expected = [
        instance("1.1", 4, "a"),
        instance("1.1", 4, "b"),
        instance("1.2", 5, "c"),
        instance("1.2", 5, "c", "dup"),
    ]
    with client_for(routes, hits) as client:
        result = verify_session(client, TARGET, expected, wait_timeout=5, poll_interval=0.01)
    assert result.ok and result.experiment_id == "XNAT_E00007" and result.uri == "/data/experiments/XNAT_E00007"
    assert result.scans == {"4-MR1": (2, 2), "5": (1, 1)}  # the duplicate SOP counts once
    assert result.expected_count == result.found_count == 3
    assert hits.count(SESSION_PATH) == 3
    assert "3/3 files" in result.summary()


def test_reports_short_scans_when_the_wait_runs_out() -> None:
    routes = {
        SESSION_PATH: experiment({"ID": "1"}),
        "/data/experiments/XNAT_E00007/scans/1/resources": rows({"label": "DICOM", "file_count": "1"}),
    }
    expected = [instance("1.1", 1, "a"), instance("1.1", 1, "b"), instance("1.2", 2, "c")]
    with client_for(routes) as client:
        result = verify_session(client, TARGET, expected, wait_timeout=0.05, poll_interval=0.01)
    assert not result.ok
    assert result.scans == {"1": (2, 1), "2": (1, 0)}
    assert result.missing == ["1", "2"]
    assert "short: scan 1: 1/2, scan 2: 0/1" in result.summary()


def test_a_session_that_never_appears() -> None:
    with client_for({}) as client:
        result = verify_session(client, TARGET, [instance("1.1", 1, "a")], wait_timeout=0.02, poll_interval=0.01)
    assert not result.ok and result.uri is None and result.missing == ["1"]
    assert "did not appear" in result.summary()


def test_journal_records_per_destination_privately(tmp_path: Path) -> None:
    journal = UploadJournal(tmp_path / "journal")
    files = [instance("1.1", 1, "a"), instance("1.1", 1, "b")]
    digest = content_digest(files)
    journal.record("P/S/E/archive", digest)
    assert journal.done("P/S/E/archive") == {digest}
    assert journal.done("P/S/OTHER/archive") == set()
    (path,) = journal.directory.iterdir()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(journal.directory.stat().st_mode) == 0o700
    with path.open("a") as handle:
        handle.write("deadbeef")  # a crash mid-line
    assert journal.done("P/S/E/archive") == {digest}
    journal.clear("P/S/E/archive")
    assert journal.done("P/S/E/archive") == set()

    shutil.rmtree(journal.directory)  # removed while the journal is in use: made again, privately
    journal.record("P/S/E/archive", digest)
    assert journal.done("P/S/E/archive") == {digest}
    assert stat.S_IMODE(journal.directory.stat().st_mode) == 0o700


def test_digest_changes_when_a_file_changes() -> None:
    a = instance("1.1", 1, "a")
    changed = DicomFile(
        a.path, a.relpath, a.size, a.study_uid, a.series_uid, 1, "a", a.sop_class_uid, a.transfer_syntax, 99
    )
    assert content_digest([a]) != content_digest([changed])
    assert content_digest([a]) == content_digest([instance("1.1", 1, "a")])


def test_two_series_sharing_a_number_match_5_and_5_mr1_without_uids() -> None:
    """XNAT names the second series numbered 5 '5-MR1'; without UIDs in the document each
    of the two series takes one of those scans instead of both claiming scan 5."""
    routes = {
        SESSION_PATH: experiment({"ID": "5"}, {"ID": "5-MR1"}),
        "/data/experiments/XNAT_E00007/scans/5/resources": rows({"label": "DICOM", "file_count": "2"}),
        "/data/experiments/XNAT_E00007/scans/5-MR1/resources": rows({"label": "DICOM", "file_count": "1"}),
    }
    expected = [instance("1.1", 5, "a"), instance("1.1", 5, "b"), instance("1.2", 5, "c")]
    with client_for(routes) as client:
        result = verify_session(client, TARGET, expected, wait_timeout=0.05, poll_interval=0.01)
    assert result.ok and result.scans == {"5": (2, 2), "5-MR1": (1, 1)}


def test_a_session_of_another_study_is_never_matched_by_number() -> None:
    """The label holds another study whose scans carry no UIDs: numbers prove nothing."""
    document = experiment({"ID": "1"})
    document["items"][0]["data_fields"]["UID"] = "9.9.9"  # the archived session's StudyInstanceUID
    routes = {
        SESSION_PATH: document,
        "/data/experiments/XNAT_E00007/scans/1/resources": rows({"label": "DICOM", "file_count": "5"}),
    }
    with client_for(routes) as client:
        result = verify_session(client, TARGET, [instance("1.1", 1, "a")], wait_timeout=0.05, poll_interval=0.01)
    assert not result.ok and result.found_count == 0


def test_a_row_turning_from_receiving_to_conflict_between_two_looks_is_never_missed() -> None:
    """The archive holds an earlier copy, complete; this upload's copy is RECEIVING at the first look at
    the prearchive and CONFLICT from the next on. Verification reads the prearchive once per look, so
    it sees the row in progress, then parked — never "not parked" then "not in progress"."""
    session = experiment({"ID": "1", "UID": "1.1"})
    session["items"][0]["data_fields"]["UID"] = "1.2.3"
    statuses = iter(["RECEIVING"])
    row = {"project": "P", "timestamp": "20261204_000000000", "name": "E", "folderName": "E", "subject": "S"}
    row |= {"url": "/prearchive/projects/P/20261204_000000000/E", "tag": "1.2.3"}
    routes = {
        SESSION_PATH: session,
        "/data/experiments/XNAT_E00007/scans/1/resources": rows({"label": "DICOM", "file_count": "1"}),
        "/xapi/direct-archive": [],
        "/data/prearchive/projects/P": lambda: rows({**row, "status": next(statuses, "CONFLICT")}),
    }
    with client_for(routes) as client:
        result = verify_session(
            client, TARGET, [instance("1.1", 1, "a")], wait_timeout=5, poll_interval=0.01, prearchive_before=frozenset()
        )
    assert not result.ok and result.parked and "CONFLICT" in result.parked[0]
