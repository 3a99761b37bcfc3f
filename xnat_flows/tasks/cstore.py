"""Prefect tasks of the C-STORE upload: check the receiver, send instances."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run

from xnat_flows.client.archive import archived_studies
from xnat_flows.client.errors import InputError, TransientError, XnatError
from xnat_flows.models import ArchivedStudy, DicomReceiverTarget, XnatConnection
from xnat_flows.tasks.connection import open_client
from xnat_flows.tasks.hints import ARCHIVE_CONFLICT_WITH, CHECK_DELIVERED_WITH, speaks_to_operator
from xnat_flows.tasks.policies import ReceiverLimit, association_slots, existing_receiver_limit, retry_unless_permanent
from xnat_flows.transfer.cstore.connect import EchoResult, echo
from xnat_flows.transfer.cstore.inputs import RoutingOverride
from xnat_flows.transfer.cstore.resume import ResumedSend, in_doubt_warning, store_instances_resumable
from xnat_flows.transfer.journal import UploadJournal
from xnat_flows.transfer.scan import DicomFile
from xnat_flows.transfer.session import study_present


class ReceiverAddress(NamedTuple):
    host: str
    port: int
    called_aet: str
    calling_aet: str


def receiver_address(target: DicomReceiverTarget) -> ReceiverAddress:
    """The receiver's fields: those not given from the Block, then the defaults XNAT ships with."""

    def given(name: str) -> Any:
        value = getattr(target, name)
        return value or (getattr(target.block, name) if target.block is not None else None)

    host = given("host")
    if not host:
        raise InputError(
            "No DICOM receiver host given",
            hint="Pick an xnat-dicom-receiver Block in the receiver parameter, or fill its host",
        )
    return ReceiverAddress(
        host=host,
        port=given("port") or 8104,
        called_aet=given("called_aet") or "XNAT",
        calling_aet=given("calling_aet") or "XNATFLOWS",
    )


def resolve_receiver(target: DicomReceiverTarget) -> DicomReceiverTarget:
    """The target with every field filled (see ``receiver_address``) and the Block dropped."""
    return DicomReceiverTarget(**receiver_address(target)._asdict())


@task(
    name="echo-receiver",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_permanent,
)
@speaks_to_operator
def echo_receiver(receiver: DicomReceiverTarget) -> EchoResult:
    """C-ECHO pre-flight: wrong host/port, wrong AE title and firewalls fail here, with advice."""
    return echo(*receiver_address(receiver))


SEND_RETRIES = 2


class ReceiverInterrupted(TransientError):
    """Some instances were not stored for a reason that may heal (receiver down, busy, dropped
    associations); Prefect retries the task, which sends only what is still missing."""


@task(name="check-receiver", cache_policy=NO_CACHE)
@speaks_to_operator
def check_receiver_limit(receiver: DicomReceiverTarget) -> ReceiverLimit | None:
    """The receiver's global concurrency limit ``xnat-cstore:HOST:PORT``, if the site created one."""
    address = receiver_address(receiver)
    return existing_receiver_limit(address.host, address.port)


@task(
    name="send-instances",
    cache_policy=NO_CACHE,
    retries=SEND_RETRIES,
    retry_delay_seconds=10,
    retry_condition_fn=retry_unless_permanent,
)
@speaks_to_operator
def send_instances(
    receiver: DicomReceiverTarget,
    files: list[DicomFile],
    workers: int,
    routing: RoutingOverride | None,
    limit: ReceiverLimit | None = None,
    connection: XnatConnection | None = None,
) -> ResumedSend:
    """C-STORE over ``workers`` long-lived associations; returns this attempt's result, how many
    instances an earlier run or attempt had already delivered (recorded in the upload journal, not
    sent again) and which instances are in doubt (sent again after an attempt without an answer).

    Each association holds a slot of the receiver's limit. When instances fail for a reason that
    may heal, the task raises so Prefect retries it; the last attempt returns what it has.
    ``connection``: the XNAT behind the receiver, asked whether it still holds what the journal
    says an earlier run delivered; without it (or when it cannot be asked) those are sent again.
    """
    address = receiver_address(receiver)
    with contextlib.ExitStack() as stack, association_slots(limit, workers) as associations:
        held = _study_check(connection, routing, stack)
        if limit is not None and associations < workers:
            get_run_logger().info(
                "the receiver's limit %s has %d slots: sending over %d associations",
                limit.name,
                limit.slots,
                associations,
            )
        send = store_instances_resumable(
            files,
            UploadJournal(),
            host=address.host,
            port=address.port,
            called_aet=address.called_aet,
            calling_aet=address.calling_aet,
            workers=associations,
            routing=routing,
            held=held,
            preflight=False,
        )
    result, resumed = send.result, send.resumed
    if send.in_doubt:  # said here too: a retry of this task would not know of them
        # the run's log; called as a plain function (.fn) there is no run: the module's logger
        logger = get_run_logger() if task_run.id else logging.getLogger(__name__)
        logger.warning(in_doubt_warning(send, ARCHIVE_CONFLICT_WITH, CHECK_DELIVERED_WITH))
    retryable = result.retryable_failures
    if retryable and 1 <= task_run.run_count <= SEND_RETRIES:  # 0: called as a plain function (.fn)
        raise ReceiverInterrupted(
            f"{len(retryable)} of {len(files) - resumed} instances not stored yet ({retryable[0].reason or retryable[0].meaning}); "
            "retrying the rest",
            hint="A receiver that stays down fails the run after the retries",
        )
    return send


def _study_check(
    connection: XnatConnection | None, routing: RoutingOverride | None, stack: contextlib.ExitStack
) -> Callable[[str], bool] | None:
    """``study_present`` on the XNAT of ``connection`` for the C-STORE journal, or None when it
    cannot be asked (no credentials on the worker, XNAT's REST API unreachable)."""
    if connection is None:
        return None
    try:
        client = stack.enter_context(open_client(connection))
        client.whoami()
    except (XnatError, ValueError) as exc:
        logger = get_run_logger() if task_run.id else logging.getLogger(__name__)
        logger.warning("cannot ask XNAT what earlier runs delivered (%s): they are sent again", exc)
        return None
    project, label = (routing.project, routing.session) if routing else (None, None)
    return lambda study_uid: study_present(client, study_uid, project=project, label=label)


@task(name="wait-for-archived-studies", cache_policy=NO_CACHE, persist_result=False)
@speaks_to_operator
def wait_for_archived_studies(
    connection: XnatConnection,
    instances: dict[str, int],
    project: str | None,
    timeout_seconds: float,
    poll_seconds: float = 2.0,
) -> list[ArchivedStudy]:
    """Wait (bounded) until every sent study is an archived session holding at least as many files
    as instances were sent, found by StudyInstanceUID (a C-STORE names no session: XNAT's routing
    rules decide the project and labels). ``project``: look only there (the routing project)."""
    logger = get_run_logger()
    deadline = time.monotonic() + timeout_seconds
    with open_client(connection) as client:
        while True:
            found = _archived_studies(client, project, instances)
            complete = [s for s in found.values() if s.files_found >= s.instances_sent]
            if len(complete) == len(instances):
                return sorted(complete, key=lambda s: s.label)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = {uid: n for uid, n in instances.items() if uid not in {s.study_uid for s in complete}}
                shown = "; ".join(
                    f"{uid}: {found[uid].files_found}/{n} files in {found[uid].experiment_id}"
                    if uid in found
                    else f"{uid}: no archived session"
                    for uid, n in list(missing.items())[:5]
                )
                raise ArchiveWaitTimeout(
                    f"{len(missing)} of {len(instances)} sent studies not complete in the archive after "
                    f"{timeout_seconds:g} s ({shown})",
                    hint="Look in the prearchive for the session (CONFLICT or ERROR), or raise verify_timeout_seconds",
                )
            logger.info("%d of %d studies archived; waiting (%.0f s left)", len(complete), len(instances), remaining)
            time.sleep(min(poll_seconds, remaining))


class ArchiveWaitTimeout(XnatError):
    """The sent studies did not all reach the archive in time."""


def _archived_studies(client, project: str | None, instances: dict[str, int]) -> dict[str, ArchivedStudy]:
    found: dict[str, ArchivedStudy] = {}
    for uid, row in archived_studies(client, project).items():
        if uid not in instances:
            continue
        experiment_id = row.get("ID") or ""
        files = sum(
            int(resource.get("file_count") or 0)
            for scan in client.get_rows(f"/data/experiments/{experiment_id}/scans")
            for resource in client.get_rows(f"/data/experiments/{experiment_id}/scans/{scan.get('ID')}/resources")
        )
        found[uid] = ArchivedStudy(
            study_uid=uid,
            project=row.get("project") or "",
            subject=row.get("subject_label") or None,
            label=row.get("label") or experiment_id,
            experiment_id=experiment_id,
            uri=f"/data/experiments/{experiment_id}",
            instances_sent=instances[uid],
            files_found=files,
        )
    return found
