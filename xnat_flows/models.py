"""Pydantic models shared by the Prefect flows: parameters that render as forms in the Prefect UI.

No secret is ever a field here: passwords and tokens come from a ``XnatCredentials`` Block, the
environment (``XNAT_USER``/``XNAT_PASS``) or the user's profile, never from flow-run parameters.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from xnat_flows.blocks import DicomEditScript, DicomReceiver, XnatCredentials
from xnat_flows.client.archive import is_valid_label
from xnat_flows.transfer.scan import Duplicates
from xnat_flows.transfer.target import UploadTarget

# XNAT project IDs: letters, digits, underscore and hyphen (XNAT refuses others when a project is created).
PROJECT_ID_PATTERN = r"^[A-Za-z0-9_-]+$"

# Where a flow's folders are: the run reads them on the host where it runs, not the browser's.
ON_THE_WORKER = "on the host where the flow runs (the worker's), not the computer of this browser"


# The scan's choices, one form field each for every flow that scans a folder (the REST upload and
# C-STORE run the same scanner, transfer.scan.scan_directory).
DuplicateInstances = Annotated[
    Duplicates,
    Field(
        title="Duplicate instances",
        description="Two different files with one SOP Instance UID: send the newest or oldest by modification time, or stop.",
    ),
]
SkipTruncated = Annotated[
    bool,
    Field(
        title="Skip cut-short files",
        description="Send the other files when some DICOM files are cut short; off (the default) the run fails "
        "before sending anything, since such a folder is an export still being written.",
    ),
]


def ui_title(title: str, **field: Any) -> Any:
    """A flow parameter's label in the Prefect UI's run form, as ``Annotated[T, ui_title(...)]``.

    Prefect labels a flow's parameters by their Python names (``inbox_dir``); a title given in
    ``json_schema_extra`` is the one the form shows. Fields of models take ``Field(title=...)``."""
    return Field(json_schema_extra={"title": title}, **field)


class XnatConnection(BaseModel):
    """Which XNAT and which credentials: an ``xnat-credentials`` Block (picked in the UI), else
    the worker's environment or profile (resolved at run time, never stored in a run)."""

    credentials: XnatCredentials | None = Field(
        default=None,
        title="XNAT credentials Block",
        description="The `xnat-credentials` Block (URL, user, password) to use. Empty: the worker's XNAT_URL/XNAT_USER/XNAT_PASS or profile.",
    )
    # Plain strings ("" = not given), so the run form offers a text box, not a type choice.
    url: str = Field(
        default="",
        title="XNAT URL",
        description="Only to name the server without a Block (or to check that the Block is for this server); e.g. https://xnat.example.org.",
    )
    username: str = Field(
        default="",
        title="User",
        description="Without a Block: the user; the password comes from $XNAT_PASS or the profile.",
    )
    profile: str = Field(
        default="", title="Profile", description="Without a Block: a profile of the worker's xnat-flows config file."
    )

    @field_validator("url", "username", "profile", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return "" if value is None else value

    @model_validator(mode="before")
    @classmethod
    def _block_by_name(cls, values: Any) -> Any:
        """``credentials_block="name"`` (Python callers, older deployments): load that Block."""
        if isinstance(values, dict) and values.get("credentials_block"):
            values = dict(values)
            name = values.pop("credentials_block")
            values.setdefault("credentials", XnatCredentials.load(name))
        elif isinstance(values, dict) and "credentials_block" in values:
            values = {k: v for k, v in values.items() if k != "credentials_block"}
        return values


class Deidentification(BaseModel):
    """How an upload de-identifies each file as it sends it (docs/anonymization.md): a DicomEdit
    script (a ``dicomedit-script`` Block, or its text), DICOM's Basic Profile, XNAT's own scripts,
    applied in the order: XNAT's, the script, the profile. All empty: files are sent as they are."""

    script_block: DicomEditScript | None = Field(
        default=None, title="DicomEdit script Block", description="A `dicomedit-script` Block to apply."
    )
    script: str = Field(
        default="", title="DicomEdit script", description="Script text to apply (instead of a Block). Empty: none."
    )
    profile: str = Field(
        default="",
        pattern=r"^(basic(,[a-z-]+)*)?$",
        title="Basic Profile",
        description="`basic` or `basic,option,...` (e.g. basic,retain-uids): DICOM PS3.15 Annex E. Empty: none.",
    )
    from_server: bool = Field(
        default=False,
        title="XNAT's own scripts",
        description="Apply XNAT's enabled site and project anonymization scripts before sending (XNAT is asked "
        "not to apply them again).",
    )

    allowed_urls: list[str] = Field(
        default_factory=list,
        title="URLs getURL may reach",
        description="URL prefixes (e.g. https://ids.site.local/) a script's getURL may fetch a value from; a "
        "request carries what its URL holds. Empty: a script calling getURL is refused.",
    )

    require_clean: bool = Field(
        default=False,
        title="Stop if identifiers survive",
        description="Before sending, try the rules on every file (as `xnat-flows anon check` does, ~1 ms a "
        "file) and fail the run, sending nothing, if an identifying attribute of DICOM's Basic Profile survives "
        "them (other than those allowed below) or a file cannot be de-identified. The anon-check artifact "
        "lists what survives.",
    )
    allow: list[str] = Field(
        default_factory=list,
        title="Identifying attributes kept on purpose",
        description="With 'Stop if identifiers survive': attributes the site keeps on purpose, not a reason to "
        "stop: a keyword (StudyDate), a tag (0008,0020), 'private', or a profile option (retain-uids).",
    )

    def script_text(self) -> tuple[str, str] | None:
        """(source, text) of the script asked for, if any."""
        if self.script.strip():
            return "script", self.script
        if self.script_block is not None:
            return "dicomedit-script Block", self.script_block.script
        return None

    @property
    def wanted(self) -> bool:
        return bool(self.script_text() or self.profile or self.from_server)

    @model_validator(mode="after")
    def _a_gate_needs_rules(self) -> Deidentification:
        if self.require_clean and not self.wanted:
            from xnat_flows.transfer.deidentify import GATE_WITHOUT_RULES

            raise ValueError(f"{GATE_WITHOUT_RULES}: add a script, a dicomedit-script Block, a profile or from_server")
        return self


class UploadRequest(BaseModel):
    """What to upload and where: the form of the ``upload-dicom-session`` deployment."""

    source_dir: str = Field(
        title="DICOM folder (on the worker's host)",
        description=f"Folder holding the DICOM files, {ON_THE_WORKER}; scanned recursively, extensionless files included.",
    )
    # The pattern goes to the form (the UI checks it as the operator types); the validator below
    # gives the run's error the words of the CLI's.
    project: str = Field(
        title="Project ID", json_schema_extra={"pattern": PROJECT_ID_PATTERN}, description="XNAT project ID."
    )
    subject: str = Field(
        title="Subject label", json_schema_extra={"pattern": PROJECT_ID_PATTERN}, description="Subject label."
    )
    session: str = Field(
        title="Session label",
        json_schema_extra={"pattern": PROJECT_ID_PATTERN},
        description="Session (experiment) label.",
    )
    transport: Literal["dicom-zip", "gradual-dicom"] = Field(
        default="dicom-zip",
        title="Transport",
        description="DICOM-zip: one archive per batch. gradual-DICOM: one instance per request.",
    )
    workers: int = Field(
        default=4,
        ge=1,
        le=64,
        title="Parallel uploads",
        description="Parallel uploads; DICOM-zip sends this many batches.",
    )
    archive_format: Literal["auto", "tar", "tgz", "zip"] = Field(
        default="auto",
        title="Archive format",
        description="Archive format of each DICOM-zip batch; auto: tgz over a slow (remote) link to XNAT >= 1.8.3, else tar.",
    )
    direct_archive: bool = Field(
        default=True,
        title="Direct-Archive",
        description="Direct-Archive (XNAT 1.8.3+); off stages into the prearchive.",
    )
    archive_when_complete: bool = Field(
        default=True,
        title="Archive when complete",
        description="Direct-Archive: ask XNAT (1.8.4+) to archive the session once every file is in; "
        "off leaves it to XNAT's idle interval (5 minutes by default).",
    )
    per_study: bool = Field(
        default=False,
        title="One session per study",
        description="Upload each StudyInstanceUID found as its own session (label suffixed with 8 hex digits of the study's UID).",
    )
    allow_other_study: bool = Field(
        default=False,
        title="Allow another study in the session",
        description="Upload even into an existing session that holds another StudyInstanceUID (refused otherwise).",
    )
    duplicates: DuplicateInstances = "newest"
    skip_truncated: SkipTruncated = False
    verify: bool = Field(
        default=True,
        title="Verify",
        description="Read back the session and compare scans and file counts with what was sent.",
    )
    verify_timeout_seconds: float = Field(
        default=600.0,
        gt=0,
        title="Verify timeout (s)",
        description="How long to wait for the session to appear in the archive.",
    )
    deidentify: Deidentification = Field(
        default_factory=Deidentification,
        title="De-identification",
        description="De-identify each file as it is sent (the originals are not changed).",
    )

    @field_validator("project", "subject", "session")
    @classmethod
    def _xnat_label(cls, value: str, info: ValidationInfo) -> str:
        if not is_valid_label(value):
            raise ValueError(f"Invalid XNAT {info.field_name} label {value!r}: use only letters, digits, '_' and '-'")
        return value

    def target(self) -> UploadTarget:
        """Where this upload goes, as the library takes it.

        Returns:
            The request's destination (with ``per_study``: the label each study's label starts with).
        """
        return UploadTarget(
            project=self.project,
            subject=self.subject,
            session=self.session,
            direct_archive=self.direct_archive,
            archive_when_complete=self.archive_when_complete,
            prevent_anon=self.deidentify.from_server,  # XNAT's scripts were applied here: not again
        )


class DicomReceiverTarget(BaseModel):
    """Where to C-STORE: an ``xnat-dicom-receiver`` Block (picked in the UI), fields below override it."""

    block: DicomReceiver | None = Field(
        default=None,
        title="DICOM receiver Block",
        description="An `xnat-dicom-receiver` Block; the fields below override it.",
    )
    # Plain defaults ("" and 0 mean "from the Block, else XNAT's default"), not ``None``: an optional
    # field makes Prefect's form ask the operator to pick a type before typing.
    host: str = Field(
        default="",
        title="Host",
        pattern=r"^([A-Za-z0-9]([A-Za-z0-9.:-]*[A-Za-z0-9])?)?$",
        description="Receiver host name or IP address (no scheme, no port). Empty: the Block's.",
    )
    port: int = Field(
        default=0,
        ge=0,
        le=65535,
        title="Port",
        description="Receiver port. 0: the Block's, else XNAT's standard receiver port 8104.",
    )
    called_aet: str = Field(
        default="",
        max_length=16,
        pattern=r"^([^\\]*\S[^\\]*)?$",
        title="Called AE title",
        description="The receiver's AE title; up to 16 characters, no backslash. Empty: the Block's, else XNAT.",
    )
    calling_aet: str = Field(
        default="",
        max_length=16,
        pattern=r"^([^\\]*\S[^\\]*)?$",
        title="Calling AE title",
        description="Our AE title. Empty: the Block's, else XNATFLOWS.",
    )

    @model_validator(mode="before")
    @classmethod
    def _block_by_name(cls, values: Any) -> Any:
        """``receiver_block="name"`` (Python callers, older deployments): load that Block."""
        if isinstance(values, dict) and "receiver_block" in values:
            values = dict(values)
            name = values.pop("receiver_block")
            if name:
                values.setdefault("block", DicomReceiver.load(name))
        return values


class SendDicomRequest(BaseModel):
    """What to send by C-STORE: the form of the ``send-dicom`` deployment."""

    source_dir: str = Field(
        title="DICOM folder (on the worker's host)",
        description=f"Folder holding the DICOM files, {ON_THE_WORKER}; scanned recursively, as for REST uploads.",
    )
    workers: int = Field(default=4, ge=1, le=32, title="Parallel uploads", description="Parallel DICOM associations.")
    routing_project: str = Field(
        default="",
        pattern=r"^([A-Za-z0-9_-]+)?$",
        title="Route to project",
        description="Set `Project:` routing in PatientComments on the sent copy (your files are not changed). Empty: XNAT's own routing.",
    )
    routing_subject: str = Field(
        default="", title="Route to subject", description="With a project to route to: `Subject:` routing."
    )
    routing_session: str = Field(
        default="", title="Route to session", description="With a project to route to: `Session:` routing."
    )
    duplicates: DuplicateInstances = "newest"
    skip_truncated: SkipTruncated = False
    verify: bool = Field(
        default=False,
        title="Wait and verify",
        description="After sending, wait until XNAT has archived the session(s) the instances went to (found by "
        "StudyInstanceUID, all instances counted), then emit xnat.session.archived for each. Needs the connection.",
    )
    verify_timeout_seconds: float = Field(
        default=600.0,
        gt=0,
        le=86400,
        title="Verify timeout (s)",
        description="How long to wait for the archive (XNAT archives C-STORE sessions after its session-idle interval).",
    )
    deidentify: Deidentification = Field(
        default_factory=Deidentification,
        title="De-identification",
        description="De-identify each file as it is sent (the originals are not changed); a script's project, "
        "subject and session variables are the routing's.",
    )
