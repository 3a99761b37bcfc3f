"""XNAT's archive, read side: labels, the single-object session document, finding a session.

The read model every layer above shares (transfer's verifier and resume check, manage, the
flows and the CLI), so the document shape ``{"items": [{"data_fields": {...}, "children": [...]}]}``
(XNAT's ``format=json`` for one object) and the label rule are parsed in one place.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import quote

from pydantic import BaseModel, Field

from xnat_flows.client.errors import NotFoundError, TransientError, XnatError

if TYPE_CHECKING:  # the label rule is used by layers that never open a connection (routing)
    from xnat_flows.client.client import XnatClient

log = logging.getLogger(__name__)

# XNAT labels (project, subject, session) may hold only these characters; XNAT silently
# rewrites anything else to "_" (XNAT's XnatExperimentdata label validation).
LABEL_RE = re.compile(r"[A-Za-z0-9_-]+")
NOT_LABEL_CHAR = re.compile(r"[^A-Za-z0-9_-]")


def is_valid_label(value: object) -> bool:
    """Whether ``value`` is a label XNAT keeps as it is (``[A-Za-z0-9_-]+``)."""
    return isinstance(value, str) and LABEL_RE.fullmatch(value) is not None


def clean_label(value: str) -> str:
    """XNAT's own rewriting of labels: every character outside ``[A-Za-z0-9_-]`` becomes ``_``.

    Args:
        value: A label as given.

    Returns:
        The label XNAT would store.
    """
    return NOT_LABEL_CHAR.sub("_", value.strip())


def study_label(session: str, study_uid: str) -> str:
    """The session label of one study of a ``--per-study`` upload.

    ``SESSION_`` and 8 hex digits derived from the StudyInstanceUID, so a study keeps its label
    whatever else the folder holds.

    Args:
        session: The label given for the upload (``-E``).
        study_uid: The study's StudyInstanceUID.

    Returns:
        The study's session label.
    """
    return f"{session}_{hashlib.sha256(study_uid.encode()).hexdigest()[:8]}"


class WaitTimeoutError(TransientError):
    """A bounded wait ran out (the session kept receiving/building, or never reached the archive)."""


def item_fields(document: object) -> dict[str, str]:
    """``data_fields`` of XNAT's ``{"items": [{"data_fields": {...}}]}`` single-object shape.

    Args:
        document: XNAT's JSON document of one object.

    Returns:
        The fields, or {} if absent.
    """
    try:
        return {str(k): "" if v is None else str(v) for k, v in document["items"][0]["data_fields"].items()}  # type: ignore[index]
    except (KeyError, IndexError, TypeError, AttributeError):
        return {}


def _children(item: object, field_name: str) -> list[dict]:
    children = item.get("children") if isinstance(item, dict) else None
    for child in children or []:
        if isinstance(child, dict) and child.get("field") == field_name:
            return list(child.get("items") or [])
    return []


class ArchivedScan(BaseModel):
    """One scan of an archived session, as XNAT's session document lists it."""

    id: str = Field(description="XNAT's scan ID: the SeriesNumber, or e.g. '5-MR1' for a second series numbered 5")
    uid: str = Field(default="", description="SeriesInstanceUID ('' when XNAT did not record one)")
    type: str = ""
    series_description: str = ""
    frames: int | None = Field(default=None, description="Number of frames (images) XNAT counted in the scan")
    modality: str = ""


class ArchivedSession(BaseModel):
    """A session found in the archive."""

    project: str
    label: str
    experiment_id: str = ""
    subject_id: str = ""
    uid: str = Field(default="", description="StudyInstanceUID")
    patient_id: str = Field(default="", description="DICOM PatientID XNAT recorded (dcmPatientId), '' if none")
    uri: str = ""
    scans: list[ArchivedScan] = Field(default_factory=list)


def experiment_path(project: str, label: str, subject: str | None = None) -> str:
    """The REST path of session ``label`` of ``project`` (under ``subject`` when given).

    Args:
        project: The project's ID.
        label: The session's label.
        subject: The subject's label, if the path should name it.

    Returns:
        The path, each part quoted.
    """
    base = f"/data/projects/{quote(project, safe='')}"
    if subject:
        base += f"/subjects/{quote(subject, safe='')}"
    return f"{base}/experiments/{quote(label, safe='')}"


def parse_session_document(document: object, project: str, label: str) -> ArchivedSession | None:
    """The session (with its scans and their SeriesInstanceUIDs) from XNAT's document.

    Args:
        document: XNAT's JSON document of the session.
        project: The project it was asked for under.
        label: The label it was asked for by.

    Returns:
        The session, or None when the document holds none.
    """
    fields = item_fields(document)
    experiment_id = fields.get("ID", "")
    if not experiment_id:
        return None
    item = document["items"][0]  # type: ignore[index]
    scans = [
        ArchivedScan(
            id=str(f.get("ID", "")),
            uid=str(f.get("UID") or ""),
            type=str(f.get("type") or ""),
            series_description=str(f.get("series_description") or ""),
            frames=_count(f.get("frames")),
            modality=str(f.get("modality") or ""),
        )
        for f in (s.get("data_fields") or {} for s in _children(item, "scans/scan"))
        if f.get("ID") not in (None, "")
    ]
    return ArchivedSession(
        project=fields.get("project") or project,
        label=fields.get("label") or label,
        experiment_id=experiment_id,
        subject_id=fields.get("subject_ID", ""),
        uid=fields.get("UID", ""),
        patient_id=fields.get("dcmPatientId", ""),
        uri=f"/data/experiments/{experiment_id}",
        scans=scans,
    )


def _count(value: object) -> int | None:
    """A count XNAT may give as a number, a string, or not at all."""
    try:
        return int(str(value))
    except ValueError:
        return None


def find_archived(client: XnatClient, project: str, label: str, subject: str | None = None) -> ArchivedSession | None:
    """The archived session labelled ``label`` in ``project`` (and ``subject`` if given).

    Args:
        client: A client on the server.
        project: The project's ID.
        label: The session's label.
        subject: The subject's label, if it must match.

    Returns:
        The session, or None.
    """
    try:
        document = client.get_json(experiment_path(project, label, subject))
    except NotFoundError:
        return None
    return parse_session_document(document, project, label)


def archived_studies(client: XnatClient, project: str | None = None) -> dict[str, dict[str, str]]:
    """The archived sessions of ``project``, each by its StudyInstanceUID.

    A C-STORE names no session label (XNAT's routing picks it), so its sessions are found this way.

    Args:
        client: A client on the server.
        project: The project's ID; every project the account sees when None.

    Returns:
        The experiment listing's row (ID, label, project, subject_label, UID, URI) by StudyInstanceUID.
    """
    path = f"/data/projects/{quote(project, safe='')}/experiments" if project else "/data/experiments"
    found: dict[str, dict[str, str]] = {}
    for row in client.get_rows(path, params={"columns": "ID,label,project,subject_label,UID,URI"}):
        uid = row.get("UID")
        if uid is None:  # a listing without the UID column: the session document has it
            uid = item_fields(client.get_json(f"/data/experiments/{row.get('ID')}")).get("UID", "")
        if uid:
            found[uid] = row
    return found


def subject_label(client: XnatClient, project: str, subject_id: str) -> str:
    """The label of subject ``subject_id`` (a session document names its subject by ID).

    Args:
        client: A client on the server.
        project: The project's ID.
        subject_id: The subject's accession ID.

    Returns:
        The label, or '' if unknown.
    """
    try:
        document = client.get_json(f"/data/projects/{quote(project, safe='')}/subjects/{quote(subject_id, safe='')}")
    except XnatError:
        return ""
    return item_fields(document).get("label", "")


def experiment_id(client: XnatClient, project: str, label: str) -> str:
    """The accession ID (``XNAT_E00001``) of session ``label``.

    Args:
        client: A client on the server.
        project: The project's ID.
        label: The session's label.

    Returns:
        The accession ID.

    Raises:
        NotFoundError: There is no such session.
    """
    found = find_archived(client, project, label)
    if found is None:
        raise NotFoundError(f"Project {project!r} has no session {label!r}.", status=404)
    return found.experiment_id


def wait_for_archive(
    client: XnatClient,
    project: str,
    label: str,
    *,
    subject: str | None = None,
    timeout: float = 600.0,
    poll: float = 2.0,
    max_poll: float = 30.0,
    on_wait: Callable[[str], None] | None = None,
) -> ArchivedSession:
    """Poll until ``label`` appears in the archive of ``project``, backing off from ``poll`` to ``max_poll``.

    Imports and archiving are asynchronous in XNAT (the upload answers before the session is
    queryable), so anything that follows an upload should wait here first.

    Args:
        client: A client on the server.
        project: The project's ID.
        label: The session's label.
        subject: The subject's label, if it must match.
        timeout: Seconds to wait at most.
        poll: The first wait between looks, in seconds.
        max_poll: The longest wait between looks.
        on_wait: Told what is awaited at each look (the log by default).

    Returns:
        The archived session.

    Raises:
        WaitTimeoutError: The session did not appear within ``timeout``.
    """
    notify = on_wait or log.info
    deadline = time.monotonic() + timeout
    interval = poll
    while True:
        found = find_archived(client, project, label, subject)
        if found is not None:
            return found
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeoutError(
                f"Session {label!r} did not appear in the archive of project {project!r} within {timeout:g} s.",
                hint="Check the project's prearchive for a session stuck in RECEIVING, CONFLICT or ERROR.",
                reason="archive-wait-timeout",
            )
        notify(f"Waiting for {project}/{label} to appear in the archive ({remaining:.0f} s left)")
        time.sleep(min(interval, remaining))
        interval = min(interval * 1.5, max_poll)


def get_session(client: XnatClient, experiment_id: str) -> ArchivedSession:
    """The archived session of accession ID ``experiment_id``.

    Args:
        client: A client on the server.
        experiment_id: The session's accession ID.

    Returns:
        The session.

    Raises:
        NotFoundError: There is no such session.
    """
    path = f"/data/experiments/{quote(experiment_id, safe='')}"
    found = parse_session_document(client.get_json(path), "", experiment_id)
    if found is None:
        raise NotFoundError(f"No session {experiment_id!r} on {client.base_url}.", status=404)
    return found


def resolve_session(client: XnatClient, ref: str) -> ArchivedSession:
    """A session named as users name it.

    Args:
        client: A client on the server.
        ref: An accession ID (``XNAT_E00001``), ``PROJECT/LABEL`` or ``PROJECT/SUBJECT/LABEL``.

    Returns:
        The session.

    Raises:
        NotFoundError: There is none (the message says what to check).
    """
    parts = [part for part in ref.strip().split("/") if part]
    if len(parts) == 1:
        try:
            return get_session(client, parts[0])
        except NotFoundError:
            raise NotFoundError(
                f"No session with accession ID {parts[0]!r} on {client.base_url}.",
                status=404,
                hint="Give the experiment's accession ID (e.g. XNAT_E00001), or PROJECT/SUBJECT/SESSION with labels",
            ) from None
    if len(parts) in (2, 3):
        project, label = parts[0], parts[-1]
        subject = parts[1] if len(parts) == 3 else None
        found = find_archived(client, project, label, subject)
        if found is None:
            where = f"{project}/{subject}" if subject else project
            raise NotFoundError(
                f"No archived session {label!r} in {where} on {client.base_url}.",
                status=404,
                hint="Check the labels (case-sensitive), or look in the prearchive: it is not archived yet",
            )
        return found
    raise NotFoundError(f"{ref!r} names no session: give an accession ID or PROJECT/SUBJECT/SESSION.", status=404)
