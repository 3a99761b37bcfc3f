"""Flow ``process-xnat-session``: an example processing step started by an ``xnat.session.archived`` event.

prefect.yaml gives its deployment a trigger that passes the event resource's project, subject and
experiment ID as parameters. This example only reads the session back (scans and file counts) and
publishes a summary; a real pipeline would download the scans, run a tool, and attach its output
with the ``attach-resource`` flow.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from pydantic import BaseModel, Field

from xnat_flows.client.archive import item_fields
from xnat_flows.client.errors import XnatError
from xnat_flows.flows.failures import failed_run
from xnat_flows.models import PROJECT_ID_PATTERN, XnatConnection, ui_title
from xnat_flows.tasks.connection import open_client
from xnat_flows.tasks.policies import retry_unless_permanent


class ScanSummary(BaseModel):
    id: str
    type: str | None = None
    series_description: str | None = None
    files: int = 0


class ProcessedSession(BaseModel):
    project: str
    subject: str | None
    experiment_id: str
    label: str | None = None
    scans: list[ScanSummary] = Field(default_factory=list)

    @property
    def file_count(self) -> int:
        return sum(scan.files for scan in self.scans)


@task(
    name="read-session",
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=retry_unless_permanent,
)
def read_session(connection: XnatConnection, project: str, subject: str | None, experiment_id: str) -> ProcessedSession:
    """The session's label and, per scan, its type, description and number of files."""
    with open_client(connection) as client:
        base = f"/data/projects/{project}/experiments/{experiment_id}"
        document = client.get_json(base, params={"format": "json"})
        fields = item_fields(document)
        scans = []
        for row in client.get_rows(f"{base}/scans"):
            scan_id = row.get("ID") or row.get("id") or ""
            resources = client.get_rows(f"{base}/scans/{scan_id}/resources")
            scans.append(
                ScanSummary(
                    id=scan_id,
                    type=row.get("type") or None,
                    series_description=row.get("series_description") or None,
                    files=sum(int(r.get("file_count") or 0) for r in resources),
                )
            )
    return ProcessedSession(
        project=project,
        subject=subject,
        experiment_id=fields.get("ID") or experiment_id,
        label=fields.get("label"),
        scans=scans,
    )


@flow(name="process-xnat-session", validate_parameters=True, flow_run_name="process {project}/{experiment_id}")
def process_xnat_session(
    project: Annotated[str, ui_title("Project ID", pattern=PROJECT_ID_PATTERN)],
    experiment_id: Annotated[str, ui_title("Experiment", min_length=1)],
    subject: Annotated[str | None, ui_title("Subject label")] = None,
    connection: Annotated[XnatConnection, ui_title("XNAT connection")] = XnatConnection(),
) -> ProcessedSession:
    """Read an archived session back from XNAT and publish what it holds (the place to start a pipeline).

    Args:
        project: XNAT project ID of the session.
        experiment_id: Experiment accession ID (XNAT_E00001), or the session label.
        subject: Subject label (optional).
        connection: The xnat-credentials Block (the trigger passes the one named by XNAT_CREDENTIALS_BLOCK at deploy time).
    """
    try:
        subject = subject or None  # a trigger renders a missing event field as ""
        session = read_session(connection, project, subject, experiment_id)
        get_run_logger().info(
            "%s/%s/%s (%s): %d scans, %d files",
            project,
            subject,
            session.label,
            session.experiment_id,
            len(session.scans),
            session.file_count,
        )
        if FlowRunContext.get() is not None:
            from prefect.artifacts import create_markdown_artifact

            lines = [
                f"**{project}/{subject or '?'}/{session.label}** (`{session.experiment_id}`)",
                "",
                "| scan | type | description | files |",
                "|---|---|---|---|",
            ]
            lines += [f"| {s.id} | {s.type or ''} | {s.series_description or ''} | {s.files} |" for s in session.scans]
            create_markdown_artifact(
                markdown="\n".join(lines), description="Session read back by the processing example"
            )
        return session
    except XnatError as exc:
        return failed_run(exc)  # the cause once, as the run's state; the caller still gets exc raised
