"""The one sequence of a C-STORE upload, written once against a small step interface.

check the destination → C-ECHO the receiver → scan the folder → de-identify → send (journaled,
resumable) → with verify, wait until XNAT's archive holds every instance sent and hand each
landed study on. The library runs its steps directly (``DirectSteps``: the CLI); the
``send-dicom`` flow supplies steps backed by its Prefect tasks (``flows.cstore``), so a run
shows each task with its retries and concurrency limits, and neither repeats this order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from xnat_flows.client.errors import InputError
from xnat_flows.transfer.cstore.results import ArchivedStudy, InstanceCountCallback, InstanceOutcome, SendResult
from xnat_flows.transfer.scan import DicomFile, Duplicates, ScanHeaders, ScanResult

if TYPE_CHECKING:
    from xnat_flows.client.client import XnatClient
    from xnat_flows.transfer.cstore.inputs import RoutingOverride
    from xnat_flows.transfer.cstore.resume import StudyHeldCheck
    from xnat_flows.transfer.deidentify import Anonymizer


class CStoreSteps(Protocol):
    """The steps of a C-STORE upload, in the order ``send_cstore`` runs them."""

    def check_destination(self) -> None:
        """Ask XNAT, where it can be asked, that the routing project exists, before anything is read or sent.

        XNAT files data for an unknown project under Unassigned.
        """

    def check_receiver(self) -> None:
        """The C-ECHO pre-flight: a wrong host, port or AE title fails here."""

    def scan(self, headers: ScanHeaders) -> ScanResult:
        """Every DICOM file under the source folder, read to ``headers``."""

    def deidentify(self, files: list[DicomFile]) -> tuple[list[DicomFile], list[InstanceOutcome]]:
        """The files as they will be sent, and a failed outcome for each that cannot be de-identified (never sent)."""

    def send(self, files: list[DicomFile]) -> SendResult:
        """C-STORE the files, journaled: what an earlier run delivered is not sent again."""

    def wait_for_archive(self, instances: dict[str, int]) -> list[ArchivedStudy]:
        """Wait, bounded, until XNAT's archive holds the instances sent per StudyInstanceUID."""

    def landed(self, study: ArchivedStudy, files: list[DicomFile]) -> None:
        """One study is complete in the archive: ``files`` are its instances as sent."""


def send_cstore(steps: CStoreSteps, *, source: str | Path, verify: bool = False) -> SendResult:
    """Run a C-STORE upload through ``steps``.

    Args:
        steps: The steps: ``DirectSteps`` in the library and the CLI, tasks in the flow.
        source: The folder scanned (named in the error when it holds no DICOM).
        verify: After a send that stored everything, wait for the archive and hand on each study.

    Returns:
        The send's result with the folder's skipped files and, with verify, where each study
        landed; ``ok`` says whether it all arrived.

    Raises:
        InputError: The folder holds no DICOM file.
    """
    steps.check_destination()
    steps.check_receiver()
    # Verifying needs each file's StudyInstanceUID (in the dataset, not the file meta).
    scan = steps.scan("full" if verify else "file-meta")
    if not scan.files:
        raise InputError(
            f"no DICOM files found under {source} ({len(scan.skipped)} other files skipped)",
            hint="Point the upload at the folder that holds the DICOM export",
            reason="no-dicom-files",
        )
    files, refused = steps.deidentify(list(scan.files))
    result = steps.send(files)
    result.failed += refused
    result.not_sent = list(scan.skipped)
    result.conflicts = [[version.relpath for version in versions] for versions in scan.conflicts]
    stored = not result.failed and not result.skipped and not result.unreadable
    if verify and stored:
        instances = Counter(f.study_uid for f in files)  # as sent: de-identified UIDs
        result.archived = steps.wait_for_archive(dict(instances))
        result.verified = True
        for study in result.archived:
            steps.landed(study, [f for f in files if f.study_uid == study.study_uid])
    return result


@dataclass
class DirectSteps:
    """The steps run in this process: the library's own calls (the CLI uses these).

    ``held``: whether XNAT still holds a study the journal says was delivered (None: XNAT cannot
    be asked, the journal is not trusted); ``client``: opens a client of that XNAT, needed only
    with ``verify``; ``project_check``: called first, raises when the routing project is unknown.
    """

    source: str | Path
    host: str
    port: int
    called_aet: str = "XNAT"
    calling_aet: str = "XNATFLOWS"
    workers: int = 4
    routing: RoutingOverride | None = None
    duplicates: Duplicates = "newest"
    skip_truncated: bool = False
    anonymizer: Anonymizer | None = None
    require_clean: bool = False  # the gate (``deidentify.require_clean``): nothing sent if identifiers survive
    allow: Sequence[str] = ()  # with require_clean: the attributes the site keeps on purpose
    held: StudyHeldCheck | None = None
    project_check: Callable[[], None] | None = None
    client: Callable[[], XnatClient] | None = None
    verify_timeout_seconds: float = 600.0
    progress: InstanceCountCallback | None = None
    options: Mapping[str, Any] = field(default_factory=dict)  # more ``store_instances`` options
    scanned_bytes: int = 0  # the DICOM files' bytes, once scanned (a progress bar's total)
    sent: SendResult | None = None  # the send's result, once sent: what to report when the archive wait fails

    def check_destination(self) -> None:
        """The routing project exists (``project_check``), when given."""
        if self.project_check is not None:
            self.project_check()

    def check_receiver(self) -> None:
        """C-ECHO the receiver."""
        from xnat_flows.transfer.cstore.connect import echo

        echo(self.host, self.port, self.called_aet, self.calling_aet)

    def scan(self, headers: ScanHeaders) -> ScanResult:
        """Scan the source folder."""
        from xnat_flows.transfer.scan import scan_directory

        scan = scan_directory(
            self.source, headers=headers, duplicates=self.duplicates, skip_truncated=self.skip_truncated
        )
        self.scanned_bytes = scan.total_bytes
        return scan

    def deidentify(self, files: list[DicomFile]) -> tuple[list[DicomFile], list[InstanceOutcome]]:
        """Apply the anonymizer, with the routing's labels as its variables (first the gate, if asked)."""
        from xnat_flows.transfer.cstore.send import deidentify_for_send, routing_variables

        if self.require_clean:
            from xnat_flows.transfer.deidentify import require_clean

            require_clean(self.anonymizer, [(routing_variables(self.routing), files)], self.allow)
        return deidentify_for_send(files, self.anonymizer, routing_variables(self.routing))

    def send(self, files: list[DicomFile]) -> SendResult:
        """The journaled send (``resume.store_instances_resumable``)."""
        from xnat_flows.transfer.cstore.resume import store_instances_resumable
        from xnat_flows.transfer.journal import UploadJournal

        self.sent = store_instances_resumable(
            files,
            UploadJournal(),
            host=self.host,
            port=self.port,
            called_aet=self.called_aet,
            calling_aet=self.calling_aet,
            workers=self.workers,
            routing=self.routing,
            held=self.held,
            preflight=False,
            progress=self.progress,
            **self.options,
        )
        return self.sent

    def wait_for_archive(self, instances: dict[str, int]) -> list[ArchivedStudy]:
        """Poll XNAT's archive (``archived.wait_for_archived_studies``)."""
        from xnat_flows.transfer.cstore.archived import wait_for_archived_studies

        if self.client is None:
            raise InputError("verifying a C-STORE needs a client of the XNAT behind the receiver")
        project = self.routing.project if self.routing else None
        return wait_for_archived_studies(self.client(), instances, project, self.verify_timeout_seconds)

    def landed(self, study: ArchivedStudy, files: list[DicomFile]) -> None:
        """Nothing more to do in the library: the result lists the study."""
