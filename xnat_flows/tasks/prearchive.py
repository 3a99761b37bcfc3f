"""Prefect tasks over ``xnat_flows.client.prearchive``: list, archive, delete, move, wait for archive.

Each task opens its own client from an ``XnatConnection`` (no secret in its inputs), retries only
failures a later attempt can fix, and is tagged ``xnat:<host>`` by the flows so a tag concurrency
limit can cap the load on one server. Re-running an archive is safe: a session already archived
is reported as such instead of failing.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from xnat_flows.client import prearchive as lib
from xnat_flows.client.archive import ArchivedSession, wait_for_archive
from xnat_flows.client.urls import server_host
from xnat_flows.models import XnatConnection
from xnat_flows.tasks.connection import credentials_for, open_client
from xnat_flows.tasks.hints import speaks_to_operator
from xnat_flows.tasks.policies import ResultOptions, RetryOptions, retry_unless_permanent

# Side effects on the server: never answer from a cache.
_COMMON: ResultOptions = {"cache_policy": NO_CACHE, "persist_result": False}
_RETRYING: RetryOptions = {
    "retries": 2,
    "retry_delay_seconds": [10, 60],
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_unless_permanent,
}


def xnat_tag(connection: XnatConnection) -> str:
    """``xnat:<host[:port]>`` — the tag that groups every task talking to one XNAT server.

    Args:
        connection: The XNAT server and how to log in (a Block, or fields).

    Returns:
        The tag.
    """
    return f"xnat:{server_host(credentials_for(connection).url)}"


@task(name="list-prearchive", timeout_seconds=300, **_COMMON, **_RETRYING)
@speaks_to_operator
def list_prearchive_task(connection: XnatConnection, project: str | None = None) -> list[lib.PrearchiveSession]:
    """Prearchive sessions, of one project or all.

    Args:
        connection: The XNAT server and how to log in (a Block, or fields).
        project: The project's ID, or None for every project.

    Returns:
        The sessions.
    """
    with open_client(connection) as client:
        return lib.list_sessions(client, project)


@task(name="archive-prearchive-session", timeout_seconds=4 * 3600, **_COMMON, **_RETRYING)
@speaks_to_operator
def archive_session_task(
    connection: XnatConnection,
    project: str,
    timestamp: str,
    folder: str,
    subject: str | None = None,
    label: str | None = None,
    overwrite: lib.ArchiveOverwrite | None = None,
    wait_seconds: float = 300.0,
    poll_seconds: float = 5.0,
) -> lib.ArchiveOutcome:
    """Archive one prearchive session, waiting (bounded) while XNAT is still receiving or building it.

    Args:
        connection: The XNAT server and how to log in (a Block, or fields).
        project: The project's ID.
        timestamp: The session's prearchive timestamp folder.
        folder: The session's folder name.
        subject: The subject to archive it under (XNAT's choice when None).
        label: The session label to archive it as (XNAT's choice when None).
        overwrite: What a CONFLICT needs: ``append`` merges, ``delete`` replaces overlapping files.
        wait_seconds: How long to wait at most for a transient status to end.
        poll_seconds: The wait between looks at the status.

    Returns:
        What was done (``lib.archive_session``).
    """
    logger = get_run_logger()
    with open_client(connection) as client:
        outcome = lib.archive_session(
            client,
            project,
            timestamp,
            folder,
            subject=subject,
            label=label,
            overwrite=overwrite,
            wait_seconds=wait_seconds,
            poll_seconds=poll_seconds,
            on_wait=logger.info,
        )
    if outcome.already_archived:
        logger.info("%s/%s was already archived (%s)", project, outcome.label, outcome.archive_uri)
    else:
        logger.info("archived %s/%s/%s as %s", project, timestamp, folder, outcome.archive_uri)
    return outcome


@task(name="delete-prearchive-session", timeout_seconds=600, **_COMMON, **_RETRYING)
@speaks_to_operator
def delete_session_task(connection: XnatConnection, project: str, timestamp: str, folder: str) -> None:
    """Delete a prearchive session.

    Args:
        connection: The XNAT server and how to log in (a Block, or fields).
        project: The project's ID.
        timestamp: The session's prearchive timestamp folder.
        folder: The session's folder name.
    """
    with open_client(connection) as client:
        lib.delete_session(client, project, timestamp, folder)
    get_run_logger().info("deleted prearchive session %s", lib.prearchive_src(project, timestamp, folder))


@task(name="move-prearchive-session", timeout_seconds=600, **_COMMON, **_RETRYING)
@speaks_to_operator
def move_session_task(connection: XnatConnection, project: str, timestamp: str, folder: str, new_project: str) -> str:
    """Move a prearchive session to another project's prearchive.

    Args:
        connection: The XNAT server and how to log in (a Block, or fields).
        project: The project's ID.
        timestamp: The session's prearchive timestamp folder.
        folder: The session's folder name.
        new_project: The project to move it to.

    Returns:
        The session's new prearchive URI.
    """
    with open_client(connection) as client:
        uri = lib.move_session(client, project, timestamp, folder, new_project)
    get_run_logger().info("moved prearchive session to %s", uri)
    return uri


@task(name="wait-for-archive", timeout_seconds=6 * 3600, **_COMMON, **_RETRYING)
@speaks_to_operator
def wait_for_archive_task(
    connection: XnatConnection,
    project: str,
    label: str,
    subject: str | None = None,
    timeout_seconds: float = 600.0,
    poll_seconds: float = 2.0,
) -> ArchivedSession:
    """Wait until ``project``/``label`` is in the archive: chain it after an upload, before attaching resources.

    Args:
        connection: The XNAT server and how to log in (a Block, or fields).
        project: The project's ID.
        label: The session's label.
        subject: The subject's label, if it must match.
        timeout_seconds: How long to wait at most.
        poll_seconds: The first wait between looks.

    Returns:
        The archived session.
    """
    logger = get_run_logger()
    with open_client(connection) as client:
        found = wait_for_archive(
            client, project, label, subject=subject, timeout=timeout_seconds, poll=poll_seconds, on_wait=logger.info
        )
    logger.info("%s/%s is archived as %s", project, label, found.experiment_id or found.uri)
    return found
