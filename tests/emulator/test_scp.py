"""The emulator's DICOM receiver, driven by a plain pynetdicom SCU (independent of our sender)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage, Verification

from xnat_flows.testing.pytest_plugin import wait_until
from xnat_flows.testing.scp import STATUS_CANNOT_UNDERSTAND, STATUS_OUT_OF_RESOURCES, EmulatorDicomScp, ScpFaults
from xnat_flows.testing.synth import write_studies

PART10_DATASET_OFFSET_MARKER = b"DICM"


class RecordingIngest:
    """Stands in for XnatEmulator.import_instance_for_scp: keeps what arrives."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, str]] = []
        self.lock = threading.Lock()
        self.refuse = False
        self.explode = False

    def __call__(self, part10: bytes, calling_aet: str) -> str | None:
        if self.explode:
            raise RuntimeError("disk full")
        if self.refuse:
            return None
        with self.lock:
            self.received.append((part10, calling_aet))
        return "/data/prearchive/projects/TEST/x/y"


@pytest.fixture
def ingest() -> RecordingIngest:
    return RecordingIngest()


@pytest.fixture
def receiver(ingest: RecordingIngest) -> Iterator[EmulatorDicomScp]:
    with EmulatorDicomScp(ingest, ae_title="XNAT") as scp:
        yield scp


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory):
    return write_studies(tmp_path_factory.mktemp("study"), series=2, instances=6, instance_kb=16)


def _associate(port: int, called: str = "XNAT", calling: str = "TESTSCU"):
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    ae.add_requested_context(Verification)
    ae.add_requested_context(MRImageStorage, ["1.2.840.10008.1.2.1"])
    return ae.associate("127.0.0.1", port, ae_title=called)


def _dataset_bytes(part10: bytes) -> bytes:
    """Everything after the file meta group (a receiver may write its own meta header)."""
    group_length = int.from_bytes(part10[140:144], "little")  # (0002,0000) UL value after preamble+DICM
    return part10[144 + group_length :]


def test_echo_succeeds_and_binds_the_requested_host(receiver: EmulatorDicomScp) -> None:
    assert receiver.port > 0
    assoc = _associate(receiver.port)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_wrong_called_ae_title_is_rejected(receiver: EmulatorDicomScp) -> None:
    assoc = _associate(receiver.port, called="NOTXNAT")
    assert assoc.is_rejected
    assert not assoc.is_established


def test_c_store_delivers_the_sent_dataset_bytes(receiver: EmulatorDicomScp, ingest: RecordingIngest, study) -> None:
    assoc = _associate(receiver.port, calling="MYSCANNER")
    assert assoc.is_established
    for item in study.files:
        assert assoc.send_c_store(str(item.path)).Status == 0x0000
    assoc.release()
    assert len(ingest.received) == len(study.files)
    for (part10, calling), item in zip(ingest.received, study.files, strict=True):
        assert calling == "MYSCANNER"
        assert part10[128:132] == PART10_DATASET_OFFSET_MARKER
        assert _dataset_bytes(part10) == _dataset_bytes(item.path.read_bytes())
        meta = pydicom.dcmread(pydicom.filebase.DicomBytesIO(part10), stop_before_pixels=True).file_meta
        assert meta.MediaStorageSOPInstanceUID == item.sop_instance_uid


def test_ingest_refusal_and_error_become_failure_statuses(
    receiver: EmulatorDicomScp, ingest: RecordingIngest, study
) -> None:
    assoc = _associate(receiver.port)
    ingest.refuse = True
    assert assoc.send_c_store(str(study.files[0].path)).Status == STATUS_CANNOT_UNDERSTAND
    ingest.refuse, ingest.explode = False, True
    assert assoc.send_c_store(str(study.files[1].path)).Status == STATUS_OUT_OF_RESOURCES
    assoc.release()
    assert ingest.received == []


def test_abort_fault_aborts_once_then_the_receiver_serves_again(
    receiver: EmulatorDicomScp, ingest: RecordingIngest, study
) -> None:
    receiver.set_faults(ScpFaults(abort_after_stores=2))
    assoc = _associate(receiver.port)
    statuses = [assoc.send_c_store(str(item.path)) for item in study.files[:3]]
    assert [s.Status for s in statuses[:2]] == [0, 0]
    assert not statuses[2]  # no response: an empty Dataset
    wait_until(lambda: not assoc.is_established, 5, interval=0.01, what="the association to end")
    assert assoc.is_aborted
    assert len(ingest.received) == 2
    again = _associate(receiver.port)
    assert again.send_c_store(str(study.files[2].path)).Status == 0x0000
    again.release()
    assert len(ingest.received) == 3


def test_stall_fault_leaves_the_request_unanswered(ingest: RecordingIngest, study) -> None:
    with EmulatorDicomScp(ingest, faults=ScpFaults(stall_after_stores=1, stall_seconds=10)) as scp:
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(MRImageStorage, ["1.2.840.10008.1.2.1"])
        ae.dimse_timeout = 1
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="XNAT")
        assert assoc.send_c_store(str(study.files[0].path)).Status == 0x0000
        started = time.monotonic()
        assert not assoc.send_c_store(str(study.files[1].path))  # DIMSE timeout -> pynetdicom aborts
        assert 0.9 < time.monotonic() - started < 8
        assert assoc.is_aborted
        assert len(ingest.received) == 1


def test_refusal_fault_rejects_associations_until_cleared(receiver: EmulatorDicomScp) -> None:
    receiver.set_faults(ScpFaults(refuse_associations=True))
    assert _associate(receiver.port).is_rejected
    receiver.set_faults(ScpFaults())
    assoc = _associate(receiver.port)
    assert assoc.is_established
    assoc.release()


def test_stop_releases_the_port(ingest: RecordingIngest) -> None:
    scp = EmulatorDicomScp(ingest).start()
    port = scp.port
    scp.stop()
    assoc = _associate(port)
    assert not assoc.is_established
