"""The one sequence of a REST upload (``transfer.sequence``), run with steps that record their calls."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from xnat_flows.client.prearchive import ParkedSession
from xnat_flows.transfer.scan import DicomFile
from xnat_flows.transfer.sequence import UploadSteps, sequence_upload
from xnat_flows.transfer.target import UploadTarget
from xnat_flows.transfer.upload_result import BatchResult, GradualResult
from xnat_flows.transfer.verify import VerifyResult

TARGET = UploadTarget("PROJ", "SUBJ", "SESS")


def _files(count: int = 4) -> list[DicomFile]:
    return [
        DicomFile(Path(f"/x/{i}"), f"{i}", 10, "1.2.3", "1.2.3.1", 1, f"1.2.3.1.{i}", "1.2.840.10008.5.1.4.1.1.4", "")
        for i in range(count)
    ]


class Recorder:
    """Steps that say what they were asked, in order; ``verify_fails`` stops the run at verification."""

    def __init__(
        self,
        *,
        batch_ok: bool = True,
        already_archived: bool = False,
        verify_fails: bool = False,
        verified: VerifyResult | None = None,
        parked: list[ParkedSession] | None = None,
    ) -> None:
        self.calls: list[str] = []
        self.batch_ok = batch_ok
        self.already_archived = already_archived
        self.verify_fails = verify_fails
        self.verified = verified
        self.parked = parked or []

    @contextlib.contextmanager
    def claim(self, targets: Sequence[UploadTarget]) -> Iterator[None]:
        self.calls.append("claim")
        try:
            yield
        finally:
            self.calls.append("release")

    def check_destination(
        self, target: UploadTarget, study_uid: str, allow_other_study: bool, per_study: bool
    ) -> tuple[UploadTarget, frozenset[str]]:
        self.calls.append("check")
        return target, frozenset()

    def send_batches(self, target: UploadTarget, files: list[DicomFile]) -> list[BatchResult]:
        self.calls.append("send_batches")
        halves = [files[: len(files) // 2], files[len(files) // 2 :]]
        return [
            BatchResult(
                index=i, files=tuple(f.relpath for f in half), bytes=10 * len(half), seconds=0.1, ok=self.batch_ok
            )
            for i, half in reversed(list(enumerate(halves)))  # as completed: not in order of index
        ]

    def send_instances(self, target: UploadTarget, files: list[DicomFile]) -> GradualResult:
        self.calls.append("send_instances")
        if self.already_archived:
            return GradualResult(total=len(files), resumed_count=len(files), already_archived=True)
        return GradualResult(total=len(files), sent_count=len(files), bytes_sent=10 * len(files))

    def archive_now(self, target: UploadTarget, study_uid: str, uris: list[str], requests_in_doubt: int) -> list[str]:
        self.calls.append("archive_now")
        return []

    def verify(self, target: UploadTarget, files: list[DicomFile], prearchive_before: frozenset[str]) -> VerifyResult:
        self.calls.append("verify")
        if self.verify_fails:
            raise RuntimeError("the worker stopped while verifying")
        if self.verified is not None:
            return self.verified
        return VerifyResult(True, "XNAT_E00001", "/data/experiments/XNAT_E00001", len(files), len(files))

    def forget_delivered(self, target: UploadTarget) -> None:
        self.calls.append("forget")

    def look_for_parked(
        self, target: UploadTarget, study_uid: str, prearchive_before: frozenset[str]
    ) -> list[ParkedSession]:
        self.calls.append("look_for_parked")
        return self.parked


def test_every_destination_is_checked_under_the_claim_before_anything_is_sent() -> None:
    steps = Recorder()
    plan = [(TARGET, _files()), (TARGET.with_session("SESS2"), _files())]
    sessions = sequence_upload(steps, plan)
    assert steps.calls == [
        "claim",
        "check",
        "check",
        *["send_batches", "archive_now", "verify"] * 2,  # verified: the journal's record stays
        "release",
    ]
    assert [s.session for s in sessions] == ["SESS", "SESS2"]
    assert all(s.ok and s.verified for s in sessions)
    assert [b.index for b in sessions[0].batches] == [0, 1]


def test_the_journal_is_forgotten_only_after_verification() -> None:
    """A run stopped while verifying keeps the journal's record: the re-run sends nothing again."""
    steps = Recorder(verify_fails=True)
    with pytest.raises(RuntimeError):
        sequence_upload(steps, [(TARGET, _files())])
    assert "forget" not in steps.calls and steps.calls[-1] == "release"


@pytest.mark.parametrize(
    ("verified", "forgotten"),
    [
        (VerifyResult(False, None, "/xapi/direct-archive/P/1.2.3/SESS", 4, 0, processing=True), False),
        (VerifyResult(False, None, None, 4, 0), False),  # not in the archive yet when the wait ran out
        (VerifyResult(False, "XNAT_E00001", "/data/experiments/XNAT_E00001", 4, 3, missing=["1"]), True),
        (VerifyResult(False, None, None, 4, 0, parked=["/prearchive/P/x/SESS"]), True),
    ],
    ids=["still-processing", "not-there-yet", "files-missing", "parked"],
)
def test_the_journal_is_forgotten_only_when_verification_disproves_it(verified: VerifyResult, forgotten: bool) -> None:
    """Verified (``test_every_destination_...``) or inconclusive (XNAT still at work on what was
    sent): the record stays, and the re-run sends nothing again. Disproved (files missing, parked
    elsewhere): the next run sends everything anew."""
    steps = Recorder(verified=verified)
    sequence_upload(steps, [(TARGET, _files())])
    assert ("forget" in steps.calls) is forgotten


def test_a_session_found_archived_already_is_verified_not_archived_again() -> None:
    """Nothing is reported complete without XNAT saying so, also when a re-run sent nothing."""
    steps = Recorder(already_archived=True)
    (session,) = sequence_upload(steps, [(TARGET, _files())], gradual=True)
    assert steps.calls == ["claim", "check", "send_instances", "verify", "release"]
    assert session.verified is True and session.files_sent == 0 and session.ok


def test_an_incomplete_upload_is_neither_archived_nor_verified_nor_forgotten() -> None:
    steps = Recorder(batch_ok=False)
    (session,) = sequence_upload(steps, [(TARGET, _files())])
    assert steps.calls == ["claim", "check", "send_batches", "release"]
    assert not session.ok and session.verified is None and len(session.failed_files) == 4


def test_without_verification_what_xnat_parked_is_forgotten() -> None:
    from xnat_flows.client.prearchive import PrearchiveSession

    row = PrearchiveSession(project="P", timestamp="20261204_120000000", name="SESS", status="CONFLICT", tag="1.2.3")
    steps = Recorder(parked=[ParkedSession(session=row)])
    sequence_upload(steps, [(TARGET, _files()), (TARGET.with_session("SESS2"), _files())], verify=False)
    assert steps.calls[-5:] == ["look_for_parked", "forget", "look_for_parked", "forget", "release"]
    nothing_parked = Recorder()
    sequence_upload(nothing_parked, [(TARGET, _files())], verify=False)
    assert "forget" not in nothing_parked.calls  # the record stays


def test_without_verification_the_prearchive_is_looked_at_once_per_session() -> None:
    steps = Recorder()
    plan = [(TARGET, _files()), (TARGET.with_session("SESS2"), _files())]
    sequence_upload(steps, plan, verify=False)
    assert steps.calls[-3:] == ["look_for_parked", "look_for_parked", "release"]
    assert "verify" not in steps.calls


def test_the_library_and_the_flow_supply_the_same_steps() -> None:
    """Both step kinds satisfy the one interface (mypy checks the signatures; this, that none is missing)."""
    from xnat_flows.flows.upload import TaskSteps
    from xnat_flows.transfer.session import ClientSteps

    wanted = {name for name in dir(UploadSteps) if not name.startswith("_")}
    for steps in (ClientSteps, TaskSteps, Recorder):
        assert wanted <= set(dir(steps)), steps


def test_the_result_round_trips_through_json_as_a_prefect_result_does() -> None:
    """The flow returns the library's ``UploadResult``: Prefect persists it, the CLI prints ``--json``."""
    from xnat_flows.transfer.scan import SkippedFile
    from xnat_flows.transfer.upload_result import UploadResult

    sessions = sequence_upload(Recorder(), [(TARGET, _files())])
    result = UploadResult(
        sessions=sessions, skipped=[SkippedFile(Path("/x/notes.txt"), "not DICOM")], seconds=2.0, upload_seconds=1.0
    )
    again = UploadResult.model_validate_json(result.model_dump_json())
    assert again == result and again.ok and again.files_sent == 4 and again.sessions[0].target == TARGET
    dumped = result.model_dump(mode="json")
    assert dumped["sessions"][0]["verified"] is True and dumped["sessions"][0]["experiment_id"] == "XNAT_E00001"
    assert dumped["ok"] is True and dumped["throughput_mb_s"] == 0.0
