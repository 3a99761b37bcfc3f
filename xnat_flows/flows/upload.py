"""Flow ``upload-dicom-session``: the REST Import API upload (DICOM-zip or gradual-DICOM)."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import as_completed

from xnat_flows.client.errors import InputError, XnatError
from xnat_flows.events import emit_upload_result
from xnat_flows.models import (
    BatchOutcome,
    SessionOutcome,
    SkippedInput,
    UploadRequest,
    UploadSessionResult,
    XnatConnection,
)
from xnat_flows.tasks.upload import (
    check_destination_task,
    check_server,
    choose_format,
    forget_delivered,
    partition_batches,
    scan_dicom_directory,
    upload_batch,
    upload_instances,
    verify_uploaded_session,
)
from xnat_flows.transfer.scan import DicomFile
from xnat_flows.transfer.session import plan_sessions
from xnat_flows.transfer.upload import UploadTarget


class UploadIncompleteError(XnatError):
    """Some files did not land; the message lists them and a re-run sends only those."""


@flow(name="upload-dicom-session", log_prints=False, validate_parameters=True)
def upload_dicom_session(
    request: UploadRequest, connection: XnatConnection = XnatConnection()
) -> UploadSessionResult:
    """Upload a directory of DICOM files to one XNAT session through the REST Import API."""
    logger = get_run_logger()
    started = time.perf_counter()
    _target(request)  # bad labels fail before anything else, with their own message
    server = check_server(connection, request.direct_archive, request.project)
    logger.info(
        "XNAT %s; uploading %s%s", server.version or "(version unknown)", request.source_dir,
        f" (holding slots of concurrency limit {server.concurrency_limit})" if server.concurrency_limit else "",
    )
    scan = scan_dicom_directory(request.source_dir, duplicates=request.duplicates)
    if scan.conflicts:
        logger.warning("%d SOP Instance UIDs are held by different files: sent the %s of each by modification time "
                       "(the others are listed as skipped, 'conflicting copy')", len(scan.conflicts), request.duplicates)
    if not scan.files:
        raise InputError(
            f"no DICOM files found under {request.source_dir} ({len(scan.skipped)} other files skipped); "
            "point source_dir at the folder that holds the scanner export"
        )
    for skipped in scan.skipped:
        (logger.warning if skipped.unreadable else logger.info)("skipped %s: %s", skipped.path, skipped.reason)
    plans = plan_sessions(scan, _target(request), per_study=request.per_study)
    # Every session is checked before anything is sent: none may hold another study (unless asked).
    checked = [check_destination_task(connection, target, files[0].study_uid, request.allow_other_study)
               for target, files in plans]
    plans = [(target, files) for (target, _), (_, files) in zip(checked, plans, strict=True)]
    prearchive_before = [before for _, before in checked]
    archive_format = request.archive_format
    if request.transport == "dicom-zip" and archive_format == "auto":
        archive_format, why = choose_format(connection)
        logger.info("archive format %s (%s)", archive_format, why)

    progress_id = create_progress_artifact(progress=0.0, key=None, description="Files uploaded (%)")
    total_files = len(scan.files)
    done_files = 0

    outcomes: list[SessionOutcome] = []
    upload_seconds = 0.0
    for (target, files), before in zip(plans, prearchive_before, strict=True):
        upload_started = time.perf_counter()
        outcome = SessionOutcome(
            project=target.project, subject=target.subject, session=target.session, study_uid=files[0].study_uid
        )
        if request.transport == "gradual-dicom":
            gradual = upload_instances(connection, files, target, request.workers, server.concurrency_limit)
            outcome.files_sent = gradual.sent_count + gradual.resumed_count
            outcome.bytes_sent = gradual.bytes_sent
            outcome.failed_files = [f"{failure.relpath}: {failure.error}" for failure in gradual.failures]
            outcome.session_uri = gradual.uris[0] if gradual.uris else None
            done_files += len(files)
            update_progress_artifact(progress_id, 100.0 * done_files / total_files)
        else:
            batches = partition_batches(files, request.workers)
            futures = {
                upload_batch.submit(connection, batch, target, archive_format, index, server.concurrency_limit): (index, batch)
                for index, batch in enumerate(batches)
            }
            for future in as_completed(list(futures)):
                index, batch = futures[future]
                outcome.batches.append(_batch_outcome(future, index, batch))
                done_files += len(batch)
                update_progress_artifact(progress_id, 100.0 * done_files / total_files)
            outcome.batches.sort(key=lambda b: b.index)
            sent = [b for b in outcome.batches if b.ok]
            outcome.files_sent = sum(b.files for b in sent)
            outcome.bytes_sent = sum(b.bytes for b in sent)
            outcome.failed_files = [
                file.relpath for b in outcome.batches if not b.ok for file in batches[b.index]
            ]
            uris = [uri for future in futures if future.state.is_completed() for uri in future.result().uris]
            outcome.session_uri = uris[0] if uris else None
        upload_seconds += time.perf_counter() - upload_started
        if not outcome.failed_files:
            forget_delivered(target, server.url)
        if request.verify and not outcome.failed_files:
            verified = verify_uploaded_session(connection, target, files, request.verify_timeout_seconds, before)
            outcome.verified = verified.ok
            outcome.experiment_id = verified.experiment_id
            outcome.missing = list(verified.missing)
            if verified.uri:
                outcome.session_uri = verified.uri
        outcomes.append(outcome)

    seconds = time.perf_counter() - started
    bytes_sent = sum(o.bytes_sent for o in outcomes)
    result = UploadSessionResult(
        sessions=outcomes,
        skipped=[SkippedInput(path=str(s.path), reason=s.reason) for s in scan.skipped],
        unreadable=[SkippedInput(path=str(s.path), reason=s.reason) for s in scan.unreadable],
        files_sent=sum(o.files_sent for o in outcomes),
        bytes_sent=bytes_sent,
        seconds=round(seconds, 3),
        upload_seconds=round(upload_seconds, 3),
        throughput_mb_s=round(bytes_sent / 1e6 / upload_seconds, 2) if upload_seconds else 0.0,
    )
    _publish_batch_table(result)
    # Events carry project, subject, experiment ID and URI so deployments can chain processing.
    emit_upload_result(result, server.url, direct_archive=request.direct_archive, transport=request.transport,
                       source=request.source_dir)
    if not result.ok:
        raise UploadIncompleteError(_incomplete_message(result))
    logger.info(
        "uploaded %d files (%.1f MB) in %.1f s (%.1f MB/s); whole run %.1f s",
        result.files_sent, result.bytes_sent / 1e6, result.upload_seconds, result.throughput_mb_s, result.seconds,
    )
    return result


def _target(request: UploadRequest) -> UploadTarget:
    return UploadTarget(
        project=request.project,
        subject=request.subject,
        session=request.session,
        direct_archive=request.direct_archive,
    )


def _batch_outcome(future, index: int, batch: list[DicomFile]) -> BatchOutcome:
    try:
        result = future.result()
    except Exception as exc:  # noqa: BLE001 - the batch failed for good; report, do not hide it
        return BatchOutcome(
            index=index, files=len(batch), bytes=sum(f.size for f in batch), seconds=0.0, ok=False, error=str(exc)
        )
    return BatchOutcome(
        index=index, files=len(result.files), bytes=result.bytes, seconds=round(result.seconds, 3), ok=True,
        resumed=result.resumed,
    )


def _publish_batch_table(result: UploadSessionResult) -> None:
    rows = [
        {
            "session": f"{s.project}/{s.subject}/{s.session}",
            "batch": b.index,
            "files": b.files,
            "MB": round(b.bytes / 1e6, 2),
            "seconds": b.seconds,
            "outcome": "ok" if b.ok else f"failed: {b.error}",
        }
        for s in result.sessions
        for b in s.batches
    ] or [
        {
            "session": f"{s.project}/{s.subject}/{s.session}",
            "files sent": s.files_sent,
            "failed": len(s.failed_files),
            "verified": s.verified,
        }
        for s in result.sessions
    ]
    create_table_artifact(table=rows, description="Per-batch outcome of the DICOM upload")


def _incomplete_message(result: UploadSessionResult) -> str:
    lines = ["upload incomplete; re-run the same upload to send what did not land:"]
    if result.unreadable:
        lines.append(f"  {len(result.unreadable)} files or folders could not be read (make them readable), e.g. "
                     + "; ".join(f"{u.path}: {u.reason}" for u in result.unreadable[:3]))
    for s in result.sessions:
        if s.failed_files:
            lines.append(f"  {s.project}/{s.subject}/{s.session}: {len(s.failed_files)} files not sent, e.g. {s.failed_files[:3]}")
        if s.verified is False:
            lines.append(f"  {s.project}/{s.subject}/{s.session}: verification found missing {s.missing[:5]}")
    return "\n".join(lines)
