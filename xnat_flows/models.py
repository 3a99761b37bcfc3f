"""Pydantic models shared by the Prefect flows: parameters that render as forms in the Prefect UI.

No secret is ever a field here: passwords and tokens come from a ``XnatCredentials`` Block, the
environment (``XNAT_USER``/``XNAT_PASS``) or the user's profile, never from flow-run parameters.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class XnatConnection(BaseModel):
    """Where XNAT is and which credentials to use (resolved at run time, never stored in a run)."""

    url: str | None = Field(
        default=None, description="XNAT base URL, e.g. https://xnat.example.org. Default: the Block, $XNAT_URL or the profile."
    )
    credentials_block: str | None = Field(
        default=None, description="Name of an `xnat-credentials` Block holding URL, user and password/token."
    )
    username: str | None = Field(default=None, description="User name; the password comes from the Block, $XNAT_PASS or the profile.")
    profile: str | None = Field(default=None, description="Profile name in the xnat-flows config file.")


class UploadRequest(BaseModel):
    """What to upload and where: the form of the ``upload-dicom-session`` deployment."""

    source_dir: str = Field(description="Directory holding the DICOM files (scanned recursively; extensionless files included).")
    project: str = Field(description="XNAT project ID.")
    subject: str = Field(description="Subject label.")
    session: str = Field(description="Session (experiment) label.")
    transport: Literal["dicom-zip", "gradual-dicom"] = Field(
        default="dicom-zip", description="DICOM-zip: one archive per batch. gradual-DICOM: one instance per request."
    )
    workers: int = Field(default=4, ge=1, le=64, description="Parallel uploads; DICOM-zip sends this many batches.")
    archive_format: Literal["auto", "tar", "tgz", "zip"] = Field(
        default="auto",
        description="Archive format of each DICOM-zip batch; auto: tgz over a slow (remote) link to XNAT >= 1.8.3, else tar.",
    )
    direct_archive: bool = Field(default=True, description="Direct-Archive (XNAT 1.8.3+); off stages into the prearchive.")
    per_study: bool = Field(
        default=False,
        description="Upload each StudyInstanceUID found as its own session (label suffixed with 8 hex digits of the study's UID).",
    )
    allow_other_study: bool = Field(
        default=False,
        description="Upload even into an existing session that holds another StudyInstanceUID (refused otherwise).",
    )
    duplicates: Literal["newest", "oldest", "stop"] = Field(
        default="newest",
        description="Two different files with one SOP Instance UID: send the newest or oldest by modification time, or stop.",
    )
    verify: bool = Field(default=True, description="Read back the session and compare scans and file counts with what was sent.")
    verify_timeout_seconds: float = Field(default=600.0, gt=0, description="How long to wait for the session to appear in the archive.")


class BatchOutcome(BaseModel):
    index: int
    files: int
    bytes: int
    seconds: float
    ok: bool
    resumed: bool = False
    error: str | None = None


class SkippedInput(BaseModel):
    path: str
    reason: str


class SessionOutcome(BaseModel):
    project: str
    subject: str
    session: str
    study_uid: str
    session_uri: str | None = None
    experiment_id: str | None = None
    files_sent: int = 0
    bytes_sent: int = 0
    failed_files: list[str] = Field(default_factory=list)
    batches: list[BatchOutcome] = Field(default_factory=list)
    verified: bool | None = None
    missing: list[str] = Field(default_factory=list)


class UploadSessionResult(BaseModel):
    """What the ``upload-dicom-session`` flow returns (and the CLI prints)."""

    sessions: list[SessionOutcome]
    skipped: list[SkippedInput] = Field(default_factory=list)
    unreadable: list[SkippedInput] = Field(
        default_factory=list, description="Files or folders that could not be read (also in skipped): not sent, a failure."
    )
    files_sent: int
    bytes_sent: int
    seconds: float  # the whole run: scan, upload, verify
    upload_seconds: float  # the transfer itself
    throughput_mb_s: float  # bytes sent / upload_seconds

    @property
    def ok(self) -> bool:
        return not self.unreadable and all(
            not s.failed_files and s.verified is not False and all(b.ok for b in s.batches) for s in self.sessions
        )


class DicomReceiverTarget(BaseModel):
    """Where to C-STORE: an XNAT DICOM receiver (or a ``xnat-dicom-receiver`` Block by name)."""

    receiver_block: str | None = Field(default=None, description="Name of an `xnat-dicom-receiver` Block; fields below override it.")
    host: str | None = Field(default=None, description="Receiver host.")
    port: int | None = Field(default=None, ge=1, le=65535, description="Receiver port (XNAT's standard receiver: 8104).")
    called_aet: str | None = Field(default=None, max_length=16, description="The receiver's AE title (default XNAT).")
    calling_aet: str | None = Field(default=None, max_length=16, description="Our AE title (default XNATFLOWS).")


class SendDicomRequest(BaseModel):
    """What to send by C-STORE: the form of the ``send-dicom`` deployment."""

    source_dir: str = Field(description="Directory holding the DICOM files (scanned recursively, same scanner as REST uploads).")
    workers: int = Field(default=4, ge=1, le=32, description="Parallel associations.")
    routing_project: str | None = Field(
        default=None, description="Set `Project:` routing in PatientComments on the sent copy (your files are not changed)."
    )
    routing_subject: str | None = Field(default=None, description="With routing_project: `Subject:` routing.")
    routing_session: str | None = Field(default=None, description="With routing_project: `Session:` routing.")


class InstanceFailure(BaseModel):
    path: str
    status: str
    meaning: str


class SendDicomResult(BaseModel):
    """What the ``send-dicom`` flow returns."""

    sent: int
    resumed: int
    failed: list[InstanceFailure]
    skipped: list[SkippedInput]
    unreadable: list[SkippedInput] = Field(
        default_factory=list, description="Files or folders that could not be read (also in skipped): not sent, a failure."
    )
    bytes_sent: int
    seconds: float
    instances_per_second: float
    associations: list[dict]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.unreadable
