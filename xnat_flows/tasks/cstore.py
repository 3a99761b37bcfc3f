"""Prefect tasks of the C-STORE upload: check the receiver, send instances."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run

from xnat_flows.client.errors import InputError, TransientError, XnatError
from xnat_flows.models import DicomReceiverTarget, XnatConnection
from xnat_flows.tasks.connection import open_client
from xnat_flows.tasks.hints import ARCHIVE_CONFLICT_WITH, CHECK_DELIVERED_WITH, speaks_to_operator
from xnat_flows.tasks.policies import ReceiverLimit, association_slots, existing_receiver_limit, retry_unless_permanent
from xnat_flows.transfer.cstore.archived import wait_for_archived_studies
from xnat_flows.transfer.cstore.connect import EchoResult, echo
from xnat_flows.transfer.cstore.inputs import RoutingOverride
from xnat_flows.transfer.cstore.results import ArchivedStudy, SendResult
from xnat_flows.transfer.cstore.resume import in_doubt_warning, store_instances_resumable
from xnat_flows.transfer.journal import UploadJournal
from xnat_flows.transfer.scan import DicomFile
from xnat_flows.transfer.session import study_present


class ReceiverAddress(NamedTuple):
    """Where to send: the receiver's host, port and AE titles."""

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
    """Some instances were not stored for a reason that may heal (receiver down, busy, dropped associations).

    Prefect retries the task, which sends only what is still missing.
    """


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
) -> SendResult:
    """C-STORE over ``workers`` long-lived associations.

    Each association holds a slot of the receiver's limit. When instances fail for a reason that
    may heal, the task raises so Prefect retries it; the last attempt returns what it has.
    ``connection``: the XNAT behind the receiver, asked whether it still holds what the journal
    says an earlier run delivered; without it (or when it cannot be asked) those are sent again.

    Args:
        receiver: The receiver, every field resolved (``resolve_receiver``).
        files: The instances to send.
        workers: Parallel associations.
        routing: The routing written into PatientComments of the sent copy, or None.
        limit: The receiver's concurrency limit (``check_receiver_limit``), or None.
        connection: The XNAT behind the receiver, or None.

    Returns:
        This attempt's result, how many instances an earlier run or attempt had already delivered
        (recorded in the upload journal, not sent again) and which instances are in doubt (sent
        again after an attempt without an answer).
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
    if send.in_doubt:  # said here too: a retry of this task would not know of them
        # the run's log; called as a plain function (.fn) there is no run: the module's logger
        logger = get_run_logger() if task_run.id else logging.getLogger(__name__)
        logger.warning(in_doubt_warning(send, ARCHIVE_CONFLICT_WITH, CHECK_DELIVERED_WITH))
    retryable = send.retryable_failures
    if retryable and 1 <= task_run.run_count <= SEND_RETRIES:  # 0: called as a plain function (.fn)
        raise ReceiverInterrupted(
            f"{len(retryable)} of {len(files) - send.resumed} instances not stored yet ({retryable[0].reason or retryable[0].meaning}); "
            "retrying the rest",
            hint="A receiver that stays down fails the run after the retries",
        )
    return send


def _study_check(
    connection: XnatConnection | None, routing: RoutingOverride | None, stack: contextlib.ExitStack
) -> Callable[[str], bool] | None:
    """``study_present`` on the XNAT of ``connection`` for the C-STORE journal.

    None when it cannot be asked (no credentials on the worker, XNAT's REST API unreachable).

    Returns:
        The check, or None.
    """
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


@task(name="check-destination", cache_policy=NO_CACHE)
@speaks_to_operator
def check_destination(connection: XnatConnection | None, routing: RoutingOverride | None) -> None:
    """The routing project exists in the XNAT behind the receiver.

    XNAT files the instances of an unknown project under Unassigned, so it is refused before
    anything is read or sent.

    Args:
        connection: The XNAT behind the receiver. When it cannot be asked (no credentials on the
            worker, its REST API away) the run goes on and says so, as the journal check does.
        routing: The routing override; None routes by the DICOM headers, nothing to check.
    """
    if routing is None or connection is None:
        return
    logger = get_run_logger() if task_run.id else logging.getLogger(__name__)
    try:
        client = open_client(connection)
    except (XnatError, ValueError) as exc:  # no credentials on the worker
        logger.warning(
            "cannot ask XNAT whether project %s exists (%s): sending without the check", routing.project, exc
        )
        return
    with client:
        try:
            client.whoami()
        except XnatError as exc:  # not logged in, XNAT's REST API away
            logger.warning(
                "cannot ask XNAT whether project %s exists (%s): sending without the check", routing.project, exc
            )
            return
        client.require_project(routing.project)


@task(name="wait-for-archived-studies", cache_policy=NO_CACHE, persist_result=False)
@speaks_to_operator
def wait_for_archived_studies_task(
    connection: XnatConnection,
    instances: dict[str, int],
    project: str | None,
    timeout_seconds: float,
    poll_seconds: float = 2.0,
) -> list[ArchivedStudy]:
    """Wait (bounded) until every sent study is an archived session with all its instances.

    Each session must hold at least as many files as instances were sent
    (``transfer.cstore.archived``).

    Args:
        connection: The XNAT behind the receiver.
        instances: Instances sent per StudyInstanceUID.
        project: Look only there (the routing project); None: every project.
        timeout_seconds: How long to wait in all.
        poll_seconds: The pause between two looks.

    Returns:
        The archived sessions, one per study.
    """
    logger = get_run_logger()
    with open_client(connection) as client:
        return wait_for_archived_studies(client, instances, project, timeout_seconds, poll_seconds, logger.info)
