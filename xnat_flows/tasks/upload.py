"""Prefect tasks of the REST upload.

Scan, partition, upload a DICOM-zip batch, upload instances (gradual-DICOM), verify. Each wraps one
library call; the flow composes them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect import get_client, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.runtime import task_run
from prefect.tasks import exponential_backoff

from xnat_flows.client.prearchive import ParkedSession
from xnat_flows.models import XnatConnection
from xnat_flows.tasks.connection import open_client, shared_client
from xnat_flows.tasks.hints import speaks_to_operator
from xnat_flows.tasks.policies import (
    ResultOptions,
    RetryOptions,
    ServerCheck,
    existing_upload_limit,
    retry_unless_permanent,
    upload_slot,
)
from xnat_flows.transfer.archive_stream import ArchiveFormat
from xnat_flows.transfer.claim import DestinationBusyError, destination_name
from xnat_flows.transfer.journal import UploadJournal, resume_key
from xnat_flows.transfer.scan import DicomFile, Duplicates, ScanHeaders, ScanResult, scan_directory
from xnat_flows.transfer.session import (
    archive_now,
    check_destination,
    look_for_parked,
    upload_batch_resumable,
    upload_batches_of,
    upload_instances,
)
from xnat_flows.transfer.target import UploadTarget
from xnat_flows.transfer.upload import choose_archive_format
from xnat_flows.transfer.upload_result import BatchResult, GradualResult
from xnat_flows.transfer.verify import VerifyResult, prearchive_snapshot, verify_session

# Inputs hold file lists and clients are built inside: hashing them for a cache buys nothing.
_COMMON: ResultOptions = {"cache_policy": NO_CACHE, "persist_result": False}
_RETRYING: RetryOptions = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=5),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_unless_permanent,
}


@task(name="check-server", **_COMMON, retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_permanent)
@speaks_to_operator
def check_server(connection: XnatConnection, direct_archive: bool, project: str | None = None) -> ServerCheck:
    """Check the server before an upload.

    Prove the session once (the cached one from ``xnat-flows auth login``, else a login whose token
    is cached for the upload tasks), refuse Direct-Archive below 1.8.3, check that the project
    exists (XNAT would otherwise file the data under Unassigned), and find the server's upload
    concurrency limit if the site defined one.

    Args:
        connection: The XNAT and its credentials.
        direct_archive: The upload goes straight to the archive (needs XNAT 1.8.3+).
        project: The project that must exist, or None.

    Returns:
        The server's URL, version and upload concurrency limit (None when the site defined none).
    """
    with open_client(connection) as client:
        client.whoami()
        if project is not None:
            client.require_project(project)
        if direct_archive:
            client.require_direct_archive()
        return ServerCheck(
            url=client.base_url,
            version=client.server_version(),
            concurrency_limit=existing_upload_limit(client.base_url),
        )


@task(name="choose-archive-format", **_COMMON)
@speaks_to_operator
def choose_format(connection: XnatConnection) -> tuple[ArchiveFormat, str]:
    """``tgz`` over a slow (remote) link to XNAT >= 1.8.3, ``tar`` otherwise, with the reason."""
    with open_client(connection) as client:
        return choose_archive_format(client)


@task(name="check-destination", **_COMMON, retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_permanent)
@speaks_to_operator
def check_destination_task(
    connection: XnatConnection, target: UploadTarget, study_uid: str, allow_other_study: bool, per_study: bool = False
) -> tuple[UploadTarget, frozenset[str]]:
    """Refuse a destination that XNAT would park in CONFLICT or merge wrongly (``transfer.session``).

    A session label that holds, receives or stages another study (unless allowed), or this study
    under another subject; with ``per_study``, a study the project holds under another label.

    Args:
        connection: The XNAT and its credentials.
        target: The planned destination.
        study_uid: The StudyInstanceUID being sent.
        allow_other_study: Upload even into a session that holds another study.
        per_study: The upload labels each study itself.

    Returns:
        The target to use, and the prearchive's rows before the upload (so verification can tell
        this upload's outcome from older rows).
    """
    with open_client(connection) as client:
        checked = check_destination(client, target, study_uid, allow_other_study=allow_other_study, per_study=per_study)
        return checked, prearchive_snapshot(client, target.project)


@contextmanager
def destination_slots(server_url: str, targets: list[UploadTarget], timeout_seconds: float) -> Iterator[None]:
    """Hold the one slot of each destination's concurrency limit, waiting at most ``timeout_seconds``.

    The limit is ``xnat-session:HOST:PORT:P:E``, limit 1, created on first use; it is held from the
    destination check to the end of verification: two flow runs uploading to one session label, on
    any workers, run one after the other, and the second one's check sees what the first one left.

    Args:
        server_url: The XNAT's URL (part of each limit's name).
        targets: The run's destination sessions.
        timeout_seconds: The longest wait for the slots.
    """
    names = sorted({destination_name(server_url, t.project, t.session) for t in targets})
    with get_client(sync_client=True) as prefect:
        for name in names:
            # Looked up first: creating one that exists (every later run to the label) is refused, and
            # the Prefect server logs each refusal with a traceback. Two first runs at once: one creates.
            try:
                prefect.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                with contextlib.suppress(ObjectAlreadyExists):
                    prefect.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    try:
        with concurrency(names, occupy=1, timeout_seconds=timeout_seconds, strict=True):
            yield
    except TimeoutError:
        raise DestinationBusyError(
            f"Another flow run kept uploading to {', '.join(t.session for t in targets)} for more than "
            f"{timeout_seconds:g} s (concurrency limit {names[0]}): nothing was sent"
        ) from None


@task(name="look-for-parked", **_COMMON, retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_permanent)
def look_for_parked_task(
    connection: XnatConnection, target: UploadTarget, study_uid: str, prearchive_before: frozenset[str]
) -> list[ParkedSession]:
    """Without verification: one look at the prearchive for this upload's rows XNAT parked.

    Args:
        connection: The XNAT and its credentials.
        target: The destination session.
        study_uid: The study sent.
        prearchive_before: The project's prearchive rows before the upload.

    Returns:
        The parked sessions, each with what it conflicts with (``transfer.session.look_for_parked``).
    """
    with open_client(connection) as client:
        return look_for_parked(client, target, study_uid, prearchive_before)


@task(name="scan-dicom-directory", **_COMMON)
@speaks_to_operator
def scan_dicom_directory(
    source_dir: str, headers: ScanHeaders = "full", duplicates: Duplicates = "newest", skip_truncated: bool = False
) -> ScanResult:
    """Find every DICOM file under ``source_dir`` (by content, extensionless included).

    ``headers="file-meta"`` reads only what a C-STORE needs; ``duplicates``: which of two
    different files with one SOP Instance UID to send; ``skip_truncated``: send the rest when
    files are cut short instead of failing (see ``transfer.scan``). Different files holding one
    SOP Instance UID are logged as a warning, with the choice made.

    Args:
        source_dir: The folder, on the worker's host.
        headers: ``"full"``, or ``"file-meta"`` (what a C-STORE needs).
        duplicates: Which of two different files with one SOP Instance UID to send: ``newest``,
            ``oldest`` or ``stop``.
        skip_truncated: Send the rest when files are cut short instead of failing (see
            ``transfer.scan``).

    Returns:
        The instances found and the files skipped.
    """
    scan = scan_directory(Path(source_dir), headers=headers, duplicates=duplicates, skip_truncated=skip_truncated)
    if scan.conflicts:
        get_run_logger().warning(
            "%d SOP Instance UIDs are held by different files: sent the %s of each by modification time "
            "(the others are listed as skipped, 'conflicting copy')",
            len(scan.conflicts),
            duplicates,
        )
    return scan


@task(name="partition-batches", **_COMMON)
@speaks_to_operator
def partition_batches(files: list[DicomFile], workers: int) -> list[list[DicomFile]]:
    """Split into ``workers`` batches balanced by bytes, so no worker idles while another works.

    A session de-identified as it is sent: consecutive batches (``session.upload_batches_of``).

    Returns:
        The batches.
    """
    return upload_batches_of(files, workers)


@task(name="upload-batch", **_COMMON, **_RETRYING)
@speaks_to_operator
def upload_batch_task(
    connection: XnatConnection,
    batch: list[DicomFile],
    target: UploadTarget,
    archive_format: ArchiveFormat,
    index: int,
    concurrency_limit: str | None = None,
) -> BatchResult:
    """Stream one batch as a zip or tar archive into one DICOM-zip import request.

    A batch that an earlier run already delivered (the upload journal knows its content digest)
    is not sent again, so re-running a failed flow sends only what did not land.

    Args:
        connection: The XNAT and its credentials.
        batch: The files of the batch.
        target: The destination session.
        archive_format: tar, tgz or zip.
        index: The batch's number.
        concurrency_limit: The server's upload concurrency limit whose slot the request holds, or
            None.

    Returns:
        The batch's result; ``requests_in_doubt`` counts this task's earlier attempts too.
    """
    with upload_slot(concurrency_limit), shared_client(connection) as client:
        result = upload_batch_resumable(client, batch, target, archive_format, index=index, journal=UploadJournal())
    # An earlier attempt of this task failed: it may have reached XNAT unanswered (see archive_now).
    earlier_attempts = max(0, task_run.run_count - 1)
    return result.model_copy(update={"requests_in_doubt": result.requests_in_doubt + earlier_attempts})


@task(name="upload-instances", **_COMMON)
@speaks_to_operator
def upload_instances_task(
    connection: XnatConnection,
    files: list[DicomFile],
    target: UploadTarget,
    workers: int,
    concurrency_limit: str | None = None,
) -> GradualResult:
    """gradual-DICOM: one instance per request over ``workers`` keep-alive connections.

    One task for the whole set (a task per instance would cost more than the request itself);
    failed instances are listed in the result, and re-running sends only those.

    Args:
        connection: The XNAT and its credentials.
        files: The session's instances.
        target: The destination session.
        workers: Requests in flight at once.
        concurrency_limit: The server's upload concurrency limit whose slot the task holds, or None.

    Returns:
        The counts of instances sent, failed and resumed.
    """
    with upload_slot(concurrency_limit), open_client(connection) as client:
        return upload_instances(client, files, target, workers=workers, journal=UploadJournal())


@task(name="forget-delivered", **_COMMON)
@speaks_to_operator
def forget_delivered(target: UploadTarget, server_url: str) -> None:
    """Forget the journal's record of this session: verification disproved it (files missing, or parked).

    The next run sends it all again.
    """
    UploadJournal().clear(resume_key(server_url, target.key))


@task(name="archive-now", **_COMMON, retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_permanent)
@speaks_to_operator
def archive_now_task(
    connection: XnatConnection, target: UploadTarget, study_uid: str, uris: list[str], requests_in_doubt: int
) -> list[str]:
    """Ask XNAT to archive this upload's Direct-Archive session now: every file of it is in.

    Now rather than after the idle interval (XNAT 1.8.4+; a server that does not archives it as
    usual; ``transfer.session.archive_now``).

    Args:
        connection: The XNAT and its credentials.
        target: The destination session.
        study_uid: The study sent.
        uris: The session URIs the import service answered.
        requests_in_doubt: Requests that reached XNAT without an answer (then archiving is left to
            XNAT's idle timer).

    Returns:
        The Direct-Archive sessions XNAT queued.
    """
    with open_client(connection) as client:
        return archive_now(client, target, study_uid, uris, requests_in_doubt=requests_in_doubt)


@task(name="verify-session", **_COMMON, retries=2, retry_delay_seconds=10, retry_condition_fn=retry_unless_permanent)
@speaks_to_operator
def verify_uploaded_session(
    connection: XnatConnection,
    target: UploadTarget,
    expected: list[DicomFile],
    timeout_seconds: float,
    prearchive_before: frozenset[str] | None = None,
) -> VerifyResult:
    """Wait for the session in the archive and compare scans and file counts with what was sent.

    Args:
        connection: The XNAT and its credentials.
        target: The destination session.
        expected: What was sent.
        timeout_seconds: The longest wait for the session.
        prearchive_before: The project's prearchive rows before the upload, or None.

    Returns:
        The counts found per scan, with what XNAT parked and what to do about it (in a flow run
        operator's terms).
    """
    with open_client(connection) as client:
        return verify_session(
            client,
            target,
            expected,
            wait_timeout=timeout_seconds,
            prearchive_before=prearchive_before,
            for_flow_run=True,
        )
