"""Flow ``send-dicom``: C-STORE a directory to an XNAT DICOM receiver."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from xnat_flows.client.errors import InputError, XnatError
from xnat_flows.models import (
    DicomReceiverTarget,
    InstanceFailure,
    SendDicomRequest,
    SendDicomResult,
    SkippedInput,
)
from xnat_flows.tasks.cstore import check_receiver_limit, echo_receiver, resolve_receiver, send_instances
from xnat_flows.tasks.upload import scan_dicom_directory
from xnat_flows.transfer.dicom_inputs import RoutingOverride


class SendIncompleteError(XnatError):
    """Some instances were not stored; the message lists them and a re-run sends only those."""


@flow(name="send-dicom", validate_parameters=True)
def send_dicom(request: SendDicomRequest, receiver: DicomReceiverTarget) -> SendDicomResult:
    """Send every DICOM instance under a directory to a DICOM receiver over parallel associations."""
    logger = get_run_logger()
    receiver = resolve_receiver(receiver)
    echo_receiver(receiver)
    scan = scan_dicom_directory(request.source_dir, headers="file-meta")
    if not scan.files:
        raise InputError(f"no DICOM files found under {request.source_dir} ({len(scan.skipped)} other files skipped)")
    routing = (
        RoutingOverride(request.routing_project, request.routing_subject, request.routing_session)
        if request.routing_project else None
    )
    limit = check_receiver_limit(receiver)
    if limit is not None:
        logger.info("each association holds a slot of the concurrency limit %s (%d slots)", limit.name, limit.slots)
    sent, resumed = send_instances(receiver, scan.files, request.workers, routing, limit)
    result = SendDicomResult(
        sent=len(sent.sent),
        resumed=resumed,
        failed=[InstanceFailure(path=str(o.path), status=o.status_hex, meaning=o.reason or o.meaning) for o in sent.failed + sent.skipped],
        skipped=[SkippedInput(path=str(s.path), reason=s.reason) for s in scan.skipped],
        unreadable=[SkippedInput(path=str(s.path), reason=s.reason) for s in scan.unreadable],
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
        examples = "; ".join([f"{f.path}: {f.status} {f.meaning}" for f in result.failed[:5]]
                             + [f"{u.path}: {u.reason}" for u in result.unreadable[:5]])
        raise SendIncompleteError(
            f"{len(result.failed)} of {len(scan.files)} instances were not stored and {len(result.unreadable)} files or "
            f"folders could not be read ({examples}); re-run the same flow to send only those"
        )
    return result
