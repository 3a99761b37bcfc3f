"""Getting DICOM into XNAT over REST: scan, partition, stream archives, upload, verify, resume.

Plain Python on ``xnat_flows.client`` (no Prefect). C-STORE lives in the ``cstore`` package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xnat_flows._lazy import lazy_exports

if TYPE_CHECKING:
    from xnat_flows.transfer.archive_stream import (
        ArchiveFormat,
        archive_size,
        content_type_for,
        iter_archive,
    )
    from xnat_flows.transfer.journal import (
        UploadJournal,
        content_digest,
    )
    from xnat_flows.transfer.partition import (
        partition_by_bytes,
    )
    from xnat_flows.transfer.progress import (
        Progress,
    )
    from xnat_flows.transfer.scan import (
        DicomFile,
        ScanResult,
        SkippedFile,
        scan_directory,
    )
    from xnat_flows.transfer.sequence import (
        UploadSteps,
        sequence_upload,
    )
    from xnat_flows.transfer.session import (
        ClientSteps,
        archive_now,
        plan_sessions,
        upload_batch_resumable,
        upload_batches,
        upload_instances,
        upload_session,
    )
    from xnat_flows.transfer.target import (
        UploadTarget,
    )
    from xnat_flows.transfer.upload import (
        upload_batch,
        upload_gradual,
    )
    from xnat_flows.transfer.upload_result import (
        BatchResult,
        FileFailure,
        GradualResult,
        SessionResult,
        UploadResult,
    )
    from xnat_flows.transfer.verify import (
        VerifyResult,
        verify_session,
    )

# Loaded on first use (PEP 562): the C-STORE sender imports ``transfer.cstore.send`` without
# paying for httpx and the REST client, which start-up time shows (docs/cstore.md).
_EXPORTS = {
    "ArchiveFormat": "xnat_flows.transfer.archive_stream",
    "archive_size": "xnat_flows.transfer.archive_stream",
    "content_type_for": "xnat_flows.transfer.archive_stream",
    "iter_archive": "xnat_flows.transfer.archive_stream",
    "UploadJournal": "xnat_flows.transfer.journal",
    "content_digest": "xnat_flows.transfer.journal",
    "partition_by_bytes": "xnat_flows.transfer.partition",
    "DicomFile": "xnat_flows.transfer.scan",
    "ScanResult": "xnat_flows.transfer.scan",
    "SkippedFile": "xnat_flows.transfer.scan",
    "scan_directory": "xnat_flows.transfer.scan",
    "UploadSteps": "xnat_flows.transfer.sequence",
    "sequence_upload": "xnat_flows.transfer.sequence",
    "ClientSteps": "xnat_flows.transfer.session",
    "archive_now": "xnat_flows.transfer.session",
    "plan_sessions": "xnat_flows.transfer.session",
    "upload_batch_resumable": "xnat_flows.transfer.session",
    "upload_batches": "xnat_flows.transfer.session",
    "upload_instances": "xnat_flows.transfer.session",
    "upload_session": "xnat_flows.transfer.session",
    "BatchResult": "xnat_flows.transfer.upload_result",
    "FileFailure": "xnat_flows.transfer.upload_result",
    "GradualResult": "xnat_flows.transfer.upload_result",
    "SessionResult": "xnat_flows.transfer.upload_result",
    "UploadResult": "xnat_flows.transfer.upload_result",
    "Progress": "xnat_flows.transfer.progress",
    "UploadTarget": "xnat_flows.transfer.target",
    "upload_batch": "xnat_flows.transfer.upload",
    "upload_gradual": "xnat_flows.transfer.upload",
    "VerifyResult": "xnat_flows.transfer.verify",
    "verify_session": "xnat_flows.transfer.verify",
}


__all__ = [
    "ArchiveFormat",
    "archive_size",
    "BatchResult",
    "DicomFile",
    "FileFailure",
    "GradualResult",
    "Progress",
    "ScanResult",
    "SessionResult",
    "ClientSteps",
    "SkippedFile",
    "UploadResult",
    "UploadSteps",
    "sequence_upload",
    "UploadJournal",
    "UploadTarget",
    "VerifyResult",
    "archive_now",
    "content_digest",
    "content_type_for",
    "iter_archive",
    "partition_by_bytes",
    "plan_sessions",
    "scan_directory",
    "upload_batch_resumable",
    "upload_batch",
    "upload_batches",
    "upload_gradual",
    "upload_instances",
    "upload_session",
    "verify_session",
]


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
