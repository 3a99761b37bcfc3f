"""Flow ``attach-resource``: upload a file or a directory to a session or scan resource.

Chains after an upload: with ``wait_for_archive`` it first waits until the session is in the
archive (uploads and archiving are asynchronous in XNAT), then attaches the files.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow, tags
from pydantic import BaseModel, Field

from xnat_flows.client.errors import InputError, XnatError
from xnat_flows.flows.failures import failed_run
from xnat_flows.flows.prearchive import publish_markdown
from xnat_flows.manage.resources import ResourceTarget, ResourceUploadResult
from xnat_flows.models import ON_THE_WORKER, XnatConnection, ui_title
from xnat_flows.tasks.prearchive import wait_for_archive_task, xnat_tag
from xnat_flows.tasks.resources import upload_resource_task


class AttachResourceRequest(BaseModel):
    """What to attach, and where."""

    session: str = Field(
        title="Session", description="Experiment accession ID (XNAT_E00001), or its label when a project is given."
    )
    project: str | None = Field(
        default=None, title="Project ID", description="Project ID (needed when the session is given by label)."
    )
    subject: str | None = Field(default=None, title="Subject label", description="Subject label (optional).")
    scan: str | None = Field(
        default=None, title="Scan ID", description="Scan ID: attach to the scan's resource instead of the session's."
    )
    label: str = Field(title="Resource label", description="Resource label, e.g. BIDS, NIFTI, SNAPSHOTS.")
    path: str = Field(
        title="File or folder (on the worker's host)",
        description=f"A file, or a folder (zipped on the fly and extracted by XNAT with its sub-folders), {ON_THE_WORKER}.",
    )
    overwrite: bool = Field(
        default=False,
        title="Overwrite",
        description="Replace files XNAT already has; off: they are kept and reported as duplicates.",
    )
    wait_for_archive: bool = Field(
        default=False,
        title="Wait for the archive",
        description="First wait until the session (project + label) appears in the archive, e.g. right after an upload.",
    )
    wait_timeout_seconds: float = Field(
        default=600.0, gt=0, title="Wait timeout (s)", description="How long to wait for the session in the archive."
    )


@flow(name="attach-resource", validate_parameters=True, flow_run_name="attach {request.label} to {request.session}")
def attach_resource(
    request: Annotated[AttachResourceRequest, ui_title("What to attach, and where")],
    connection: Annotated[XnatConnection, ui_title("XNAT connection")] = XnatConnection(),
) -> ResourceUploadResult:
    """Attach non-DICOM files to a session or scan resource (the resource is created when missing).

    Args:
        request: What to attach (file or directory) and where (session or scan, resource label).
        connection: The xnat-credentials Block to use (the deployment's default is the one named by XNAT_CREDENTIALS_BLOCK at deploy time).

    Returns:
        What was sent and what XNAT kept: the resource's URI, the files and bytes sent, the local
        files not sent.
    """
    try:
        target = ResourceTarget(
            session=request.session, project=request.project, subject=request.subject, scan=request.scan
        )
        with tags(xnat_tag(connection)):
            if request.wait_for_archive:
                if not request.project:
                    raise InputError(
                        "wait_for_archive needs the project (and the session label) to look the session up."
                    )
                archived = wait_for_archive_task(
                    connection,
                    request.project,
                    request.session,
                    subject=request.subject,
                    timeout_seconds=request.wait_timeout_seconds,
                )
                if archived.experiment_id:  # the accession ID is unambiguous and spares a label look-up
                    target = ResourceTarget(session=archived.experiment_id, scan=request.scan)
            result = upload_resource_task(connection, target, request.label, request.path, overwrite=request.overwrite)
        lines = [f"Sent {len(result.files)} file(s), {result.bytes_sent / 1e6:.1f} MB, to `{result.resource_uri}`."]
        if result.duplicates:
            kept = ", ".join(f"`{d}`" for d in result.duplicates[:50])
            lines.append(f"XNAT kept {len(result.duplicates)} existing file(s) (overwrite off): {kept}")
        if result.skipped:
            lines.append("Not sent: " + ", ".join(f"`{s.path}` ({s.reason})" for s in result.skipped[:50]))
        publish_markdown("\n\n".join(lines), description="Resource upload outcome")
        return result
    except XnatError as exc:
        return failed_run(exc)  # the cause once, as the run's state; the caller still gets exc raised
