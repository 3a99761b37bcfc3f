"""What a REST upload reports: one pydantic model per concept, for every caller.

``BatchResult`` (one DICOM-zip request), ``GradualResult`` (gradual-DICOM's instances of one
session), ``SessionResult`` (one session: what was sent, archived and verified) and
``UploadResult`` (the whole upload). The library returns them (``transfer.session.upload_session``),
the ``upload-dicom-session`` flow returns the same ``UploadResult`` (Prefect persists it as the
run's result) and the CLI prints it, as text or ``--json``. Each count is derived here, once.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, computed_field

from xnat_flows.client.prearchive import CONFLICT, ParkedSession
from xnat_flows.transfer.scan import SkippedFile
from xnat_flows.transfer.target import UploadTarget
from xnat_flows.transfer.verify import VerifyResult


class FileFailure(BaseModel):
    """An instance gradual-DICOM did not deliver, with XNAT's message."""

    model_config = ConfigDict(frozen=True)

    relpath: str
    path: Path
    error: str
    status: int | None = None
    retryable: bool = False


class BatchResult(BaseModel):
    """One DICOM-zip batch: the files sent in one import request."""

    model_config = ConfigDict(frozen=True)

    index: int
    files: tuple[str, ...] = Field(description="The batch's members (paths relative to the scanned folder).")
    bytes: int
    seconds: float
    uris: tuple[str, ...] = Field(default=(), description="The session URIs XNAT's import service answered.")
    ok: bool
    error: str | None = None
    resumed: bool = Field(default=False, description="Delivered by an earlier run (resume journal), not sent again.")
    requests_in_doubt: int = Field(
        default=0,
        description="This batch's attempts that reached XNAT without an answer (then sent again): a copy of what "
        "they sent may still be on its way into the session.",
    )


class GradualResult(BaseModel):
    """gradual-DICOM: the instances of one session, one request each."""

    total: int
    sent_count: int = 0
    bytes_sent: int = 0
    resumed_count: int = Field(default=0, description="Delivered by an earlier run (resume journal), not sent again.")
    seconds: float = 0.0
    uris: list[str] = Field(default_factory=list)
    failures: list[FileFailure] = Field(default_factory=list)
    already_archived: bool = Field(default=False, description="Nothing sent: XNAT's archive held every instance.")
    stopped: str | None = Field(default=None, description="Why the upload stopped early; the unsent are in failures.")
    requests_in_doubt: int = Field(default=0, description="As BatchResult's, for this upload's requests.")

    @computed_field  # type: ignore[prop-decorator]  # pydantic's documented form; mypy cannot follow it
    @property
    def ok(self) -> bool:
        """Every instance reached XNAT, in this run or an earlier one."""
        return not self.failures and self.sent_count + self.resumed_count == self.total


class SessionResult(BaseModel):
    """One session of an upload (one study under one label).

    Two counts, two meanings: ``files_delivered`` are in XNAT after this run (sent now, or by an
    earlier run per the resume journal); ``files_sent``/``bytes_sent`` went over the wire in this
    run.
    """

    study_uid: str
    target: UploadTarget
    files: int = Field(description="DICOM files of this session in the source directory.")
    bytes: int
    batches: list[BatchResult] = Field(default_factory=list)
    gradual: GradualResult | None = None
    verify: VerifyResult | None = None
    parked: list[ParkedSession] = Field(
        default_factory=list,
        description="Without verification: this upload's prearchive rows XNAT parked (CONFLICT, ERROR), found by "
        "one look at the prearchive at the end.",
    )
    seconds: float = Field(default=0.0, description="Sending time of this session (resumed parts take none).")

    @computed_field  # type: ignore[prop-decorator]  # pydantic's documented form; mypy cannot follow it
    @property
    def project(self) -> str:
        """The session's project."""
        return self.target.project

    @computed_field  # type: ignore[prop-decorator]
    @property
    def subject(self) -> str:
        """The session's subject label."""
        return self.target.subject

    @computed_field  # type: ignore[prop-decorator]
    @property
    def session(self) -> str:
        """The session's label."""
        return self.target.session

    @property
    def uris(self) -> list[str]:
        """The session URIs XNAT's import service answered, once each."""
        found = [uri for b in self.batches for uri in b.uris] + (self.gradual.uris if self.gradual else [])
        return list(dict.fromkeys(found))

    @computed_field  # type: ignore[prop-decorator]
    @property
    def session_uri(self) -> str | None:
        """Where the session is: as verification found it, else as the import service answered."""
        if self.verify is not None and self.verify.uri:
            return self.verify.uri
        return self.uris[0] if self.uris else None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def experiment_id(self) -> str | None:
        """The archived session's ID, as verification found it."""
        return self.verify.experiment_id if self.verify is not None else None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def verified(self) -> bool | None:
        """Verification's verdict; None when the session was not verified."""
        return self.verify.ok if self.verify is not None else None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def missing(self) -> list[str]:
        """Scans verification found short of files."""
        return list(self.verify.missing) if self.verify is not None else []

    @computed_field  # type: ignore[prop-decorator]
    @property
    def failed_files(self) -> list[str]:
        """Files XNAT did not take in this run (and no earlier run delivered)."""
        if self.gradual is not None:
            return [f.relpath for f in self.gradual.failures]
        return [relpath for b in self.batches if not b.ok for relpath in b.files]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def files_delivered(self) -> int:
        """Files in XNAT after this run: sent now or by an earlier run."""
        return self.files - len(self.failed_files)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def files_sent(self) -> int:
        """Files sent by this run (resumed ones excluded)."""
        if self.gradual is not None:
            return self.gradual.sent_count
        return sum(len(b.files) for b in self.batches if b.ok and not b.resumed)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def bytes_sent(self) -> int:
        """Bytes sent by this run."""
        if self.gradual is not None:
            return self.gradual.bytes_sent
        return sum(b.bytes for b in self.batches if b.ok and not b.resumed)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def requests_in_doubt(self) -> int:
        """Requests of this upload that reached XNAT without an answer (then sent again)."""
        if self.gradual is not None:
            return self.gradual.requests_in_doubt
        return sum(b.requests_in_doubt for b in self.batches)

    @property
    def uploaded(self) -> bool:
        """Everything reached XNAT (in this run or, per the journal, an earlier one)."""
        if self.gradual is not None:
            return self.gradual.ok
        return bool(self.batches) and all(b.ok for b in self.batches)

    @property
    def awaits_archiving(self) -> bool:
        """Everything reached XNAT and it is not yet known archived.

        A gradual re-run that found the session archived complete sent nothing, and nothing of it
        waits.
        """
        return self.uploaded and not (self.gradual is not None and self.gradual.already_archived)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def in_conflict(self) -> bool:
        """XNAT parked (part of) this upload in CONFLICT: it meets a session it may not join on its own."""
        return (self.verify is not None and self.verify.conflict) or any(
            p.session.status == CONFLICT for p in self.parked
        )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        """Everything is in XNAT: delivered, verified when asked, and nothing of it parked."""
        return self.uploaded and (self.verify is None or self.verify.ok) and not self.parked

    @property
    def still_archiving(self) -> bool:
        """Everything reached XNAT, nothing of it is parked, and verification ran out while XNAT was still at work on it."""
        return self.uploaded and not self.parked and self.verify is not None and self.verify.processing

    def parked_descriptions(self, for_flow_run: bool = False) -> list[str]:
        """What XNAT parked of this upload, each with what a person can do after looking.

        Args:
            for_flow_run: word the next steps for a flow run's operator (the prearchive flow's
                parameters) rather than for the CLI's user (its commands). Verification chose its
                words when it ran.

        Returns:
            One line per parked prearchive row.
        """
        if self.verify is not None and self.verify.parked:
            return [f"{what}. {step}" for what, step in zip(self.verify.parked, self.verify.next_steps, strict=False)]
        return [f"{p.describe()}. {p.next_steps(for_flow_run=for_flow_run)}" for p in self.parked]


class UploadResult(BaseModel):
    """A whole REST upload: every session, what was skipped, and how long it took."""

    sessions: list[SessionResult]
    skipped: list[SkippedFile] = Field(default_factory=list)
    not_deidentified: list[SkippedFile] = Field(
        default_factory=list,
        description="Files the de-identification could not be applied to: listed, not sent (a failure).",
    )
    seconds: float = Field(description="The whole run: scan, check, upload, verify.")
    upload_seconds: float = Field(default=0.0, description="Sending only: what throughput is computed over.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def unreadable(self) -> list[SkippedFile]:
        """Files or folders that could not be read (also in skipped): not sent, a failure."""
        return [s for s in self.skipped if s.unreadable]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def files_delivered(self) -> int:
        """Files in XNAT after this run, over all sessions."""
        return sum(s.files_delivered for s in self.sessions)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def files_sent(self) -> int:
        """Files sent by this run, over all sessions."""
        return sum(s.files_sent for s in self.sessions)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def bytes_sent(self) -> int:
        """Bytes sent by this run, over all sessions."""
        return sum(s.bytes_sent for s in self.sessions)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def throughput_mb_s(self) -> float:
        """Bytes sent by this run / sending time (resumed files moved no bytes and take no time)."""
        return round(self.bytes_sent / 1e6 / self.upload_seconds, 2) if self.upload_seconds else 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def in_conflict(self) -> bool:
        """XNAT parked (part of) a session of this upload in CONFLICT."""
        return any(s.in_conflict for s in self.sessions)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def still_archiving(self) -> bool:
        """Not ok only because XNAT was still archiving what this run delivered when verification's wait ran out.

        Running the same upload later sends nothing again (the journal keeps what was delivered) and verifies.
        """
        return (
            not self.ok
            and not self.unreadable
            and not self.not_deidentified
            and all(s.ok or s.still_archiving for s in self.sessions)
        )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        """Every file is in XNAT (verified when asked), none unread, none left out by de-identification."""
        return all(s.ok for s in self.sessions) and not self.unreadable and not self.not_deidentified
