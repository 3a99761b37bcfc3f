"""Flows ``archive-prearchive-session`` and ``delete-prearchive-session``.

Parameters are pydantic models (rendered as forms in the Prefect UI); the connection names a
Block, a profile or a user, never a password.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow, tags
from prefect.context import FlowRunContext
from pydantic import BaseModel, Field

from xnat_flows.client.errors import XnatError
from xnat_flows.client.prearchive import ArchiveOutcome, ArchiveOverwrite, prearchive_src
from xnat_flows.events import emit_archive_outcome
from xnat_flows.flows.failures import failed_run
from xnat_flows.models import XnatConnection, ui_title
from xnat_flows.tasks.connection import credentials_for
from xnat_flows.tasks.prearchive import (
    archive_session_task,
    delete_session_task,
    wait_for_archive_task,
    xnat_tag,
)


class PrearchiveSessionRef(BaseModel):
    """One prearchive session, as ``xnat-flows prearchive list`` shows it."""

    project: str = Field(title="Project ID", description="Project ID whose prearchive holds the session.")
    timestamp: str = Field(title="Prearchive timestamp", description="Prearchive timestamp, e.g. 20240115_120000123.")
    folder: str = Field(
        title="Session folder", description="The session's folder name in the prearchive (usually its label)."
    )


class ArchiveRequest(PrearchiveSessionRef):
    """Archive a prearchive session, optionally under another subject and label."""

    subject: str | None = Field(
        default=None, title="Subject label", description="Subject label in the archive (default: the one XNAT found)."
    )
    label: str | None = Field(
        default=None, title="Session label", description="Session label in the archive (default: the prearchive name)."
    )
    overwrite: ArchiveOverwrite | None = Field(
        default=None,
        title="If the session exists",
        description=(
            "When the session already exists in the archive: append (add scans/files) or delete "
            "(replace overlapping files). Unset: fail on such a conflict."
        ),
    )
    wait_seconds: float = Field(
        default=300.0,
        ge=0,
        title="Wait (s)",
        description="How long to wait while XNAT is still receiving or building the session.",
    )
    poll_seconds: float = Field(
        default=5.0, gt=0, title="Poll interval (s)", description="Interval between status checks while waiting."
    )


class DeleteOutcome(BaseModel):
    """A prearchive session deleted by ``delete-prearchive-session``."""

    project: str
    timestamp: str
    folder: str
    deleted: bool = True


@flow(
    name="archive-prearchive-session",
    validate_parameters=True,
    flow_run_name="archive {request.project}/{request.timestamp}/{request.folder}",
)
def archive_prearchive_session(
    request: Annotated[ArchiveRequest, ui_title("Session to archive")],
    connection: Annotated[XnatConnection, ui_title("XNAT connection")] = XnatConnection(),
) -> ArchiveOutcome:
    """Move a session from the prearchive into the archive (idempotent: already archived is success).

    Args:
        request: The prearchive session (project, timestamp, folder) and how to archive it.
        connection: The xnat-credentials Block to use (the deployment's default is the one named by XNAT_CREDENTIALS_BLOCK at deploy time).

    Returns:
        What archiving did: the session's label, subject and archive URI.
    """
    try:
        with tags(xnat_tag(connection)):
            # The task may legitimately wait wait_seconds before archiving; its timeout must allow that.
            outcome = archive_session_task.with_options(timeout_seconds=request.wait_seconds + 3600)(
                connection,
                request.project,
                request.timestamp,
                request.folder,
                subject=request.subject,
                label=request.label,
                overwrite=request.overwrite,
                wait_seconds=request.wait_seconds,
                poll_seconds=request.poll_seconds,
            )
        if not outcome.already_archived and FlowRunContext.get() is not None:
            # Chained processing deployments trigger on this event (see prefect.yaml); it names the
            # experiment ID (looked up, bounded) so processing addresses the session unambiguously.
            archived = wait_for_archive_task(
                connection,
                request.project,
                outcome.label,
                subject=outcome.subject,
                timeout_seconds=min(request.wait_seconds, 120.0) or 10.0,
            )
            emit_archive_outcome(outcome, credentials_for(connection).url, experiment_id=archived.experiment_id or None)
        verb = "was already archived" if outcome.already_archived else "archived"
        publish_markdown(
            f"**{request.project}/{request.timestamp}/{request.folder}** {verb}: `{outcome.archive_uri}` "
            f"(label `{outcome.label}`, overwrite `{outcome.overwrite}`)",
            description="Prearchive archive outcome",
        )
        return outcome
    except XnatError as exc:
        return failed_run(exc)  # the cause once, as the run's state; the caller still gets exc raised


@flow(
    name="delete-prearchive-session",
    validate_parameters=True,
    flow_run_name="delete prearchive {session.project}/{session.timestamp}/{session.folder}",
)
def delete_prearchive_session(
    session: Annotated[PrearchiveSessionRef, ui_title("Session to delete")],
    connection: Annotated[XnatConnection, ui_title("XNAT connection")] = XnatConnection(),
) -> DeleteOutcome:
    """Delete a session from the prearchive (its files are removed by XNAT).

    Args:
        session: The prearchive session (project, timestamp, folder), as `xnat-flows prearchive list` shows it.
        connection: The xnat-credentials Block to use (the deployment's default is the one named by XNAT_CREDENTIALS_BLOCK at deploy time).

    Returns:
        The session deleted.
    """
    try:
        with tags(xnat_tag(connection)):
            delete_session_task(connection, session.project, session.timestamp, session.folder)
        publish_markdown(
            f"Deleted prearchive session `{prearchive_src(session.project, session.timestamp, session.folder)}`",
            description="Prearchive delete outcome",
        )
        return DeleteOutcome(project=session.project, timestamp=session.timestamp, folder=session.folder)
    except XnatError as exc:
        return failed_run(exc)  # the cause once, as the run's state; the caller still gets exc raised


def publish_markdown(markdown: str, description: str) -> None:
    """A markdown artifact on the current flow run; nothing when the flow body runs bare (``.fn()``)."""
    if FlowRunContext.get() is None:
        return
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(markdown=markdown, description=description)
