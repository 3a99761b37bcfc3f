"""Prefect tasks of de-identification on upload.

Build the anonymizer a request asks for (XNAT's own scripts fetched with the run's credentials), and
rewrite the planned sessions' file lists (``transfer.deidentify``; the bytes are rewritten later, as
each file is sent).
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from xnat_flows.models import Deidentification, XnatConnection
from xnat_flows.tasks.connection import open_client
from xnat_flows.tasks.hints import speaks_to_operator
from xnat_flows.transfer.cstore.inputs import RoutingOverride
from xnat_flows.transfer.cstore.results import InstanceOutcome
from xnat_flows.transfer.cstore.send import deidentify_for_send, routing_variables
from xnat_flows.transfer.deidentify import Anonymizer, build_anonymizer, deidentify_plan
from xnat_flows.transfer.scan import DicomFile, SkippedFile
from xnat_flows.transfer.target import UploadTarget


@task(name="prepare-deidentification", cache_policy=NO_CACHE, persist_result=False)
@speaks_to_operator
def prepare_anonymizer(
    connection: XnatConnection, deidentify: Deidentification, project: str | None
) -> Anonymizer | None:
    """Compile what ``deidentify`` asks for (a script error fails here, before anything is sent).

    Args:
        connection: The XNAT whose site and project scripts ``deidentify.from_server`` fetches.
        deidentify: What the request asks for (script or Block, profile, XNAT's own scripts).
        project: The project whose script XNAT would apply, or None.

    Returns:
        The anonymizer, or None when ``deidentify`` asks for nothing.
    """
    return anonymizer_for_request(connection, deidentify, project)


def anonymizer_for_request(
    connection: XnatConnection | None, deidentify: Deidentification, project: str | None
) -> Anonymizer | None:
    """The rules a request's ``deidentify`` asks for, as an upload applies them.

    XNAT's enabled scripts, fetched with ``connection``, then the script, then the profile: for
    ``prepare_anonymizer``, and for ``tasks.anon.anon_check`` checking them.

    Args:
        connection: The XNAT whose site and project scripts ``deidentify.from_server`` fetches.
        deidentify: What the request asks for.
        project: The project whose script XNAT would apply, or None.

    Returns:
        The anonymizer, or None when ``deidentify`` asks for nothing.

    Raises:
        ValueError: ``deidentify.from_server`` without a connection to fetch XNAT's scripts with.
    """
    server_scripts: list[tuple[str, str]] = []
    if deidentify.from_server:
        from xnat_flows.client.anon_scripts import scripts_to_apply

        if connection is None:
            raise ValueError("deidentify.from_server needs the XNAT connection whose scripts to fetch")
        with open_client(connection) as client:
            server_scripts = scripts_to_apply(client, project)
    return build_anonymizer(
        server_scripts=server_scripts,
        script=deidentify.script_text(),
        profile=deidentify.profile or None,
        allowed_urls=deidentify.allowed_urls,
    )


@task(name="deidentify-files", cache_policy=NO_CACHE, persist_result=False)
def deidentify_sessions(
    plans: list[tuple[UploadTarget, list[DicomFile]]], anonymizer: Anonymizer, streamed: bool = False
) -> tuple[list[tuple[UploadTarget, list[DicomFile]]], list[SkippedFile]]:
    """Apply the anonymizer to every planned file in memory.

    With ``streamed`` (DICOM-zip, its batch tasks in this process's threads) a session whose script
    keeps one study per study is rewritten batch by batch in the ``upload-batch`` tasks instead
    (``transfer.deidentify.StreamedDeidentification``): here only its first file.

    Args:
        plans: The planned sessions and their files.
        anonymizer: The compiled rules (``prepare_anonymizer``).
        streamed: Let a session be rewritten as it is sent, where the script allows it.

    Returns:
        The files as they will be sent (or pending, streamed), and those it cannot be applied to
        (listed, never sent).
    """
    return deidentify_plan(plans, anonymizer, streamed=streamed)


@task(name="deidentify-instances", cache_policy=NO_CACHE, persist_result=False)
def deidentify_instances(
    files: list[DicomFile], anonymizer: Anonymizer, routing: RoutingOverride | None
) -> tuple[list[DicomFile], list[InstanceOutcome]]:
    """De-identify the files of a C-STORE.

    The routing's labels are the script's variables.

    Args:
        files: The instances to send.
        anonymizer: The compiled rules (``prepare_anonymizer``).
        routing: The routing, whose labels are the script's variables, or None.

    Returns:
        The files as they will be sent, and a failed outcome for each the script cannot be applied
        to.
    """
    return deidentify_for_send(files, anonymizer, routing_variables(routing))
