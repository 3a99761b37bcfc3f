"""Getting DICOM into XNAT over REST: scan, partition, stream archives, upload, verify, resume.

Plain Python on ``xnat_flows.client`` (no Prefect). C-STORE lives in ``dicom_send``.
"""

from xnat_flows.transfer.archive import ArchiveFormat, archive_size, content_type_for, iter_archive
from xnat_flows.transfer.journal import UploadJournal, content_digest
from xnat_flows.transfer.partition import partition_by_bytes
from xnat_flows.transfer.scan import DicomFile, ScanResult, SkippedFile, scan_directory
from xnat_flows.transfer.session import (
    SessionUploadResult,
    StudyUploadResult,
    plan_sessions,
    send_batch,
    upload_batches,
    upload_instances,
    upload_session,
)
from xnat_flows.transfer.upload import (
    BatchResult,
    FileFailure,
    GradualResult,
    Progress,
    UploadTarget,
    upload_archive_batch,
    upload_gradual,
)
from xnat_flows.transfer.verify import VerifyResult, verify_session

__all__ = [
    "ArchiveFormat",
    "archive_size",
    "BatchResult",
    "DicomFile",
    "FileFailure",
    "GradualResult",
    "Progress",
    "ScanResult",
    "SessionUploadResult",
    "SkippedFile",
    "StudyUploadResult",
    "UploadJournal",
    "UploadTarget",
    "VerifyResult",
    "content_digest",
    "content_type_for",
    "iter_archive",
    "partition_by_bytes",
    "plan_sessions",
    "scan_directory",
    "send_batch",
    "upload_archive_batch",
    "upload_batches",
    "upload_gradual",
    "upload_instances",
    "upload_session",
    "verify_session",
]
