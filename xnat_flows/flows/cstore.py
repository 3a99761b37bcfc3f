"""Flow ``send-dicom``: C-STORE a directory to an XNAT DICOM receiver."""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from xnat_flows.client.errors import XnatError
from xnat_flows.events import (
    SessionRef,
    absolute_uri,
    announce_archived,
    arrival,
    emit_upload_failed,
    public_base_url,
)
from xnat_flows.flows.failures import failed_run
from xnat_flows.models import DicomReceiverTarget, SendDicomRequest, XnatConnection, ui_title
from xnat_flows.tasks.anon import check_before_sending
from xnat_flows.tasks.connection import credentials_for, server_url_for_report
from xnat_flows.tasks.cstore import (
    check_destination,
    check_receiver_limit,
    echo_receiver,
    resolve_receiver,
    send_instances,
    wait_for_archived_studies_task,
)
from xnat_flows.tasks.deidentify import deidentify_instances, prepare_anonymizer
from xnat_flows.tasks.hints import ARCHIVE_CONFLICT_WITH, CHECK_DELIVERED_WITH
from xnat_flows.tasks.upload import scan_dicom_directory
from xnat_flows.transfer.cstore.inputs import RoutingOverride
from xnat_flows.transfer.cstore.results import ArchivedStudy, InstanceOutcome, SendResult
from xnat_flows.transfer.cstore.resume import in_doubt_warning
from xnat_flows.transfer.cstore.send import routing_variables
from xnat_flows.transfer.cstore.sequence import send_cstore
from xnat_flows.transfer.deidentify import Anonymizer
from xnat_flows.transfer.scan import DicomFile, ScanHeaders, ScanResult


class SendIncompleteError(XnatError):
    """Some instances were not stored; the message lists them and a re-run sends only those."""


class SendInDoubtError(XnatError):
    """Every instance was stored, but some were sent again after an attempt without an answer.

    The run did not verify the archive, where XNAT may hold the second copy in CONFLICT.
    """


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
) -> SendResult:
    """Send every DICOM instance under a directory to a DICOM receiver over parallel associations.

    With ``request.verify``, wait until XNAT has archived what was sent and announce each session.
    The sequence is the library's (``transfer.cstore.sequence.send_cstore``), its steps this flow's
    tasks.

    Args:
        request: What to send (source directory, which of two files holding one instance), routing,
            parallelism, de-identification, and whether to wait for the archive.
        receiver: The DICOM receiver: an xnat-dicom-receiver Block, or host, port and AE titles.
        connection: The xnat-credentials Block of the XNAT behind the receiver (the deployment's
            default is the one named by XNAT_CREDENTIALS_BLOCK at deploy time): it is asked that the
            routing project exists and what earlier runs delivered, and, with verify, for the archive.

    Returns:
        The C-STORE's result (``transfer.cstore.results.SendResult``); a send that did not store
        everything, or left instances in doubt without verify, fails the run instead.
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


class _TaskSteps:
    """The C-STORE sequence's steps (``transfer.cstore.sequence``) as this flow's Prefect tasks.

    The run shows each task with its retries, and the associations hold the receiver's limit.
    """

    def __init__(
        self,
        request: SendDicomRequest,
        receiver: DicomReceiverTarget,
        connection: XnatConnection,
        server_url: str | None,
    ) -> None:
        self.request = request
        self.receiver = receiver
        self.connection = connection
        self.server_url = server_url
        self.routing = (
            RoutingOverride(request.routing_project, request.routing_subject or None, request.routing_session or None)
            if request.routing_project
            else None
        )
        self.anonymizer: Anonymizer | None = None
        self.scanned: list[DicomFile] = []

    def check_destination(self) -> None:
        check_destination(self.connection, self.routing)

    def check_receiver(self) -> None:
        echo_receiver(self.receiver)

    def scan(self, headers: ScanHeaders) -> ScanResult:
        scan = scan_dicom_directory(
            self.request.source_dir,
            headers=headers,
            duplicates=self.request.duplicates,
            skip_truncated=self.request.skip_truncated,
        )
        self.scanned = list(scan.files)
        return scan

    def deidentify(self, files: list[DicomFile]) -> tuple[list[DicomFile], list[InstanceOutcome]]:
        if self.anonymizer is None:
            return files, []
        if self.request.deidentify.require_clean:  # the gate: nothing leaves if it fails
            check_before_sending(
                self.anonymizer, [(routing_variables(self.routing), files)], self.request.deidentify.allow
            )
        return deidentify_instances(files, self.anonymizer, self.routing)

    def send(self, files: list[DicomFile]) -> SendResult:
        limit = check_receiver_limit(self.receiver)
        if limit is not None:
            get_run_logger().info(
                "each association holds a slot of the concurrency limit %s (%d slots)", limit.name, limit.slots
            )
        result = send_instances(self.receiver, files, self.request.workers, self.routing, limit, self.connection)
        create_table_artifact(
            table=[vars(a) for a in result.associations] or [{"sent": 0}],
            description=f"C-STORE to {self.receiver.called_aet}@{self.receiver.host}:{self.receiver.port}: "
            "per-association summary",
        )
        get_run_logger().info("%s (%d delivered by an earlier run)", result.summary(), result.resumed)
        return result

    def wait_for_archive(self, instances: dict[str, int]) -> list[ArchivedStudy]:
        return wait_for_archived_studies_task(
            self.connection, instances, self.request.routing_project or None, self.request.verify_timeout_seconds
        )

    def landed(self, study: ArchivedStudy, files: list[DicomFile]) -> None:
        assert self.server_url is not None  # verify asked for the connection's URL first
        web = f"{public_base_url(self.server_url)}/data/experiments/{study.experiment_id}?format=html"
        get_run_logger().info(
            "study %s archived as %s/%s/%s (%s, %d files): %s",
            study.study_uid,
            study.project,
            study.subject,
            study.label,
            study.experiment_id,
            study.files_found,
            web,
        )
        ref = SessionRef(self.server_url, study.project, study.subject, study.label, study.experiment_id, study.uri)
        # Once per arrival: a re-run whose journal says everything was delivered (0 sent) finds
        # the study archived again, and must not start its processing a second time.
        announce_archived(
            ref,
            arrival(f for f in self.scanned if f.study_uid == study.study_uid),
            {"via": "c-store", "study_uid": study.study_uid, "files": study.files_found},
        )


def _send(request: SendDicomRequest, receiver: DicomReceiverTarget, connection: XnatConnection) -> SendResult:
    receiver = resolve_receiver(receiver)
    server_url = credentials_for(connection).url if request.verify else None  # no Block/credentials: fail now
    steps = _TaskSteps(request, receiver, connection, server_url)
    # Scripts compile (and XNAT's are fetched) before anything is read or sent.
    steps.anonymizer = prepare_anonymizer(connection, request.deidentify, request.routing_project or None)
    result = send_cstore(steps, source=request.source_dir, verify=request.verify)
    if result.failed or result.skipped or result.unreadable:
        examples = "; ".join(
            [f"{o.path}: {o.status_hex} {o.reason or o.meaning}" for o in (result.failed + result.skipped)[:5]]
            + [f"{u.path}: {u.reason}" for u in result.unreadable[:5]]
        )
        not_stored = len(result.failed) + len(result.skipped)
        raise SendIncompleteError(
            f"{not_stored} of {len(steps.scanned)} instances were not stored and {len(result.unreadable)} files or "
            f"folders could not be read ({examples}); re-run the same flow to send only those"
        )
    if not result.ok:
        # Stored, but maybe twice: without looking at the archive this run cannot call it delivered.
        raise SendInDoubtError(
            in_doubt_warning(result, ARCHIVE_CONFLICT_WITH, CHECK_DELIVERED_WITH),
            hint="Run send-dicom with verify on: it checks that the archive holds every instance sent",
        )
    if result.archived and server_url is not None:
        lines = ["| study | session | experiment | files | URI |", "|---|---|---|---|---|"]
        for study in result.archived:
            web = f"{public_base_url(server_url)}/data/experiments/{study.experiment_id}?format=html"
            lines.append(
                f"| {study.study_uid} | {study.project}/{study.subject}/{study.label} | "
                f"[{study.experiment_id}]({web}) | {study.files_found} | {absolute_uri(server_url, study.uri)} |"
            )
        create_markdown_artifact(
            markdown="\n".join(lines),
            key="xnat-cstore-landing",
            description="Where the C-STORE'd studies landed in XNAT",
        )
    return result
