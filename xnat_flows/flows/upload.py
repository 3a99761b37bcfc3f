"""Flow ``upload-dicom-session``: the REST Import API upload (DICOM-zip or gradual-DICOM)."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Annotated, cast
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import as_completed

from xnat_flows.client.errors import ConflictError, InputError, XnatError
from xnat_flows.client.prearchive import ParkedSession
from xnat_flows.events import absolute_uri, arrival, emit_upload_failed, emit_upload_result, public_base_url
from xnat_flows.flows.failures import failed_run
from xnat_flows.models import UploadRequest, XnatConnection, ui_title
from xnat_flows.tasks.anon import check_before_sending
from xnat_flows.tasks.connection import server_url_for_report
from xnat_flows.tasks.deidentify import deidentify_sessions, prepare_anonymizer
from xnat_flows.tasks.hints import STATUS_SHOWN_BY
from xnat_flows.tasks.policies import ServerCheck
from xnat_flows.tasks.upload import (
    archive_now_task,
    check_destination_task,
    check_server,
    choose_format,
    destination_slots,
    forget_delivered,
    look_for_parked_task,
    partition_batches,
    scan_dicom_directory,
    upload_batch_task,
    upload_instances_task,
    verify_uploaded_session,
)
from xnat_flows.transfer.archive_stream import ArchiveFormat
from xnat_flows.transfer.deidentify import as_sent, streamed_refusals, xnat_variables
from xnat_flows.transfer.scan import DicomFile, SkippedFile
from xnat_flows.transfer.sequence import sequence_upload
from xnat_flows.transfer.session import plan_sessions
from xnat_flows.transfer.target import UploadTarget
from xnat_flows.transfer.upload_result import BatchResult, GradualResult, SessionResult, UploadResult
from xnat_flows.transfer.verify import VerifyResult


class UploadIncompleteError(XnatError):
    """Some files did not land; the message lists them and a re-run sends only those."""


class NotDeidentifiedError(UploadIncompleteError):
    """Files the de-identification could not be applied to were not sent.

    A re-run with the same script fails on them again (the rest landed).
    """


class UploadParkedError(ConflictError):
    """XNAT parked (part of) the upload in CONFLICT: nothing was merged on its own.

    The message says what it conflicts with and what a person can do after looking (the CLI exits
    5). Not an ``UploadIncompleteError``: running the same upload again does not help (the inbox
    files the folder under failed/ with this report instead of retrying it).
    """

    default_hint = "Look at both sessions in XNAT, then archive the parked one under a label of its own or delete it"


@flow(
    name="upload-dicom-session",
    log_prints=False,
    validate_parameters=True,
    flow_run_name="upload {request.project}/{request.subject}/{request.session}",
)
def upload_dicom_session(
    request: Annotated[UploadRequest, ui_title("What to upload, and where")],
    connection: Annotated[XnatConnection, ui_title("XNAT connection")] = XnatConnection(),
) -> UploadResult:
    """Upload a directory of DICOM files to one XNAT session through the REST Import API.

    Args:
        request: What to upload (source directory) and where (project, subject, session), and how.
        connection: The xnat-credentials Block to use (the deployment's default is the one named by XNAT_CREDENTIALS_BLOCK at deploy time).

    Returns:
        Every session's result (where it landed, what was sent or failed, what verifying found),
        the files skipped, and the time taken.
    """
    server_url: str | None = None
    try:
        request.target()  # bad labels fail before anything else, with their own message
        server = check_server(connection, request.direct_archive, request.project)
        server_url = server.url
        return _upload(request, connection, server)
    except Exception as exc:
        if not isinstance(exc, (UploadIncompleteError, UploadParkedError)):  # their events are out, one per session
            # Failed before or while sending (server down, unknown project or Block, no DICOM files):
            # an automation on xnat.upload.failed hears of it as of any other failed upload.
            emit_upload_failed(
                server_url or server_url_for_report(connection),
                request.project,
                request.subject,
                request.session,
                exc,
                source=request.source_dir,
            )
        if isinstance(exc, XnatError):
            return failed_run(exc)  # the cause once, as the run's state; the caller still gets exc raised
        raise


def _upload(request: UploadRequest, connection: XnatConnection, server: ServerCheck) -> UploadResult:
    logger = get_run_logger()
    started = time.perf_counter()
    logger.info(
        "XNAT %s; uploading %s%s",
        server.version or "(version unknown)",
        request.source_dir,
        f" (holding slots of concurrency limit {server.concurrency_limit})" if server.concurrency_limit else "",
    )
    # Scripts compile (and XNAT's are fetched) before anything is read or sent.
    anonymizer = prepare_anonymizer(connection, request.deidentify, request.project)
    scan = scan_dicom_directory(
        request.source_dir, duplicates=request.duplicates, skip_truncated=request.skip_truncated
    )
    if not scan.files:
        raise InputError(
            f"no DICOM files found under {request.source_dir} ({len(scan.skipped)} other files skipped); "
            "point the request's source_dir at the folder that holds the scanner export"
        )
    for skipped in scan.skipped:
        (logger.warning if skipped.unreadable else logger.info)("skipped %s: %s", skipped.path, skipped.reason)
    plans = plan_sessions(scan, request.target(), per_study=request.per_study)
    refused: list[SkippedFile] = []
    if anonymizer is not None and request.deidentify.require_clean:  # the gate: nothing leaves if it fails
        check_before_sending(
            anonymizer, [(xnat_variables(target), files) for target, files in plans], request.deidentify.allow
        )
    if anonymizer is not None:
        plans, refused = deidentify_sessions(plans, anonymizer, streamed=_streams_batches(request))
        for item in refused:
            logger.error("not de-identified, not sent: %s: %s", item.path, item.reason)
    # The library's one sequence of a REST upload, with this flow's tasks as its steps.
    sessions = sequence_upload(
        TaskSteps(request, connection, server, total_files=sum(len(files) for _, files in plans)),
        plans,
        gradual=request.transport == "gradual-dicom",
        verify=request.verify,
        allow_other_study=request.allow_other_study,
        per_study=request.per_study,
    )
    for item in (late := streamed_refusals(plans)):  # refused by the batch tasks of a streamed session
        logger.error("not de-identified, not sent: %s: %s", item.path, item.reason)
    result = UploadResult(
        sessions=sessions,
        skipped=list(scan.skipped),
        not_deidentified=refused + late,
        seconds=round(time.perf_counter() - started, 3),
        upload_seconds=round(sum(s.seconds for s in sessions), 3),
    )
    _publish_batch_table(result)
    _publish_landing(result, server.url)
    # Events carry project, subject, experiment ID and URI so deployments can chain processing;
    # "archived" once per arrival of these files (a re-run that finds them announced stays quiet).
    emit_upload_result(
        result,
        server.url,
        direct_archive=request.direct_archive,
        transport=request.transport,
        source=request.source_dir,
        arrivals={target.session: arrival(as_sent(files)) for target, files in plans},
    )
    if result.still_archiving:
        raise UploadIncompleteError(_incomplete_message(result), reason="archive-wait-timeout")
    if not result.ok:
        parked = result.in_conflict
        raise (
            UploadParkedError if parked else NotDeidentifiedError if result.not_deidentified else UploadIncompleteError
        )(_incomplete_message(result))
    logger.info(
        "uploaded %d files (%d sent by this run, %.1f MB) in %.1f s (%.1f MB/s); whole run %.1f s",
        result.files_delivered,
        result.files_sent,
        result.bytes_sent / 1e6,
        result.upload_seconds,
        result.throughput_mb_s,
        result.seconds,
    )
    return result


def _streams_batches(request: UploadRequest) -> bool:
    """DICOM-zip batches may rewrite a de-identified session as they are sent.

    Only when this flow run's tasks run in its own threads (the default ``ThreadPoolTaskRunner``):
    they share the session's ``StreamedDeidentification``. A process-based runner (Dask) gets
    each session rewritten whole first.

    Returns:
        True for a DICOM-zip upload whose tasks run in this process's threads.
    """
    from prefect.context import FlowRunContext
    from prefect.task_runners import ThreadPoolTaskRunner

    context = FlowRunContext.get()
    threads = context is not None and isinstance(context.task_runner, ThreadPoolTaskRunner)
    return request.transport == "dicom-zip" and threads


class TaskSteps:
    """The steps of the REST upload's one sequence (``transfer.sequence.sequence_upload``) as tasks.

    Each is a task of this module's (``tasks.upload``): the UI shows every task run with its
    retries, the server's upload concurrency limit, and the per-label slot held from check to
    verification.

    Args:
        request: The flow run's request.
        connection: The flow run's XNAT connection (each task builds its own client from it).
        server: What ``check-server`` found (URL, version, the upload concurrency limit).
        total_files: Files of all planned sessions, for the progress artifact.
    """

    def __init__(
        self, request: UploadRequest, connection: XnatConnection, server: ServerCheck, *, total_files: int
    ) -> None:
        self.request = request
        self.connection = connection
        self.server = server
        self.total_files = total_files or 1
        self.done_files = 0
        self._progress_id: UUID | None = None
        self._archive_format: ArchiveFormat | None = None

    def claim(self, targets: Sequence[UploadTarget]) -> AbstractContextManager[None]:
        """One flow run at a time per destination label (``destination_slots``), from its check to its verification."""
        return destination_slots(self.server.url, list(targets), self.request.verify_timeout_seconds + 900)

    def check_destination(
        self, target: UploadTarget, study_uid: str, allow_other_study: bool, per_study: bool
    ) -> tuple[UploadTarget, frozenset[str]]:
        """The ``check-destination`` task."""
        return check_destination_task(self.connection, target, study_uid, allow_other_study, per_study)

    def send_batches(self, target: UploadTarget, files: list[DicomFile]) -> list[BatchResult]:
        """An ``upload-batch`` task per batch, submitted together (each retried on its own)."""
        archive_format = self._format()
        batches = partition_batches(files, self.request.workers)
        futures = {
            upload_batch_task.submit(
                self.connection, batch, target, archive_format, index, self.server.concurrency_limit
            ): (index, batch)
            for index, batch in enumerate(batches)
        }
        results = []
        for future in as_completed(list(futures)):
            index, batch = futures[future]
            results.append(_batch_result(future, index, batch))
            self._advance(len(batch))
        return results

    def send_instances(self, target: UploadTarget, files: list[DicomFile]) -> GradualResult:
        """The ``upload-instances`` task."""
        self._advance(0)
        result = upload_instances_task(
            self.connection, files, target, self.request.workers, self.server.concurrency_limit
        )
        self._advance(len(files))
        return result

    def archive_now(self, target: UploadTarget, study_uid: str, uris: list[str], requests_in_doubt: int) -> list[str]:
        """The ``archive-now`` task."""
        return archive_now_task(self.connection, target, study_uid, uris, requests_in_doubt)

    def verify(self, target: UploadTarget, files: list[DicomFile], prearchive_before: frozenset[str]) -> VerifyResult:
        """The ``verify-session`` task."""
        return verify_uploaded_session(
            self.connection, target, files, self.request.verify_timeout_seconds, prearchive_before
        )

    def forget_delivered(self, target: UploadTarget) -> None:
        """The ``forget-delivered`` task."""
        forget_delivered(target, self.server.url)

    def look_for_parked(
        self, target: UploadTarget, study_uid: str, prearchive_before: frozenset[str]
    ) -> list[ParkedSession]:
        """The ``look-for-parked`` task."""
        return look_for_parked_task(self.connection, target, study_uid, prearchive_before)

    def _format(self) -> ArchiveFormat:
        if self._archive_format is None:
            if self.request.archive_format == "auto":
                self._archive_format, why = choose_format(self.connection)
                get_run_logger().info("archive format %s (%s)", self._archive_format, why)
            else:
                self._archive_format = self.request.archive_format
        return self._archive_format

    def _advance(self, files: int) -> None:
        if self._progress_id is None:
            # A sync flow gets the UUID itself; async_dispatch types the call as "UUID or its coroutine".
            self._progress_id = cast(
                UUID, create_progress_artifact(progress=0.0, key=None, description="Files uploaded (%)")
            )
        if files:
            self.done_files += files
            update_progress_artifact(self._progress_id, 100.0 * self.done_files / self.total_files)


def landing(outcome: SessionResult, server_url: str) -> dict[str, str | None]:
    """Where a session landed, for the run's report and events.

    Experiment ID, archive or prearchive URI, the session's XNAT web page, and for a prearchive
    landing the timestamp folder (what archiving it needs).

    Args:
        outcome: One session's result.
        server_url: The XNAT's URL, for the absolute URIs.

    Returns:
        ``experiment_id``, ``uri``, ``web_url``, ``prearchive_timestamp`` and ``where`` (archive,
        prearchive or unknown).
    """
    base = public_base_url(server_url)
    uri = absolute_uri(server_url, outcome.session_uri)
    match = _PREARCHIVE_URI.search(outcome.session_uri or "")
    return {
        "experiment_id": outcome.experiment_id,
        "uri": uri,
        # XNAT answers a session's REST URI with format=html with its report page.
        "web_url": f"{base}/data/experiments/{outcome.experiment_id}?format=html" if outcome.experiment_id else None,
        "prearchive_timestamp": match["timestamp"] if match else None,
        "where": "archive" if outcome.experiment_id else ("prearchive" if match else "unknown"),
    }


_PREARCHIVE_URI = re.compile(r"/prearchive/projects/[^/]+/(?P<timestamp>[^/]+)/")


def _publish_landing(result: UploadResult, server_url: str) -> None:
    logger = get_run_logger()
    landings = [(s, landing(s, server_url)) for s in result.sessions]
    # Narrow enough for the artifact page: the URI shown by its path (linked in full), and the
    # prearchive timestamp column only when a session landed there.
    staged = any(where["prearchive_timestamp"] for _, where in landings)
    lines = [
        "| session | landed in | experiment (web page) | REST URI |" + (" prearchive timestamp |" if staged else ""),
        "|---|---|---|---|" + ("---|" if staged else ""),
    ]
    for s, where in landings:
        page = f"[{where['experiment_id']}]({where['web_url']})" if where["web_url"] else ""
        uri = f"[{s.session_uri}]({where['uri']})" if where["uri"] and s.session_uri else (where["uri"] or "")
        lines.append(
            f"| {s.project}/{s.subject}/{s.session} | {where['where']}{'' if s.ok else ' (not verified)'} "
            f"| {page} | {uri} |" + (f" {where['prearchive_timestamp'] or ''} |" if staged else "")
        )
    for s, where in landings:
        # Each URL stands between spaces: the UI and terminals make links of URLs, and a comma
        # or bracket glued to one becomes part of the link.
        facts = [f"experiment {where['experiment_id'] or '-'}", f"URI {where['uri'] or '(none)'}"]
        if where["web_url"]:
            facts.append(f"web page {where['web_url']}")
        if where["prearchive_timestamp"]:
            facts.append(f"prearchive timestamp {where['prearchive_timestamp']}")
        # "Landed" only for what is all there: a session found but short of this upload (or still being
        # archived) is named where it is, without the claim.
        verdict = "landed in the" if s.ok else "is not verified in the"
        logger.info("%s/%s/%s %s %s: %s", s.project, s.subject, s.session, verdict, where["where"], " | ".join(facts))
    create_markdown_artifact(
        markdown="\n".join(lines), key="xnat-upload-landing", description="Where the uploaded data landed in XNAT"
    )


def _batch_result(future, index: int, batch: list[DicomFile]) -> BatchResult:
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - the batch failed for good; report, do not hide it
        return BatchResult(
            index=index,
            files=tuple(f.relpath for f in batch),
            bytes=sum(f.size for f in batch),
            seconds=0.0,
            ok=False,
            error=str(exc),
        )


def _publish_batch_table(result: UploadResult) -> None:
    rows = [
        {
            "session": f"{s.project}/{s.subject}/{s.session}",
            "batch": b.index,
            "files": len(b.files),
            "MB": round(b.bytes / 1e6, 2),
            "seconds": round(b.seconds, 2),
            "outcome": _batch_outcome(b),
        }
        for s in result.sessions
        for b in s.batches
    ] or [
        {
            "session": f"{s.project}/{s.subject}/{s.session}",
            "files delivered": s.files_delivered,
            "files sent by this run": s.files_sent,
            "failed": len(s.failed_files),
            "verified": s.verified,
        }
        for s in result.sessions
    ]
    create_table_artifact(table=rows, description="Per-batch outcome of the DICOM upload")


def _batch_outcome(batch: BatchResult) -> str:
    if not batch.ok:
        return f"failed: {batch.error}"
    return "delivered by an earlier run: not sent again" if batch.resumed else "sent"


def _incomplete_message(result: UploadResult) -> str:
    if result.still_archiving:
        header = (
            "not verified yet: XNAT was still archiving what was sent when verification's wait ran out; run the "
            "same upload again later to check (nothing already delivered is sent again):"
        )
    elif any(s.parked_descriptions() for s in result.sessions):
        header = (
            "XNAT parked this upload in the prearchive and nothing was merged on its own; look, then act as said below:"
        )
    else:
        header = "upload incomplete; re-run the same upload to send what did not land:"
    lines = [header]
    if result.not_deidentified:
        lines.append(
            f"  {len(result.not_deidentified)} files could not be de-identified and were not sent, e.g. "
            + "; ".join(f"{s.path}: {s.reason}" for s in result.not_deidentified[:3])
        )
    if result.unreadable:
        lines.append(
            f"  {len(result.unreadable)} files or folders could not be read (make them readable), e.g. "
            + "; ".join(f"{u.path}: {u.reason}" for u in result.unreadable[:3])
        )
    for s in result.sessions:
        if s.failed_files:
            lines.append(
                f"  {s.project}/{s.subject}/{s.session}: {len(s.failed_files)} files not sent, e.g. {s.failed_files[:3]}"
            )
        parked = s.parked_descriptions(for_flow_run=True)
        for what in parked:
            lines.append(f"  {s.project}/{s.subject}/{s.session}: XNAT did not archive this upload: {what}")
        if s.still_archiving and s.verify is not None:
            lines.append(f"  {s.project}/{s.subject}/{s.session}: {s.verify.summary(STATUS_SHOWN_BY)}")
        elif s.verified is False and not parked:
            lines.append(f"  {s.project}/{s.subject}/{s.session}: verification found missing {s.missing[:5]}")
    return "\n".join(lines)
