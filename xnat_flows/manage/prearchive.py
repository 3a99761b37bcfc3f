"""The XNAT prearchive, managed: delete and move sessions; listing, archiving and waiting for the
archive live in the client layer (``client.prearchive``, ``client.archive``) and are re-exported here.

Plain Python on ``XnatClient`` (no Prefect). See docs/prearchive.md.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from xnat_flows.client.archive import ArchivedSession, WaitTimeoutError, find_archived, wait_for_archive
from xnat_flows.client.client import XnatClient
from xnat_flows.client.prearchive import (
    CONFLICT,
    ERROR,
    READY,
    ArchiveOutcome,
    ArchiveOverwrite,
    PrearchiveSession,
    PrearchiveSessionFailed,
    WaitCallback,
    archive_session,
    get_session,
    is_transient_status,
    list_sessions,
    prearchive_src,
    session_logs,
    session_path,
    uri_from_success_body,
)

__all__ = [
    "CONFLICT",
    "ERROR",
    "READY",
    "ArchiveOutcome",
    "ArchivedSession",
    "ArchiveOverwrite",
    "PrearchiveSession",
    "PrearchiveSessionFailed",
    "WaitCallback",
    "WaitTimeoutError",
    "archive_session",
    "delete_session",
    "find_archived",
    "get_session",
    "is_transient_status",
    "list_sessions",
    "move_session",
    "prearchive_src",
    "session_logs",
    "wait_for_archive",
]


# ---------------------------------------------------------------------------------- delete, move


def delete_session(client: XnatClient, project: str, timestamp: str, folder: str) -> None:
    """Delete a prearchive session (``NotFoundError`` if it is not there)."""
    response = client.request("DELETE", session_path(project, timestamp, folder))
    uri_from_success_body(response.text, f"delete {prearchive_src(project, timestamp, folder)}")


def move_session(client: XnatClient, project: str, timestamp: str, folder: str, new_project: str) -> str:
    """Move a prearchive session to another project's prearchive; returns its new prearchive URI.

    XNAT answers a successful move with 301 and the new URI as the body, not with 200.
    """
    response = client.request(
        "POST",
        session_path(project, timestamp, folder),
        params={"action": "move", "newProject": new_project},
    )
    moved_uri = re.compile(r"(?:/data)?/prearchive/projects/" + re.escape(quote(new_project, safe="")) + r"/\S+")
    uri = uri_from_success_body(
        response.text, f"move {prearchive_src(project, timestamp, folder)} to {new_project}", moved_uri
    )
    return uri or response.headers.get("Location") or "/data" + prearchive_src(new_project, timestamp, folder)
