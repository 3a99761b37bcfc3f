"""Flow ``send-dicom``: C-STORE a directory to an XNAT DICOM receiver."""

from __future__ import annotations

from collections import Counter
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from xnat_flows.client.errors import InputError, XnatError
from xnat_flows.events import (
    SessionRef,
    absolute_uri,
    announce_archived,
    arrival,
    emit_upload_failed,
    public_base_url,
)
from xnat_flows.flows.failures import failed_run
from xnat_flows.models import (
    DicomReceiverTarget,
    InstanceFailure,
    SendDicomRequest,
    SendDicomResult,
    XnatConnection,
    ui_title,
)
from xnat_flows.tasks.connection import credentials_for, server_url_for_report
from xnat_flows.tasks.cstore import (
    check_receiver_limit,
    echo_receiver,
    resolve_receiver,
    send_instances,
    wait_for_archived_studies,
)
from xnat_flows.tasks.deidentify import deidentify_instances, prepare_anonymizer
from xnat_flows.tasks.hints import ARCHIVE_CONFLICT_WITH, CHECK_DELIVERED_WITH
from xnat_flows.tasks.upload import scan_dicom_directory
from xnat_flows.transfer.cstore.inputs import RoutingOverride
from xnat_flows.transfer.cstore.resume import in_doubt_warning


class SendIncompleteError(XnatError):
    """Some instances were not stored; the message lists them and a re-run sends only those."""


class SendInDoubtError(XnatError):
    """Every instance was stored, but some were sent again after an attempt without an answer, and
    the run did not verify the archive (where XNAT may hold the second copy in CONFLICT)."""


def _run_name() -> str:
    receiver = flow_run.parameters.get("receiver") or {}
    if not isinstance(receiver, dict):
        receiver = receiver.model_dump()
    block = receiver.get("block")
    host = receiver.get("host") or (getattr(block, "host", None) if block is not None else None) or "receiver"
    port = receiver.get("port") or (getattr(block, "port", None) if block is not None else None) or 8104
    return f"send-dicom {host}:{port}"


@flow(name="send-dicom", validate_parameters=True, flow_run_name=_run_name)
def send_dicom(
    request: Annotated[SendDicomRequest, ui_title("What to send")],
    receiver: Annotated[DicomReceiverTarget, ui_title("DICOM receiver")],
    connection: Annotated[XnatConnection, ui_title("XNAT connection")] = XnatConnection(),
) -> SendDicomResult:
    """Send every DICOM instance under a directory to a DICOM receiver over parallel associations;
    with ``request.verify``, wait until XNAT has archived what was sent and announce each session.

    Args:
        request: What to send (source directory), routing, parallelism, and whether to wait for the archive.
        receiver: The DICOM receiver: an xnat-dicom-receiver Block, or host, port and AE titles.
        connection: With verify: the xnat-credentials Block of the XNAT behind the receiver (the deployment's
            default is the one named by XNAT_CREDENTIALS_BLOCK at deploy time).
    """
    try:
        return _send(request, receiver, connection)
    except Exception as exc:
        # Every failure, before the first instance too (receiver down, no files), is announced.
        project = request.routing_project or "unknown"
        emit_upload_failed(
            server_url_for_report(connection),
            project,
            request.routing_subject or None,
            request.routing_session or None,
            exc,
            source=request.source_dir,
        )
        if isinstance(exc, XnatError):
            return failed_run(exc)  # the cause once, as the run's state; the caller still gets exc raised
        raise


def _send(request: SendDicomRequest, receiver: DicomReceiverTarget, connection: XnatConnection) -> SendDicomResult:
    logger = get_run_logger()
    receiver = resolve_receiver(receiver)
    server_url = credentials_for(connection).url if request.verify else None  # no Block/credentials: fail now
    echo_receiver(receiver)
    # Scripts compile (and XNAT's are fetched) before anything is read or sent.
    anonymizer = prepare_anonymizer(connection, request.deidentify, request.routing_project or None)
    # Verifying needs each file's StudyInstanceUID (in the dataset, not the file meta).
    scan = scan_dicom_directory(
        request.source_dir, headers="full" if request.verify else "file-meta", skip_truncated=request.skip_truncated
    )
    if not scan.files:
        raise InputError(
            f"no DICOM files found under {request.source_dir} ({len(scan.skipped)} other files skipped); "
            "point the request's source_dir at the folder that holds the DICOM export"
        )
    routing = (
        RoutingOverride(request.routing_project, request.routing_subject or None, request.routing_session or None)
        if request.routing_project
        else None
    )
    limit = check_receiver_limit(receiver)
    if limit is not None:
        logger.info("each association holds a slot of the concurrency limit %s (%d slots)", limit.name, limit.slots)
    files, refused = deidentify_instances(scan.files, anonymizer, routing) if anonymizer else (scan.files, [])
    send = send_instances(receiver, files, request.workers, routing, limit, connection)
    sent, resumed = send.result, send.resumed
    sent.failed += refused
    result = SendDicomResult(
        in_doubt=[str(path) for path in send.in_doubt],
        sent=len(sent.sent),
        resumed=resumed,
        failed=[
            InstanceFailure(path=str(o.path), status=o.status_hex, meaning=o.reason or o.meaning)
            for o in sent.failed + sent.skipped
        ],
        skipped=list(scan.skipped),
        bytes_sent=sent.bytes_sent,
        seconds=round(sent.seconds, 3),
        instances_per_second=round(sent.instances_per_second, 1),
        associations=[vars(a) for a in sent.associations],
    )
    create_table_artifact(
        table=[vars(a) for a in sent.associations] or [{"sent": 0}],
        description=f"C-STORE to {receiver.called_aet}@{receiver.host}:{receiver.port}: per-association summary",
    )
    logger.info("%s (%d delivered by an earlier run)", sent.summary(), resumed)
    if not result.ok:
        examples = "; ".join(
            [f"{f.path}: {f.status} {f.meaning}" for f in result.failed[:5]]
            + [f"{u.path}: {u.reason}" for u in result.unreadable[:5]]
        )
        raise SendIncompleteError(
            f"{len(result.failed)} of {len(scan.files)} instances were not stored and {len(result.unreadable)} files or "
            f"folders could not be read ({examples}); re-run the same flow to send only those"
        )
    if send.in_doubt and not request.verify:
        # Stored, but maybe twice: without looking at the archive this run cannot call it delivered.
        raise SendInDoubtError(
            in_doubt_warning(send, ARCHIVE_CONFLICT_WITH, CHECK_DELIVERED_WITH),
            hint="Run send-dicom with verify on: it checks that the archive holds every instance sent",
        )
    if request.verify and server_url is not None:
        instances = Counter(f.study_uid for f in files)  # as sent: de-identified UIDs
        result.archived = wait_for_archived_studies(
            connection, dict(instances), request.routing_project or None, request.verify_timeout_seconds
        )
        lines = ["| study | session | experiment | files | URI |", "|---|---|---|---|---|"]
        for study in result.archived:
            web = f"{public_base_url(server_url)}/data/experiments/{study.experiment_id}?format=html"
            logger.info(
                "study %s archived as %s/%s/%s (%s, %d files): %s",
                study.study_uid,
                study.project,
                study.subject,
                study.label,
                study.experiment_id,
                study.files_found,
                web,
            )
            lines.append(
                f"| {study.study_uid} | {study.project}/{study.subject}/{study.label} | "
                f"[{study.experiment_id}]({web}) | {study.files_found} | {absolute_uri(server_url, study.uri)} |"
            )
            ref = SessionRef(server_url, study.project, study.subject, study.label, study.experiment_id, study.uri)
            # Once per arrival: a re-run whose journal says everything was delivered (0 sent) finds
            # the study archived again, and must not start its processing a second time.
            announce_archived(
                ref,
                arrival(f for f in scan.files if f.study_uid == study.study_uid),
                {"via": "c-store", "study_uid": study.study_uid, "files": study.files_found},
            )
        create_markdown_artifact(
            markdown="\n".join(lines),
            key="xnat-cstore-landing",
            description="Where the C-STORE'd studies landed in XNAT",
        )
    return result
