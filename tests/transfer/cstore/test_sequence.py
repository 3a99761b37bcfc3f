"""The one C-STORE sequence (``cstore.sequence``) over recording steps: its order, and what it adds
to the send's result."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from xnat_flows.client.errors import InputError
from xnat_flows.transfer.cstore.results import ArchivedStudy, InstanceOutcome, SendResult
from xnat_flows.transfer.cstore.sequence import send_cstore
from xnat_flows.transfer.scan import DicomFile, ScanHeaders, ScanResult, SkippedFile


def _file(n: int, study: str) -> DicomFile:
    return DicomFile(
        path=Path(f"/data/{n}.dcm"),
        relpath=f"{n}.dcm",
        size=10,
        study_uid=study,
        series_uid=f"{study}.1",
        series_number=1,
        sop_instance_uid=f"1.2.3.{n}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
        transfer_syntax="1.2.840.10008.1.2.1",
    )


@dataclass
class Recorder:
    files: list[DicomFile]
    skipped: list[SkippedFile] = field(default_factory=list)
    refuse: int = 0  # how many files the de-identification refuses
    fail: int = 0  # how many instances the receiver refuses
    calls: list[str] = field(default_factory=list)

    def check_destination(self) -> None:
        self.calls.append("check_destination")

    def check_receiver(self) -> None:
        self.calls.append("check_receiver")

    def scan(self, headers: ScanHeaders) -> ScanResult:
        self.calls.append(f"scan:{headers}")
        return ScanResult(Path("/data"), list(self.files), list(self.skipped))

    def deidentify(self, files: list[DicomFile]) -> tuple[list[DicomFile], list[InstanceOutcome]]:
        self.calls.append("deidentify")
        refused = [InstanceOutcome(f.path, "", 0, None, 0, "cannot de-identify") for f in files[: self.refuse]]
        return files[self.refuse :], refused

    def send(self, files: list[DicomFile]) -> SendResult:
        self.calls.append(f"send:{len(files)}")
        outcomes = [InstanceOutcome(f.path, f.sop_instance_uid, f.size, 0, 1) for f in files]
        failed = [InstanceOutcome(o.path, o.sop_instance_uid, o.size, 0xA700, 3) for o in outcomes[: self.fail]]
        return SendResult(sent=outcomes[self.fail :], failed=failed)

    def wait_for_archive(self, instances: dict[str, int]) -> list[ArchivedStudy]:
        self.calls.append(f"wait:{sorted(instances.items())}")
        return [
            ArchivedStudy(uid, "P", "S", f"L{uid}", f"E{uid}", f"/data/experiments/E{uid}", n, n)
            for uid, n in instances.items()
        ]

    def landed(self, study: ArchivedStudy, files: list[DicomFile]) -> None:
        self.calls.append(f"landed:{study.study_uid}:{len(files)}")


def test_the_steps_run_in_order_and_verify_hands_on_each_study() -> None:
    steps = Recorder([_file(1, "A"), _file(2, "A"), _file(3, "B")], [SkippedFile(Path("/data/notes.txt"), "not DICOM")])
    result = send_cstore(steps, source="/data", verify=True)
    assert steps.calls == [
        "check_destination",
        "check_receiver",
        "scan:full",
        "deidentify",
        "send:3",
        "wait:[('A', 2), ('B', 1)]",
        "landed:A:2",
        "landed:B:1",
    ]
    assert result.ok and result.verified and [s.study_uid for s in result.archived] == ["A", "B"]
    assert result.not_sent == steps.skipped and result.unreadable == []


def test_without_verify_the_scan_reads_only_the_file_meta_and_the_archive_is_not_asked() -> None:
    steps = Recorder([_file(1, "A")])
    result = send_cstore(steps, source="/data")
    assert steps.calls == ["check_destination", "check_receiver", "scan:file-meta", "deidentify", "send:1"]
    assert result.ok and not result.verified


def test_a_send_that_did_not_store_everything_is_not_verified_and_not_ok() -> None:
    for steps in (Recorder([_file(1, "A"), _file(2, "A")], fail=1), Recorder([_file(1, "A"), _file(2, "A")], refuse=1)):
        result = send_cstore(steps, source="/data", verify=True)
        assert not any(call.startswith("wait") for call in steps.calls)
        assert not result.ok and len(result.failed) == 1 and not result.verified


def test_a_folder_without_dicom_stops_before_sending() -> None:
    steps = Recorder([], [SkippedFile(Path("/data/notes.txt"), "not DICOM")])
    with pytest.raises(InputError) as raised:
        send_cstore(steps, source="/data")
    assert "no DICOM files found under /data (1 other files skipped)" in str(raised.value)
    assert raised.value.reason == "no-dicom-files" and "deidentify" not in steps.calls
