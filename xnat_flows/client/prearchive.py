"""XNAT's prearchive, in one module.

List sessions, find one, archive one (status-aware), delete and move one.

The read model below transfer (the verifier merges CONFLICT rows with it). XNAT behaviour
followed here (docs/prearchive.md):

* a session can only be archived when ``READY`` (or ``CONFLICT`` with an explicit overwrite);
  ``RECEIVING``/``BUILDING``/``QUEUED_*``/``_*`` are transient and worth waiting for;
* ``/data/services/archive`` answers 404 when the session is no longer in the prearchive, which
  usually means it has already been archived — we check the archive before calling it an error;
* several prearchive services report failures in the body of an HTTP 200 (or 301 for a move).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from typing import Literal
from urllib.parse import quote, urlencode

from pydantic import BaseModel, ConfigDict, Field

from xnat_flows.client.archive import ArchivedSession, WaitTimeoutError, find_archived, study_label, subject_label
from xnat_flows.client.client import XnatClient
from xnat_flows.client.errors import (
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    TransientError,
    XnatError,
)

log = logging.getLogger(__name__)

# ``overwrite`` of archiving a prearchive session (POST /data/services/archive): what to do with an
# archived session of the same label. The import service has its own, ``target.ImportOverwrite``.
ArchiveOverwrite = Literal["append", "delete"]
WaitCallback = Callable[[str], None]

READY = "READY"
CONFLICT = "CONFLICT"
ERROR = "ERROR"
# Statuses XNAT moves out of on its own (receiving, building, a queued or in-process action).
_TRANSIENT = frozenset(
    {"RECEIVING", "RECEIVING_INTERRUPT", "BUILDING", "ARCHIVING", "DELETING", "MOVING", "SEPARATING"}
)
_MAX_TRANSIENT_ARCHIVE_FAILURES = 3  # lost answers / 423s before giving up on one archive call
_NOTIFY_EVERY_SECONDS = 30  # while waiting, repeat the notice this often (and on each status change)


def is_transient_status(status: str) -> bool:
    """True for statuses that change without us: wait rather than act.

    Args:
        status: A prearchive status (READY, RECEIVING, BUILDING, ...).

    Returns:
        True for a status XNAT is still working on.
    """
    return status in _TRANSIENT or status.startswith(("QUEUED_", "_"))


class PrearchiveSession(BaseModel):
    """One prearchive row (XNAT sends every cell as a string)."""

    model_config = ConfigDict(populate_by_name=True, frozen=True, extra="ignore")

    project: str
    timestamp: str
    name: str = ""
    folder_name: str = Field(default="", alias="folderName")
    subject: str = ""
    status: str = ""
    scan_date: str = ""
    url: str = ""
    tag: str = Field(default="", description="StudyInstanceUID")

    @classmethod
    def from_row(cls, row: dict[str, str]) -> PrearchiveSession:
        """One row of XNAT's prearchive listing (null cells as "").

        Args:
            row: The listing's row.

        Returns:
            The session; its folder name falls back to ``name`` (as xnatctl learnt).
        """
        session = cls.model_validate({k: v if v is not None else "" for k, v in row.items()})
        # xnatctl learnt the hard way that the path segment is folderName, with name as fallback.
        return session if session.folder_name else session.model_copy(update={"folder_name": session.name})

    @property
    def src(self) -> str:
        """The session's ``/prearchive/projects/P/TS/F`` URI (the form the archive service takes)."""
        return prearchive_src(self.project, self.timestamp, self.folder_name)


class ArchiveOutcome(BaseModel):
    """What ``archive_session`` did."""

    project: str
    timestamp: str
    folder_name: str
    label: str = Field(description="Session label checked in (or found in) the archive.")
    subject: str | None = Field(default=None, description="Subject label, when known.")
    archive_uri: str | None = Field(default=None, description="e.g. /data/archive/projects/P/subjects/S/experiments/E")
    already_archived: bool = Field(
        default=False, description="The session was not in the prearchive but is in the archive."
    )
    overwrite: ArchiveOverwrite | None = None
    status_before: str | None = Field(default=None, description="Prearchive status when the archive request was sent.")
    waited_seconds: float = 0.0


class PrearchiveSessionFailed(XnatError):
    """The prearchive session is in status ERROR; ``logs`` holds XNAT's explanation."""

    default_hint = "Fix the cause XNAT logged, then rebuild the session in the prearchive or delete it and upload again"

    def __init__(self, message: str, *, logs: list[str] | None = None, **kwargs) -> None:
        # The last log lines travel as server_message too, so they survive pickling (Prefect).
        kwargs.setdefault("server_message", " | ".join((logs or [])[-3:]))
        super().__init__(message, **kwargs)
        self.logs = list(logs or [])


def prearchive_src(project: str, timestamp: str, folder: str) -> str:
    """``/prearchive/projects/P/TS/F`` with each segment URL-encoded (the form the archive service takes).

    Args:
        project: The project's ID.
        timestamp: The session's prearchive timestamp folder.
        folder: The session's folder name.

    Returns:
        The URI.
    """
    return "/prearchive/projects/" + "/".join(quote(part, safe="") for part in (project, timestamp, folder))


def session_path(project: str, timestamp: str, folder: str) -> str:
    """The REST path of a prearchive session (``/data/prearchive/projects/P/TS/F``).

    Args:
        project: The project's ID.
        timestamp: The session's prearchive timestamp folder.
        folder: The session's folder name.

    Returns:
        The path, each segment URL-encoded.
    """
    return "/data" + prearchive_src(project, timestamp, folder)


# ---------------------------------------------------------------------------------------- listing


def list_sessions(client: XnatClient, project: str | None = None) -> list[PrearchiveSession]:
    """All prearchive sessions the user can see, or those of one project.

    Args:
        client: A client on the server.
        project: The project's ID, or None for every project.

    Returns:
        The sessions.
    """
    path = f"/data/prearchive/projects/{quote(project, safe='')}" if project else "/data/prearchive"
    return [PrearchiveSession.from_row(row) for row in client.get_rows(path)]


def get_session(client: XnatClient, project: str, timestamp: str, folder: str) -> PrearchiveSession:
    """One prearchive session.

    Read from the project's listing rather than the session's own URL: XNAT does not serve a
    RECEIVING session singly (xnatpy notes it), but lists it with its status.

    Args:
        client: A client on the server.
        project: The project's ID.
        timestamp: The session's prearchive timestamp folder.
        folder: The session's folder name.

    Returns:
        The session.

    Raises:
        NotFoundError: It is not (or no longer) in the prearchive.
    """
    for session in list_sessions(client, project):
        if session.timestamp == timestamp and session.folder_name == folder:
            return session
    raise NotFoundError(f"No prearchive session {prearchive_src(project, timestamp, folder)}.", status=404)


def direct_archive_sessions(client: XnatClient, project: str) -> list[dict[str, str]]:
    """Direct-Archive sessions of ``project`` still being received.

    XNAT >= 1.8.3's direct-archive table (``POST /xapi/direct-archive``).

    Args:
        client: A client on the server.
        project: The project's ID.

    Returns:
        Each with ``tag`` (StudyInstanceUID), ``label`` and ``status``; [] when the server has no
        such table or refuses the listing (older XNAT, another body shape).
    """
    body = json.dumps({"filters": {"project": {"operator": "EQ", "value": project}}}).encode()
    try:
        response = client.request(
            "POST", "/xapi/direct-archive", content=body, headers={"Content-Type": "application/json"}, retry=False
        )
        rows = response.json()
    except (XnatError, ValueError):
        return []
    if not isinstance(rows, list):
        return []
    return [{k: "" if v is None else str(v) for k, v in row.items()} for row in rows if isinstance(row, dict)]


def trigger_direct_archive(client: XnatClient, uri: str) -> bool:
    """Ask XNAT to build and archive a Direct-Archive session now rather than after its idle interval.

    ``POST /xapi/direct-archive/{project}/{tag}/{label}`` (XNAT 1.8.4+,
    ``DirectArchiveSessionApi.triggerArchive``; the archiving itself is asynchronous). When XNAT
    does not queue it, it archives the session after the idle interval as usual, so this never
    fails an upload.

    Args:
        client: A client on the server.
        uri: The Direct-Archive session's URI, as the import answered it.

    Returns:
        True when XNAT queued it. False, with the reason logged, when it did not: the session is
        already archived or fell back to the prearchive (404), another request is still writing
        into it (400), an older XNAT has no such call, or the call failed.
    """
    if not uri.startswith("/xapi/direct-archive/"):
        raise ValueError(f"not a Direct-Archive session URI: {uri!r}")
    try:
        client.request("POST", uri)
    except XnatError as exc:
        log.info("XNAT did not archive %s at once (%s); it archives it after its idle interval", uri, exc)
        return False
    return True


def session_logs(client: XnatClient, project: str, timestamp: str, folder: str) -> list[str]:
    """The session's log entries (why it is in ERROR or CONFLICT), oldest first.

    Args:
        client: A client on the server.
        project: The project's ID.
        timestamp: The session's prearchive timestamp folder.
        folder: The session's folder name.

    Returns:
        The entries; [] if unavailable.
    """
    try:
        rows = client.get_rows(session_path(project, timestamp, folder) + "/logs")
    except XnatError:
        return []
    return [row.get("entry", "") for row in rows if row.get("entry")]


class ParkedSession(BaseModel):
    """A prearchive session XNAT did not archive, with what it meets.

    CONFLICT: it meets an archived session it may not join on its own; ERROR: building or
    archiving failed; READY: a project that archives by hand keeps it for a person. With it: the
    archived session of its label and that session's subject, and XNAT's log of the session.
    """

    session: PrearchiveSession
    logs: list[str] = Field(default_factory=list)
    existing: ArchivedSession | None = None
    existing_subject: str = Field(default="", description="Subject label of the archived session ('' if unknown)")

    def describe(self) -> str:
        """The facts: the row, what it conflicts with, and XNAT's last log line.

        Returns:
            One paragraph of text.
        """
        row = self.session
        text = f"{row.src} is {row.status} (study {row.tag or '?'}, subject {row.subject or '?'}, label {row.name})"
        existing = self.existing
        if existing is not None:
            study = "the same study" if existing.uid and existing.uid == row.tag else f"study {existing.uid or '?'}"
            subject = self.existing_subject or existing.subject_id
            patient = f", patient {existing.patient_id}" if existing.patient_id else ""
            meets = "it waits beside" if row.status == READY else "it conflicts with"
            text += (
                f"; {meets} {existing.project}/{subject}/{existing.label} ({existing.experiment_id}), "
                f"which holds {study}{patient}"
            )
        if self.logs:
            text += f"; XNAT's log: {self.logs[-1]}"
        return text

    def next_steps(self, for_flow_run: bool = False) -> str:
        """What a person can do after looking.

        Args:
            for_flow_run: Word it as the prearchive flow's parameters (chosen by the Prefect layer that
                calls it) instead of the CLI's commands.

        Returns:
            The commands (or parameters) that archive the session into its label or delete it.
        """
        row = self.session
        where = f"{row.project} {row.timestamp} {row.folder_name}"
        own_label = study_label(row.name, row.tag) if row.tag else f"{row.name}_2"
        keep = f"xnat-flows prearchive archive {where} -S {row.subject or 'SUBJECT'} -E {own_label}"
        drop = f"xnat-flows prearchive delete {where}"
        if row.status == ERROR:
            cli = f"Read XNAT's log of it, then delete it (`{drop}`) and upload again, or archive it (`{keep}`)"
        else:
            cli = f"After looking, keep it as a session of its own (`{keep}`) or delete this copy (`{drop}`)"
        flow = (
            f"After looking, archive prearchive session {row.project}/{row.timestamp}/{row.folder_name} under a "
            f"label of its own (archive-prearchive-session, label {own_label}) or delete it in XNAT's prearchive"
        )
        return flow if for_flow_run else cli


def parked_session(client: XnatClient, session: PrearchiveSession) -> ParkedSession:
    """``session`` with XNAT's log of it and the archived session of its label (and that one's subject).

    Args:
        client: A client on the server.
        session: The prearchive session XNAT did not archive.

    Returns:
        The session with what it meets.
    """
    existing = find_archived(client, session.project, session.name) if session.name else None
    subject = subject_label(client, session.project, existing.subject_id) if existing and existing.subject_id else ""
    logs = session_logs(client, session.project, session.timestamp, session.folder_name)
    return ParkedSession(session=session, logs=logs, existing=existing, existing_subject=subject)


# ------------------------------------------------------------------------- 200 bodies with errors

# What a successful archive answers: the archived experiment's URI.
_ARCHIVED_URI = re.compile(r"(?:/data)?/(?:archive/projects/\S+?/)?experiments/[^\s/]+")
_CONFLICT_WORDS = re.compile(r"already exists|conflict", re.IGNORECASE)
_FAILURE_WORDS = re.compile(r"error|exception|failed|failure|not allowed|denied", re.IGNORECASE)


def uri_from_success_body(body: str, action: str, success_uri: re.Pattern[str] | None = None) -> str | None:
    """The ``success_uri`` named in a 2xx/3xx body, raising if XNAT actually reported a failure in it.

    XNAT answers some failed prearchive actions with HTTP 200 and an error message as the body.
    A body naming the expected kind of URI is a success (an error message may quote the
    *source* URI, so any URI would not do); otherwise error-shaped text is a failure.

    Args:
        body: The answer's body.
        action: What was asked (for the error's message).
        success_uri: A pattern matching the URI a success names.

    Returns:
        The URI, or None when the body names none and reports no failure.

    Raises:
        ConflictError: The body says XNAT refused for a conflict.
        XnatError: The body reports another failure.
    """
    text = body.strip()
    match = success_uri.search(text) if success_uri else None
    if match:
        return match.group(0)
    if _CONFLICT_WORDS.search(text):
        raise ConflictError(
            f"XNAT refused to {action} (HTTP 200 with an error body)", status=200, server_message=text[:500]
        )
    if _FAILURE_WORDS.search(text):
        raise XnatError(f"XNAT failed to {action} (HTTP 200 with an error body)", status=200, server_message=text[:500])
    return None


# --------------------------------------------------------------------------------------- archive


def archive_session(
    client: XnatClient,
    project: str,
    timestamp: str,
    folder: str,
    *,
    subject: str | None = None,
    label: str | None = None,
    overwrite: ArchiveOverwrite | None = None,
    overwrite_files: bool = False,
    wait_seconds: float = 300.0,
    poll_seconds: float = 2.0,
    on_wait: WaitCallback | None = None,
) -> ArchiveOutcome:
    """Archive one prearchive session, optionally to ``subject``/``label``.

    READY is archived at once; transient statuses are waited for; ERROR raises
    ``PrearchiveSessionFailed`` with the session's logs. A session already gone from the
    prearchive but present in the archive is reported as ``already_archived`` (re-running an
    archive is then harmless).

    Args:
        client: A client on the server.
        project: The project's ID.
        timestamp: The session's prearchive timestamp folder.
        folder: The session's folder name.
        subject: The subject to archive it under (XNAT's choice when None).
        label: The session label to archive it as (XNAT's choice when None).
        overwrite: What CONFLICT needs: ``append`` merges, ``delete`` replaces overlapping files.
        overwrite_files: Let ``append`` re-write files the session already holds, keeping its
            study and subject checks.
        wait_seconds: How long to wait at most for a transient status to end.
        poll_seconds: The wait between looks at the status.
        on_wait: Told what is awaited at each look.

    Returns:
        What was done: where the session is archived, its status before, the wait.

    Raises:
        PrearchiveSessionFailed: The session is in ERROR.
        ConflictError: The session is in CONFLICT and no ``overwrite`` was given.
    """
    notify = on_wait or log.info
    started = time.monotonic()
    deadline = started + wait_seconds
    transient_failures = 0
    last_notice: tuple[str, int] | None = None
    while True:
        try:
            session = get_session(client, project, timestamp, folder)
        except NotFoundError:
            return _already_archived(client, project, timestamp, folder, label or folder, subject, started)
        _raise_if_blocked(client, session, overwrite)
        status = session.status
        if status in (READY, CONFLICT):
            try:
                uri = _post_archive(
                    client,
                    session,
                    subject=subject or None,
                    label=label or None,
                    overwrite=overwrite,
                    overwrite_files=overwrite_files,
                )
            except PermissionDeniedError as exc:
                # XNAT answers 403 "Operation already in progress" while another archive runs: wait it out.
                if "in progress" not in str(exc).lower():
                    raise
                status = "ARCHIVING (in progress elsewhere)"
            except TransientError as exc:
                # 423 "Duplicate archive attempt", or the answer was lost (a big archive can outlive
                # the connection): XNAT may have archived anyway, so look again instead of failing.
                transient_failures += 1
                if transient_failures > _MAX_TRANSIENT_ARCHIVE_FAILURES:
                    raise
                status = f"{status} (archive request failed: {exc.message})"
            except NotFoundError:
                return _already_archived(
                    client,
                    project,
                    timestamp,
                    folder,
                    label or session.name or folder,
                    subject,
                    started,
                    expected_uid=session.tag,
                )
            else:
                final_label = label or session.name or folder
                if uri is None:
                    # A 2xx without a URI (e.g. a redirect without Location): take it from the archive.
                    found = find_archived(client, project, final_label)
                    uri = found.uri if found else None
                return ArchiveOutcome(
                    project=project,
                    timestamp=timestamp,
                    folder_name=folder,
                    label=final_label,
                    subject=subject or session.subject or None,
                    archive_uri=uri,
                    overwrite=overwrite,
                    status_before=status,
                    waited_seconds=round(time.monotonic() - started, 3),
                )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeoutError(
                f"Prearchive session {session.src} is still {status} after {wait_seconds:g} s.",
                hint="XNAT builds a session once no file has arrived for a while; wait longer or check the upload.",
                reason="prearchive-still-building",
            )
        notice = (status, int((time.monotonic() - started) // _NOTIFY_EVERY_SECONDS))
        if notice != last_notice:  # say so when the status changes, and every half minute while it does not
            last_notice = notice
            notify(f"Prearchive session {session.src} is {status}; waiting ({remaining:.0f} s left)")
        time.sleep(min(poll_seconds, remaining))


def _raise_if_blocked(client: XnatClient, session: PrearchiveSession, overwrite: ArchiveOverwrite | None) -> None:
    """Raise for a session that waiting will not make archivable: ERROR, CONFLICT without a merge choice, unknown."""
    status = session.status
    if status == ERROR:
        logs = session_logs(client, session.project, session.timestamp, session.folder_name)
        raise PrearchiveSessionFailed(
            f"Prearchive session {session.src} is in status ERROR" + ("" if logs else " (XNAT logged no reason)"),
            logs=logs,
        )
    if status == CONFLICT and overwrite is None:
        raise ConflictError(
            f"Prearchive session {session.src} conflicts with a session already in the archive.",
            status=409,
            hint="Choose how to merge it: overwrite 'append' adds scans and files, 'delete' also replaces "
            "overlapping files",
            reason="prearchive-conflict",
        )
    if status not in (READY, CONFLICT) and not is_transient_status(status):
        raise XnatError(f"Prearchive session {session.src} has status {status!r}, which cannot be archived.")


def _post_archive(
    client: XnatClient,
    session: PrearchiveSession,
    *,
    subject: str | None,
    label: str | None,
    overwrite: ArchiveOverwrite | None,
    overwrite_files: bool = False,
) -> str | None:
    form = {"src": session.src}
    if subject or label:
        # The archive needs a subject in dest whenever a label is set: fall back to the row's subject.
        dest_subject = subject or session.subject
        if not dest_subject:
            raise XnatError(f"Cannot set a label for {session.src}: it has no subject; pass one.")
        dest = f"/archive/projects/{quote(session.project, safe='')}/subjects/{quote(dest_subject, safe='')}"
        if label:
            dest += f"/experiments/{quote(label, safe='')}"
        form["dest"] = dest
    if overwrite:
        form["overwrite"] = overwrite
    if overwrite_files:
        form["overwrite_files"] = "true"
    response = client.request(
        "POST",
        "/data/services/archive",
        content=urlencode(form).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    location = response.headers.get("Location")
    if response.status_code in (301, 302, 303) and location:
        return location
    return uri_from_success_body(response.text, f"archive {session.src}", _ARCHIVED_URI)


def _already_archived(
    client: XnatClient,
    project: str,
    timestamp: str,
    folder: str,
    label: str,
    subject: str | None,
    started: float,
    expected_uid: str = "",
) -> ArchiveOutcome:
    """The prearchive has no such session: success if the archive has it, else a clear 404.

    When the study UID is known, the archived session must carry it: the same label on another
    study is not "our" session having been archived.

    Returns:
        The outcome, ``already_archived``.
    """
    found = find_archived(client, project, label)
    if found is not None and expected_uid and found.uid and found.uid != expected_uid:
        raise NotFoundError(
            f"Prearchive session {prearchive_src(project, timestamp, folder)} is gone, and the archived session "
            f"{project}/{label} holds another study ({found.uid}).",
            status=404,
        )
    if found is None:
        raise NotFoundError(
            f"Prearchive session {prearchive_src(project, timestamp, folder)} does not exist, "
            f"and project {project!r} has no archived session labelled {label!r}.",
            status=404,
            hint="Look up the right timestamp and folder name in the project's prearchive.",
            reason="prearchive-session-missing",
        )
    return ArchiveOutcome(
        project=project,
        timestamp=timestamp,
        folder_name=folder,
        label=found.label,
        subject=subject,  # the archive document names the subject by ID only
        archive_uri=found.uri,
        already_archived=True,
        waited_seconds=round(time.monotonic() - started, 3),
    )


# ---------------------------------------------------------------------------------- delete, move


def delete_session(client: XnatClient, project: str, timestamp: str, folder: str) -> None:
    """Delete a prearchive session (``NotFoundError`` if it is not there).

    Args:
        client: A client on the server.
        project: The project's ID.
        timestamp: The session's prearchive timestamp folder.
        folder: The session's folder name.
    """
    response = client.request("DELETE", session_path(project, timestamp, folder))
    uri_from_success_body(response.text, f"delete {prearchive_src(project, timestamp, folder)}")


def move_session(client: XnatClient, project: str, timestamp: str, folder: str, new_project: str) -> str:
    """Move a prearchive session to another project's prearchive.

    XNAT answers a successful move with 301 and the new URI as the body, not with 200.

    Args:
        client: A client on the server.
        project: The project's ID.
        timestamp: The session's prearchive timestamp folder.
        folder: The session's folder name.
        new_project: The project to move it to.

    Returns:
        The session's new prearchive URI.
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


__all__ = [
    "CONFLICT",
    "ERROR",
    "READY",
    "ArchiveOutcome",
    "ArchivedSession",
    "ArchiveOverwrite",
    "ParkedSession",
    "PrearchiveSession",
    "PrearchiveSessionFailed",
    "WaitCallback",
    "WaitTimeoutError",
    "archive_session",
    "delete_session",
    "direct_archive_sessions",
    "find_archived",
    "get_session",
    "is_transient_status",
    "list_sessions",
    "move_session",
    "parked_session",
    "prearchive_src",
    "session_logs",
    "session_path",
    "trigger_direct_archive",
    "uri_from_success_body",
]
