"""Flow ``download-xnat-session``: a session's scans onto the worker's disk, verified and resumable.

The flow form of ``xnat-flows session download`` (``transfer.download``): files fetched in
parallel, each checked against XNAT's catalog (size, MD5), written under hidden part names and
renamed when complete; a re-run (or a task retry) fetches only what is missing.
"""

from __future__ import annotations

from typing import Annotated, Literal

from prefect import flow, tags
from pydantic import BaseModel, Field

from xnat_flows.client.errors import XnatError
from xnat_flows.flows.failures import failed_run
from xnat_flows.flows.prearchive import publish_markdown
from xnat_flows.models import ON_THE_WORKER, XnatConnection, ui_title
from xnat_flows.tasks.prearchive import xnat_tag
from xnat_flows.tasks.processing import download_session_task
from xnat_flows.transfer.download import DownloadResult


class DownloadRequest(BaseModel):
    """What to download, and where on the worker."""

    session: str = Field(
        title="Session", description="Experiment accession ID (XNAT_E00001), or PROJECT/SUBJECT/SESSION labels."
    )
    dest: str = Field(
        title="Destination folder (on the worker's host)",
        description=f"Folder to download into, {ON_THE_WORKER}; the session gets a folder there (its label).",
    )
    scans: list[str] = Field(default_factory=list, title="Scans", description="Scan IDs or types; empty: every scan.")
    resources: list[str] = Field(
        default_factory=list, title="Resource labels", description="Resource labels (e.g. DICOM); empty: all."
    )
    layout: Literal["xnat", "flat"] = Field(
        default="xnat",
        title="Layout",
        description="xnat: SESSION/scans/ID/resources/LABEL/files/... (XNAT's zip); flat: SESSION/ID/...",
    )
    parallel_downloads: int = Field(
        default=4, ge=1, le=64, title="Parallel downloads", description="Files fetched at once."
    )


@flow(name="download-xnat-session", validate_parameters=True, flow_run_name="download {request.session}")
def download_xnat_session(
    request: Annotated[DownloadRequest, ui_title("What to download, and where")],
    connection: Annotated[XnatConnection, ui_title("XNAT connection")] = XnatConnection(),
) -> DownloadResult:
    """Download a session's scans to the worker, each file verified against XNAT's catalog.

    Args:
        request: Which session, scans and resources; where to, in which layout.
        connection: The xnat-credentials Block to use (the deployment's default is the one named by XNAT_CREDENTIALS_BLOCK at deploy time).

    Returns:
        What the download found and checked: the scans chosen, the files fetched by this run and
        those found in place and verified.
    """
    try:
        with tags(xnat_tag(connection)):
            result = download_session_task(
                connection,
                request.session,
                request.dest,
                scans=request.scans or None,
                resources=request.resources or None,
                layout=request.layout,
                workers=request.parallel_downloads,
            )
        publish_markdown(
            f"`{result.project}/{result.label}` ({result.experiment_id}): {result.files} file(s) in `{result.root}`; "
            f"fetched {result.downloaded} ({result.bytes_downloaded / 1e6:.1f} MB), already there "
            f"{result.already_present}, MD5 checked {result.digests_checked}.",
            description="Session download",
        )
        return result
    except XnatError as exc:
        return failed_run(exc)
