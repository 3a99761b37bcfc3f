"""C-STORE sender against the emulator's DICOM receiver (xnat_flows.testing.scp) over loopback."""

from __future__ import annotations

import hashlib
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from xnat_flows.client.errors import InputError
from xnat_flows.testing.scp import EmulatorDicomScp, ScpFaults
from xnat_flows.testing.synth import write_studies
from xnat_flows.transfer.cstore.connect import echo
from xnat_flows.transfer.cstore.errors import (
    AssociationRejectedError,
    CalledAETitleRejectedError,
    DicomNetworkError,
    NoAcceptedContextError,
    PeerUnreachableError,
)
from xnat_flows.transfer.cstore.inputs import RoutingOverride, validate_ae_title
from xnat_flows.transfer.cstore.results import status_meaning
from xnat_flows.transfer.cstore.send import store_instances
from xnat_flows.transfer.part10 import dataset_offset
from xnat_flows.transfer.scan import scan_directory

FAST = {"dimse_timeout": 5.0, "acse_timeout": 5.0}


class Received:
    """A fake XNAT importer: dataset bytes by SOP Instance UID, plus the calling AE titles."""

    def __init__(self) -> None:
        self.datasets: dict[str, bytes] = {}
        self.callers: set[str] = set()
        self.lock = threading.Lock()
        self.fail = False

    def __call__(self, part10: bytes, calling_aet: str) -> str:
        if self.fail:
            raise RuntimeError("importer broke")
        sop = pydicom.dcmread(pydicom.filebase.DicomBytesIO(part10), stop_before_pixels=True).SOPInstanceUID
        with self.lock:
            self.datasets[sop] = part10[dataset_offset(part10) :]
            self.callers.add(calling_aet)
        return "/prearchive/x"


@pytest.fixture
def received() -> Received:
    return Received()


@pytest.fixture
def scp(received: Received) -> Iterator[EmulatorDicomScp]:
    with EmulatorDicomScp(received, ae_title="XNAT") as receiver:
        yield receiver


@pytest.fixture(scope="module")
def study_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cstore-study")
    manifest = write_studies(root, series=3, instances=24, instance_kb=24, seed=3, junk=True)
    for (
        path
    ) in manifest.junk:  # cut-short files fail a scan (an export still being written): tests/transfer/test_scan.py
        if path.name.startswith("IM9"):
            path.unlink()
    return root


def _dataset_of(path: Path) -> bytes:
    data = path.read_bytes()
    return data[dataset_offset(data) :]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_echo_reports_the_round_trip(scp: EmulatorDicomScp) -> None:
    result = echo("127.0.0.1", scp.port, "XNAT", "XNATFLOWS", timeout=5)
    assert result.port == scp.port and result.seconds > 0


def test_echo_names_a_closed_port_as_refused() -> None:
    with pytest.raises(PeerUnreachableError, match="refused") as info:
        echo("127.0.0.1", _free_port(), timeout=2)
    assert "8104" in info.value.hint


def test_echo_names_a_wrong_called_ae_title(scp: EmulatorDicomScp) -> None:
    with pytest.raises(CalledAETitleRejectedError, match="'WRONGAE'") as info:
        echo("127.0.0.1", scp.port, called_aet="WRONGAE", timeout=5)
    assert "AE title" in info.value.hint


def test_echo_reports_a_refused_calling_ae_title(scp: EmulatorDicomScp) -> None:
    scp.set_faults(ScpFaults(refuse_associations=True))
    with pytest.raises(AssociationRejectedError, match="calling AE title 'XNATFLOWS'"):
        echo("127.0.0.1", scp.port, timeout=5)


def test_echo_to_a_silent_port_times_out_with_a_hint() -> None:
    with socket.socket() as listener:  # accepts TCP, never speaks DICOM (like an HTTP port)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with pytest.raises(DicomNetworkError, match="did not answer the association request") as info:
            echo("127.0.0.1", listener.getsockname()[1], timeout=1)
    assert "DICOM port" in info.value.hint


@pytest.mark.parametrize(
    ("title", "problem"),
    [
        ("", "empty"),
        ("    ", "empty"),
        ("A" * 17, "maximum is 16"),
        ("BAD\\AE", "backslash"),
        ("TAB\tAE", "backslash"),
    ],
)
def test_invalid_ae_titles_are_refused_before_connecting(title: str, problem: str) -> None:
    with pytest.raises(InputError, match=problem):
        validate_ae_title(title, "called")
    with pytest.raises(InputError):
        echo("127.0.0.1", 1, called_aet=title)


def test_ae_title_padding_is_insignificant() -> None:
    assert validate_ae_title(" XNAT  ", "called") == "XNAT"


def test_every_instance_arrives_byte_identical(scp: EmulatorDicomScp, received: Received, study_root: Path) -> None:
    scan = scan_directory(study_root)
    seen: list[tuple[int, int]] = []
    result = store_instances(
        scan,
        host="127.0.0.1",
        port=scp.port,
        workers=3,
        calling_aet="SCANNER1",
        progress=lambda done, total: seen.append((done, total)),
        **FAST,
    )
    assert result.ok, result.failed + result.skipped
    assert len(result.sent) == len(scan.files) == 24
    assert {o.status for o in result.sent} == {0x0000}
    assert result.bytes_sent == scan.total_bytes
    assert result.instances_per_second > 0
    assert received.callers == {"SCANNER1"}
    assert received.datasets == {f.sop_instance_uid: _dataset_of(f.path) for f in scan.files}
    assert seen[-1] == (24, 24) and len(seen) == 24
    assert sum(a.sent for a in result.associations) == 24
    assert all(a.ended == "released" for a in result.associations)


def test_a_directory_is_scanned_and_junk_is_not_sent(
    scp: EmulatorDicomScp, received: Received, study_root: Path
) -> None:
    result = store_instances(study_root, host="127.0.0.1", port=scp.port, workers=1, **FAST)
    assert len(result.sent) == 24 and not result.failed
    assert len(received.datasets) == 24


def test_two_associations_in_threads_deliver_everything(
    scp: EmulatorDicomScp, received: Received, study_root: Path
) -> None:
    result = store_instances(study_root, host="127.0.0.1", port=scp.port, workers=2, **FAST)
    assert result.mode == "threads" and {a.worker for a in result.associations} == {0, 1}
    assert len(result.sent) == 24 and not result.failed
    assert len(received.datasets) == 24


def _mixed_files(tmp_path: Path) -> Path:
    """Different SOP classes and transfer syntaxes (CT/MR explicit, MR implicit, JPEG 2000, RLE)."""
    root = tmp_path / "mixed"
    root.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm"):
        shutil.copy(get_testdata_file(name), root / name)
    # pydicom's own implicit copy shares MR_small's SOP Instance UID (the scanner drops it): make one
    implicit = pydicom.dcmread(get_testdata_file("MR_small_implicit.dcm"))
    implicit.SOPInstanceUID = implicit.file_meta.MediaStorageSOPInstanceUID = "2.25.1234567890123456789"
    implicit.save_as(root / "MR_small_implicit.dcm", enforce_file_format=True)
    return root


def test_contexts_come_from_the_files_and_split_into_groups(
    scp: EmulatorDicomScp, received: Received, tmp_path: Path
) -> None:
    scan = scan_directory(_mixed_files(tmp_path))
    pairs = {(f.sop_class_uid, f.transfer_syntax) for f in scan.files}
    assert len(pairs) == 5
    result = store_instances(scan, host="127.0.0.1", port=scp.port, workers=1, max_contexts=2, **FAST)
    assert len(result.sent) == 5 and result.ok
    assert sorted({a.group for a in result.associations}) == [0, 1, 2]  # 5 pairs in groups of <= 2
    assert received.datasets == {f.sop_instance_uid: _dataset_of(f.path) for f in scan.files}


def test_instances_in_a_refused_syntax_are_skipped_with_the_reason(tmp_path: Path) -> None:
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

    arrived: list[str] = []
    ae = AE(ae_title="PICKY")
    ae.add_supported_context(Verification)
    ae.add_supported_context(MRImageStorage, ["1.2.840.10008.1.2.1"])  # explicit only, and no CT at all
    ae.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2.4.90"])

    def store(event):
        arrived.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, store)])
    try:
        scan = scan_directory(_mixed_files(tmp_path))
        result = store_instances(
            scan, host="127.0.0.1", port=server.server_address[1], called_aet="PICKY", workers=1, **FAST
        )
    finally:
        server.shutdown()
    assert [o.path.name for o in result.sent] == ["MR_small.dcm"]
    assert arrived == [o.sop_instance_uid for o in result.sent]
    assert sorted(o.path.name for o in result.skipped) == [
        "CT_small.dcm",
        "JPEG2000.dcm",
        "MR_small_implicit.dcm",
        "SC_rgb_rle.dcm",
    ]
    implicit = next(o for o in result.skipped if o.path.name == "MR_small_implicit.dcm")
    assert implicit.reason == "the peer did not accept MR Image Storage in Implicit VR Little Endian"
    assert not result.failed and not result.ok


def test_no_accepted_context_is_an_actionable_error(tmp_path: Path) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title="ECHOONLY")
    ae.add_supported_context(Verification)
    server = ae.start_server(("127.0.0.1", 0), block=False)
    try:
        scan = scan_directory(_mixed_files(tmp_path))
        result = store_instances(
            scan,
            host="127.0.0.1",
            port=server.server_address[1],
            called_aet="ECHOONLY",
            workers=1,
            max_attempts=1,
            **FAST,
        )
    finally:
        server.shutdown()
    assert not result.sent
    assert len(result.failed) == 5
    assert all("none of the presentation contexts" in o.reason for o in result.failed)


def test_an_aborted_association_is_retried_on_a_fresh_one(
    scp: EmulatorDicomScp, received: Received, study_root: Path
) -> None:
    scp.set_faults(ScpFaults(abort_after_stores=5))
    result = store_instances(study_root, host="127.0.0.1", port=scp.port, workers=2, **FAST)
    assert len(result.sent) == 24 and not result.failed
    assert len(received.datasets) == 24
    assert any(a.ended.startswith("aborted") for a in result.associations)
    assert max(o.attempts for o in result.sent) == 2
    # the aborted attempt went out whole and got no answer: the receiver may hold it twice
    (retried,) = [o for o in result.sent if o.attempts == 2]
    assert retried.unanswered_attempts == 1
    assert result.sent_again_after_no_answer == [retried.path]


def test_a_stall_answered_with_a_failure_status_is_not_in_doubt(
    scp: EmulatorDicomScp, received: Received, study_root: Path
) -> None:
    """An answer, even a refusal, says the receiver does not hold the instance: nothing to check."""
    scp.set_faults(ScpFaults(stall_after_stores=3, stall_seconds=0.2))
    result = store_instances(study_root, host="127.0.0.1", port=scp.port, workers=1, **FAST)
    assert len(result.sent) == 24 and result.ok
    assert max(o.attempts for o in result.sent) == 2
    assert result.sent_again_after_no_answer == []


def test_a_stalled_association_is_abandoned_after_the_dimse_timeout(
    scp: EmulatorDicomScp, received: Received, study_root: Path
) -> None:
    scp.set_faults(ScpFaults(stall_after_stores=3, stall_seconds=30))
    result = store_instances(study_root, host="127.0.0.1", port=scp.port, workers=1, dimse_timeout=1, acse_timeout=5)
    assert len(result.sent) == 24 and not result.failed
    assert len(received.datasets) == 24
    assert [a.ended for a in result.associations if a.ended != "released"] == ["aborted: no response within 1 s"]


def test_without_retries_nothing_is_reported_sent_that_did_not_arrive_and_a_rerun_completes(
    scp: EmulatorDicomScp, received: Received, study_root: Path
) -> None:
    scp.set_faults(ScpFaults(abort_after_stores=7))
    first = store_instances(study_root, host="127.0.0.1", port=scp.port, workers=1, max_attempts=1, **FAST)
    assert len(first.failed) == 1
    assert first.failed[0].status is None and first.failed[0].status_hex == "none"
    assert "no response" in first.failed[0].meaning
    assert {o.sop_instance_uid for o in first.sent} == set(received.datasets)
    assert len(first.sent) == 23

    rerun = [f for f in scan_directory(study_root).files if f.path in set(first.unsent_paths)]
    second = store_instances(rerun, host="127.0.0.1", port=scp.port, workers=1, **FAST)
    assert len(second.sent) == 1 and second.ok
    assert len(received.datasets) == 24


def test_a_failure_status_is_recorded_with_its_meaning(
    scp: EmulatorDicomScp, received: Received, study_root: Path
) -> None:
    received.fail = True
    files = scan_directory(study_root).files[:2]
    result = store_instances(files, host="127.0.0.1", port=scp.port, workers=1, max_attempts=2, **FAST)
    assert not result.sent and len(result.failed) == 2
    failure = result.failed[0]
    assert (failure.status, failure.status_hex, failure.attempts) == (0xA700, "0xA700", 2)
    assert failure.meaning == "Failure: Refused: Out of Resources"
    assert failure.retryable and result.retryable_failures == result.failed  # a busy receiver may recover
    assert status_meaning(0x0000) == "Success"


def test_a_file_the_receiver_cannot_place_fails_once_with_the_reason(tmp_path: Path) -> None:
    """The file-meta scan does not read Study Instance UIDs; XNAT refuses an instance without one
    (0xC000), and the sender then reads the file to say why instead of retrying it."""
    manifest = write_studies(tmp_path / "study", series=1, instances=3, instance_kb=8)
    orphan = pydicom.dcmread(manifest.files[0].path)
    del orphan.StudyInstanceUID
    orphan.save_as(manifest.files[0].path, enforce_file_format=True)

    def importer(part10: bytes, calling_aet: str) -> str | None:  # XNAT: "unable to read DICOM object"
        ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(part10), stop_before_pixels=True)
        return "/prearchive/x" if "StudyInstanceUID" in ds else None

    with EmulatorDicomScp(importer, ae_title="XNAT") as receiver:
        result = store_instances(tmp_path / "study", host="127.0.0.1", port=receiver.port, workers=1, **FAST)
    assert len(result.sent) == 2
    [failure] = result.failed
    assert failure.path == manifest.files[0].path.absolute() and failure.attempts == 1
    assert failure.status_hex == "0xC000" and not failure.retryable and not result.retryable_failures
    assert failure.reason == (
        "DICOM without StudyInstanceUID: XNAT cannot place it (found after the receiver refused it)"
    )


def test_a_file_changed_after_the_scan_is_not_sent(scp: EmulatorDicomScp, received: Received, tmp_path: Path) -> None:
    import os

    manifest = write_studies(tmp_path / "study", series=1, instances=4, instance_kb=8)
    scan = scan_directory(tmp_path / "study", headers="file-meta")
    grown, touched = manifest.files[0].path, manifest.files[1].path
    with open(grown, "ab") as handle:  # still being written by the export
        handle.write(b"\0" * 16)
    stat = touched.stat()  # rewritten with the same size
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))

    result = store_instances(scan, host="127.0.0.1", port=scp.port, workers=1, **FAST)
    assert len(result.sent) == 2 and len(received.datasets) == 2
    assert {o.path.name for o in result.failed} == {grown.name, touched.name}
    assert all("changed since the scan" in o.reason and not o.retryable for o in result.failed)


def test_receiver_down_fails_fast_in_preflight_and_records_failures_without_it(study_root: Path) -> None:
    port = _free_port()
    with pytest.raises(PeerUnreachableError, match="refused"):
        store_instances(study_root, host="127.0.0.1", port=port, workers=1, **FAST)
    result = store_instances(
        study_root, host="127.0.0.1", port=port, workers=2, preflight=False, max_attempts=1, **FAST
    )
    assert not result.sent and len(result.failed) == 24
    assert all("refused" in o.reason for o in result.failed)
    assert all(o.retryable for o in result.failed)  # the receiver may come back


def test_wrong_called_ae_title_fails_before_sending(
    scp: EmulatorDicomScp, received: Received, study_root: Path
) -> None:
    with pytest.raises(CalledAETitleRejectedError):
        store_instances(study_root, host="127.0.0.1", port=scp.port, called_aet="NOTXNAT", **FAST)
    assert not received.datasets


def test_routing_override_changes_the_sent_copy_only(scp: EmulatorDicomScp, received: Received, tmp_path: Path) -> None:
    manifest = write_studies(tmp_path / "routed", series=1, instances=3, instance_kb=8)
    before = {f.path: hashlib.sha256(f.path.read_bytes()).hexdigest() for f in manifest.files}
    result = store_instances(
        tmp_path / "routed",
        host="127.0.0.1",
        port=scp.port,
        workers=1,
        routing=RoutingOverride("TEST", "SUBJ_1", "SESS-1"),
        **FAST,
    )
    assert len(result.sent) == 3
    for item in manifest.files:
        sent = pydicom.dcmread(
            pydicom.filebase.DicomBytesIO(
                item.path.read_bytes()[: dataset_offset(item.path.read_bytes())]
                + received.datasets[item.sop_instance_uid]
            )
        )
        assert sent.PatientComments == "Project:TEST Subject:SUBJ_1 Session:SESS-1"
        assert sent.PixelData == pydicom.dcmread(item.path).PixelData
    assert before == {f.path: hashlib.sha256(f.path.read_bytes()).hexdigest() for f in manifest.files}


def test_routing_values_xnat_cannot_parse_are_refused() -> None:
    with pytest.raises(InputError, match="letters, digits"):
        RoutingOverride("MY PROJECT")
    assert RoutingOverride("P1").comment() == "Project:P1"


def test_no_files_means_nothing_to_do(scp: EmulatorDicomScp) -> None:
    result = store_instances([], host="127.0.0.1", port=scp.port)
    assert (result.sent, result.failed, result.skipped) == ([], [], [])


def test_no_accepted_context_error_is_raised_by_echo_to_a_store_only_peer() -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import MRImageStorage

    ae = AE(ae_title="STOREONLY")
    ae.add_supported_context(MRImageStorage)
    server = ae.start_server(("127.0.0.1", 0), block=False)
    try:
        with pytest.raises(NoAcceptedContextError, match="C-ECHO"):
            echo("127.0.0.1", server.server_address[1], called_aet="STOREONLY", timeout=5)
    finally:
        server.shutdown()


def test_a_warning_status_counts_as_sent_and_keeps_its_code(study_root: Path) -> None:
    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title="COERCE")
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda event: 0xB000)])
    try:
        result = store_instances(
            study_root, host="127.0.0.1", port=server.server_address[1], called_aet="COERCE", workers=1, **FAST
        )
    finally:
        server.shutdown()
    assert len(result.sent) == 24 and not result.failed
    assert {(o.status_hex, o.meaning) for o in result.sent} == {("0xB000", "Warning: Coercion of Data Elements")}


def test_the_upload_dicom_command_imports_no_heavy_library(
    scp: EmulatorDicomScp, received: Received, tmp_path: Path
) -> None:
    """The whole ``session upload-dicom`` run (argument parsing, echo, scan, send, journal) does
    without pydantic, pydicom, pynetdicom, httpx and prefect: start-up is part of its throughput
    (docs/performance.md)."""
    import os
    import subprocess
    import sys

    export = tmp_path / "export"  # no junk files: those the scanner hands to pydicom to say why they are skipped
    write_studies(export, series=2, instances=12, instance_kb=8, seed=31)
    code = (
        "import sys\n"
        "from xnat_flows.cli.main import app\n"
        "code = 0\n"
        "try:\n"
        "    app(sys.argv[1:], standalone_mode=False)\n"
        "except SystemExit as exit:\n"
        "    code = exit.code\n"
        "heavy = ('pydantic', 'pydicom', 'pynetdicom', 'httpx', 'prefect', 'rich')\n"
        "print('LOADED', code, sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "session",
            "upload-dicom",
            str(export),
            "--host",
            "127.0.0.1",
            "--port",
            str(scp.port),
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "XNAT_FLOWS_HOME": str(tmp_path / "home")},
    ).stdout
    assert "12 sent, 0 failed" in out
    assert out.strip().splitlines()[-1] == "LOADED 0 []"
    assert len(received.datasets) == 12


def test_warning_statuses_are_reported_in_text_and_json(tmp_path: Path) -> None:
    """A receiver that stores instances with a Warning status (PS3.4 Annex B: 0xB000 coercion of
    data elements, 0xB006 elements discarded, 0xB007 data set does not match the SOP class): they
    count as stored, and each is named with its status in the text output and in --json."""
    import json

    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from typer.testing import CliRunner

    from xnat_flows.cli.main import app

    warnings = [0xB000, 0xB006, 0xB007]
    answered: list[int] = []
    lock = threading.Lock()

    def on_store(event) -> int:
        with lock:
            status = warnings[len(answered)] if len(answered) < len(warnings) else 0x0000
            answered.append(status)
        return status

    ae = AE(ae_title="WARNER")
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context("1.2.840.10008.1.1")  # Verification: the CLI echoes first
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        port = server.server_address[1]
        manifest = write_studies(tmp_path / "export", series=1, instances=5, instance_kb=4, seed=47)
        base = ["session", "upload-dicom", str(tmp_path / "export"), "--host", "127.0.0.1", "--port", str(port)]
        text = CliRunner().invoke(app, [*base, "--called-aet", "WARNER", "--workers", "1"])
        assert text.exit_code == 0, text.output
        assert "5 sent (3 with a warning status)" in text.output
        for code in ("0xB000", "0xB006", "0xB007"):
            assert f": {code} Warning" in text.output, text.output
        assert text.output.count("stored with a warning: ") == 3

        (tmp_path / "home2").mkdir()
        answered.clear()
        as_json = CliRunner().invoke(
            app,
            [*base, "--called-aet", "WARNER", "--workers", "1", "--json"],
            env={"XNAT_FLOWS_HOME": str(tmp_path / "home2")},
        )
        assert as_json.exit_code == 0, as_json.output
        report = json.loads(as_json.stdout)
        assert sorted(w["status"] for w in report["stored_with_warning"]) == ["0xB000", "0xB006", "0xB007"]
        assert all(w["meaning"].startswith("Warning") for w in report["stored_with_warning"])
        assert report["sent"] == len(manifest.files)
    finally:
        server.shutdown()


def test_the_send_path_imports_no_heavy_library() -> None:
    """Start-up is part of C-STORE throughput (docs/cstore.md): scanning and sending a directory
    must not import pydicom, pynetdicom, httpx, prefect or pydantic (0.03-0.3 s each)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from xnat_flows.transfer.cstore.send import store_instances\n"
        "from xnat_flows.transfer.cstore.resume import store_instances_resumable\n"
        "from xnat_flows.transfer.scan import scan_directory\n"
        "from xnat_flows.transfer.progress import Progress\n"
        "print(sorted(m for m in ('pydicom', 'pynetdicom', 'httpx', 'prefect', 'pydantic')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
