"""Prefect tasks of the C-STORE upload: check the receiver, send instances."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run

from xnat_flows.client.errors import TransientError
from xnat_flows.models import DicomReceiverTarget
from xnat_flows.tasks.policies import ReceiverLimit, association_slots, existing_receiver_limit, retry_unless_permanent
from xnat_flows.transfer.dicom_resume import in_doubt_warning, store_instances_resumable
from xnat_flows.transfer.dicom_send import EchoResult, RoutingOverride, SendResult, echo
from xnat_flows.transfer.journal import UploadJournal
from xnat_flows.transfer.scan import DicomFile


def resolve_receiver(target: DicomReceiverTarget) -> DicomReceiverTarget:
    """Fill the fields not given from the named Block, then from the defaults XNAT ships with."""
    values = target.model_dump()
    if target.receiver_block:
        from xnat_flows.blocks import DicomReceiver

        block = DicomReceiver.load(target.receiver_block)
        for name in ("host", "port", "called_aet", "calling_aet"):
            values[name] = values[name] or getattr(block, name)
    values["port"] = values["port"] or 8104
    values["called_aet"] = values["called_aet"] or "XNAT"
    values["calling_aet"] = values["calling_aet"] or "XNATFLOWS"
    if not values["host"]:
        from xnat_flows.client.errors import InputError

        raise InputError("No DICOM receiver host given", hint="Pass host=... or receiver_block=<Block name>")
    return DicomReceiverTarget(**values)


@task(name="echo-receiver", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_permanent)
def echo_receiver(receiver: DicomReceiverTarget) -> EchoResult:
    """C-ECHO pre-flight: wrong host/port, wrong AE title and firewalls fail here, with advice."""
    return echo(receiver.host, receiver.port, receiver.called_aet, receiver.calling_aet)


SEND_RETRIES = 2




class ReceiverInterrupted(TransientError):
    """Some instances were not stored for a reason that may heal (receiver down, busy, dropped
    associations); Prefect retries the task, which sends only what is still missing."""


@task(name="check-receiver", cache_policy=NO_CACHE)
def check_receiver_limit(receiver: DicomReceiverTarget) -> ReceiverLimit | None:
    """The receiver's global concurrency limit ``xnat-cstore:HOST:PORT``, if the site created one."""
    return existing_receiver_limit(receiver.host, receiver.port)


@task(name="send-instances", cache_policy=NO_CACHE, retries=SEND_RETRIES, retry_delay_seconds=10,
      retry_condition_fn=retry_unless_permanent)
def send_instances(
    receiver: DicomReceiverTarget, files: list[DicomFile], workers: int, routing: RoutingOverride | None,
    limit: ReceiverLimit | None = None,
) -> tuple[SendResult, int]:
    """C-STORE over ``workers`` long-lived associations; returns the result and how many instances
    an earlier run or attempt had already delivered (recorded in the upload journal, not sent again).

    Each association holds a slot of the receiver's limit. When instances fail for a reason that
    may heal, the task raises so Prefect retries it; the last attempt returns what it has.
    """
    with association_slots(limit, workers) as associations:
        if associations < workers:
            get_run_logger().info("the receiver's limit %s has %d slots: sending over %d associations", limit.name,
                                  limit.slots, associations)
        send = store_instances_resumable(
            files, UploadJournal(), host=receiver.host, port=receiver.port, called_aet=receiver.called_aet,
            calling_aet=receiver.calling_aet, workers=associations, routing=routing, preflight=False,
        )
    result, resumed = send.result, send.resumed
    if send.in_doubt:
        get_run_logger().warning(in_doubt_warning(send.in_doubt))
    retryable = result.retryable_failures
    if retryable and 1 <= task_run.run_count <= SEND_RETRIES:  # 0: called as a plain function (.fn)
        raise ReceiverInterrupted(
            f"{len(retryable)} of {len(files) - resumed} instances not stored yet ({retryable[0].reason or retryable[0].meaning}); "
            "retrying the rest", hint="A receiver that stays down fails the run after the retries")
    return result, resumed
