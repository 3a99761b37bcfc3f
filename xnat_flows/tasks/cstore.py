"""Prefect tasks of the C-STORE upload: check the receiver, send instances."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from xnat_flows.models import DicomReceiverTarget
from xnat_flows.tasks.policies import retry_unless_permanent
from xnat_flows.transfer.dicom_send import EchoResult, RoutingOverride, SendResult, echo, send_dicom
from xnat_flows.transfer.journal import UploadJournal, content_digest
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


def receiver_key(receiver: DicomReceiverTarget) -> str:
    return f"dicom://{receiver.called_aet}@{receiver.host}:{receiver.port}"


@task(name="echo-receiver", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_permanent)
def echo_receiver(receiver: DicomReceiverTarget) -> EchoResult:
    """C-ECHO pre-flight: wrong host/port, wrong AE title and firewalls fail here, with advice."""
    return echo(receiver.host, receiver.port, receiver.called_aet, receiver.calling_aet)


@task(name="send-instances", cache_policy=NO_CACHE)
def send_instances(
    receiver: DicomReceiverTarget, files: list[DicomFile], workers: int, routing: RoutingOverride | None
) -> tuple[SendResult, int]:
    """C-STORE over ``workers`` long-lived associations; returns the result and how many instances
    an earlier run had already delivered (recorded in the upload journal, not sent again)."""
    journal = UploadJournal()
    key = receiver_key(receiver) + (f"#{routing.comment()}" if routing else "")
    digests = {f.path: content_digest([f]) for f in files}
    done = journal.done(key)
    pending = [f for f in files if digests[f.path] not in done]
    result = send_dicom(
        pending, host=receiver.host, port=receiver.port, called_aet=receiver.called_aet,
        calling_aet=receiver.calling_aet, workers=workers, routing=routing, preflight=False,
    )
    for outcome in result.sent:
        journal.record(key, digests[outcome.path])
    if result.ok:
        journal.clear(key)
    return result, len(files) - len(pending)
