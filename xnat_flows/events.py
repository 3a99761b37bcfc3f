"""Prefect events about XNAT sessions, for automations and deployment triggers to react to.

Event names:

* ``xnat.session.uploaded``: a session's files were sent and (when verified) found on the server.
* ``xnat.session.archived``: a session is in the archive (Direct-Archive upload, or archived
  from the prearchive). Processing triggers on this one: it fires once whichever path the data took,
  and once per arrival of data (``announce_archived``): a run that finds the same files in the same
  session again (a re-run whose data an earlier run delivered and announced) does not announce them twice.
* ``xnat.upload.failed``: a session could not be uploaded (the payload says why).
* ``xnat.session.processed``: processing attached results to a session (the payload names the
  resources and files it produced); emitted by the ``process-xnat-session`` flow.

The resource names the session on its server, so triggers can match one project or server::

    {"prefect.resource.id": "xnat.session.<host:port>.<project>.<experiment ID or label>",
     "xnat.server": ..., "xnat.project": ..., "xnat.subject": ..., "xnat.experiment_id": ...,
     "xnat.session_label": ..., "xnat.uri": ...}

Nothing secret goes into an event: URLs lose any user-info and query, error texts are redacted.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from xnat_flows.client.urls import public_base_url, server_host

if TYPE_CHECKING:  # keep importing this module cheap: models are only needed for annotations
    from prefect.events import Event

    from xnat_flows.client.prearchive import ArchiveOutcome
    from xnat_flows.transfer.journal import UploadJournal
    from xnat_flows.transfer.scan import DicomFile
    from xnat_flows.transfer.upload_result import SessionResult, UploadResult

SESSION_UPLOADED = "xnat.session.uploaded"
SESSION_ARCHIVED = "xnat.session.archived"
UPLOAD_FAILED = "xnat.upload.failed"
SESSION_PROCESSED = "xnat.session.processed"
RESOURCE_PREFIX = "xnat.session"

_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
_SECRET_PAIR = re.compile(r"(?i)\b(password|passwd|pass|token|secret|jsessionid|authorization)\b(\s*[=:]\s*)(\S+)")
_MAX_ERROR_CHARS = 2000


@dataclass(frozen=True)
class SessionRef:
    """Which session an event is about."""

    server_url: str
    project: str
    subject: str | None = None
    session_label: str | None = None
    experiment_id: str | None = None
    uri: str | None = None  # a path (/data/experiments/XNAT_E00001) or a full URL


def absolute_uri(server_url: str, uri: str | None) -> str | None:
    if not uri:
        return None
    if "://" in uri:
        return public_base_url(uri)
    return public_base_url(server_url) + "/" + uri.lstrip("/")


def redact(text: str) -> str:
    """Remove credentials a message might quote (URL user-info, ``password=...``), and cap its size."""
    text = _USERINFO.sub("***@", text)
    text = _SECRET_PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS] + "..."


def session_resource(ref: SessionRef) -> dict[str, str]:
    """The event resource for a session (labels only; Prefect resources hold strings, so unset fields are left out)."""
    name = ref.experiment_id or ref.session_label or "unknown"
    resource = {
        "prefect.resource.id": f"{RESOURCE_PREFIX}.{server_host(ref.server_url)}.{ref.project}.{name}",
        "prefect.resource.name": f"{ref.project}/{ref.subject or '?'}/{ref.session_label or name}",
        "xnat.server": public_base_url(ref.server_url),
        "xnat.project": ref.project,
        "xnat.subject": ref.subject,
        "xnat.experiment_id": ref.experiment_id,
        "xnat.session_label": ref.session_label,
        "xnat.uri": absolute_uri(ref.server_url, ref.uri),
    }
    return {key: value for key, value in resource.items() if value}


def emit_session_event(
    event: str,
    ref: SessionRef,
    payload: Mapping[str, Any] | None = None,
    follows: Event | None = None,
    event_id: uuid.UUID | None = None,
) -> Event | None:
    """Emit one session event; returns it, or None where events are off (no API, or a bare ``.fn()`` call)."""
    from prefect.events import emit_event

    return emit_event(
        event=event, resource=session_resource(ref), payload=dict(payload or {}), follows=follows, id=event_id
    )


# The upload journal's record of announced arrivals, one per server (``resume_key(server, ANNOUNCED)``).
ANNOUNCED = "xnat.session.archived"
_ARRIVAL_NAMESPACE = uuid.UUID("6f1d2c1e-5b7a-4c39-9f0e-2a8d4b6c7e10")


def arrival(files: Iterable[DicomFile]) -> str:
    """What arrived in a session: the journal's content digest of its files (paths relative to the
    source directory, sizes, modification times, SOP Instance UIDs), in a fixed order."""
    from xnat_flows.transfer.journal import content_digest

    return content_digest(sorted(files, key=lambda f: (f.relpath, f.sop_instance_uid)))


def announce_archived(
    ref: SessionRef,
    arrived: str,
    payload: Mapping[str, Any] | None = None,
    follows: Event | None = None,
    journal: UploadJournal | None = None,
) -> Event | None:
    """``xnat.session.archived`` once per arrival: ``arrived`` (``arrival(files)``) in this session.

    A run that finds files in the archive which an earlier run delivered and already announced
    (a re-run whose journal says everything was delivered, a re-upload of the same files) emits
    nothing, so processing is not started twice for the same data; new or changed files are a new
    arrival and are announced. The record is kept in the upload journal of this host. The event's
    id is derived from the session and the arrival, so Prefect also stores (and its triggers
    act on) one event where two hosts announce the same arrival.
    """
    from xnat_flows.transfer.journal import UploadJournal, resume_key

    journal = journal if journal is not None else UploadJournal()
    resource_id = session_resource(ref)["prefect.resource.id"]
    record = resume_key(ref.server_url, ANNOUNCED)
    mark = hashlib.sha256(f"{resource_id}\0{arrived}".encode()).hexdigest()
    if mark in journal.done(record):
        _run_logger().info(
            "%s is in the archive with the same files an earlier run announced: xnat.session.archived not emitted again",
            session_resource(ref)["prefect.resource.name"],
        )
        return None
    event = emit_session_event(
        SESSION_ARCHIVED,
        ref,
        payload,
        follows=follows,
        event_id=uuid.uuid5(_ARRIVAL_NAMESPACE, f"{resource_id}|{arrived}"),
    )
    if event is not None:
        journal.record(record, mark)
    return event


def _run_logger() -> Any:
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_logger, get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger("xnat_flows.events")


def outcome_ref(outcome: SessionResult, server_url: str) -> SessionRef:
    return SessionRef(
        server_url=server_url,
        project=outcome.project,
        subject=outcome.subject,
        session_label=outcome.session,
        experiment_id=outcome.experiment_id,
        uri=outcome.session_uri,
    )


def emit_session_uploaded(
    outcome: SessionResult,
    server_url: str,
    *,
    direct_archive: bool = True,
    transport: str | None = None,
    arrived: str | None = None,
) -> list[Event]:
    """After one session of an upload succeeded: ``xnat.session.uploaded``, and also
    ``xnat.session.archived`` when verification found it in the archive with an experiment ID
    (Direct-Archive, or a prearchive upload that the project's auto-archive took in), so
    archive-triggered processing needs no second path. A session verification found only in the
    prearchive gets its ``archived`` event from whatever archives it later. With ``arrived``
    (``arrival(files)``), ``archived`` is emitted once per arrival (``announce_archived``)."""
    ref = outcome_ref(outcome, server_url)
    payload = {
        "files_delivered": outcome.files_delivered,
        "files_sent": outcome.files_sent,
        "bytes_sent": outcome.bytes_sent,
        "verified": outcome.verified,
        "study_uid": outcome.study_uid,
        "direct_archive": direct_archive,
        "transport": transport,
    }
    emitted = [e for e in [emit_session_event(SESSION_UPLOADED, ref, payload)] if e is not None]
    if outcome.verified and outcome.experiment_id:
        via = "direct-archive" if direct_archive else "auto-archive"
        leader = emitted[0] if emitted else None
        archived = (
            announce_archived(ref, arrived, {"via": via}, follows=leader)
            if arrived is not None
            else emit_session_event(SESSION_ARCHIVED, ref, {"via": via}, follows=leader)
        )
        if archived is not None:
            emitted.append(archived)
    return emitted


def emit_session_archived(
    server_url: str,
    project: str,
    subject: str | None,
    session_label: str | None,
    experiment_id: str | None = None,
    uri: str | None = None,
    via: str = "prearchive",
) -> Event | None:
    """A session reached the archive (e.g. the ``archive-prearchive-session`` flow's outcome)."""
    ref = SessionRef(server_url, project, subject, session_label, experiment_id, uri)
    return emit_session_event(SESSION_ARCHIVED, ref, {"via": via})


def emit_upload_failed(
    server_url: str,
    project: str,
    subject: str | None,
    session_label: str | None,
    error: BaseException | str,
    *,
    source: str | None = None,
    files_failed: int | None = None,
) -> Event | None:
    """An upload did not complete; the payload carries the (redacted) error and where the data is."""
    message = str(error) if isinstance(error, str) else f"{type(error).__name__}: {error}"
    payload = {"error": redact(message), "source": source, "files_failed": files_failed}
    ref = SessionRef(server_url, project, subject, session_label)
    return emit_session_event(UPLOAD_FAILED, ref, {k: v for k, v in payload.items() if v is not None})


def emit_upload_result(
    result: UploadResult,
    server_url: str,
    *,
    direct_archive: bool,
    transport: str | None = None,
    source: str | None = None,
    arrivals: Mapping[str, str] | None = None,
) -> list[Event]:
    """All events of one ``upload-dicom-session`` run: per session, uploaded (+ archived, once per
    arrival: ``arrivals`` maps a session label to ``arrival(files)``), or failed when files did not
    land or verification found some missing."""
    emitted: list[Event] = []
    for outcome in result.sessions:
        if outcome.failed_files or outcome.verified is False:
            missing = len(outcome.failed_files) or len(outcome.missing)
            reason = f"{missing} file(s) not in XNAT after the upload" + (
                f", e.g. {outcome.failed_files[:3]}"
                if outcome.failed_files
                else f" (verification: {outcome.missing[:3]})"
            )
            event = emit_upload_failed(
                server_url,
                outcome.project,
                outcome.subject,
                outcome.session,
                reason,
                source=source,
                files_failed=missing,
            )
            emitted += [event] if event is not None else []
        else:
            emitted += emit_session_uploaded(
                outcome,
                server_url,
                direct_archive=direct_archive,
                transport=transport,
                arrived=(arrivals or {}).get(outcome.session),
            )
    return emitted


def emit_archive_outcome(outcome: ArchiveOutcome, server_url: str, experiment_id: str | None = None) -> Event | None:
    """``xnat.session.archived`` for what the ``archive-prearchive-session`` flow archived (with the
    experiment ID the flow looked up, so processing can address the session unambiguously)."""
    return emit_session_archived(
        server_url,
        outcome.project,
        outcome.subject,
        outcome.label,
        experiment_id=experiment_id,
        uri=outcome.archive_uri,
        via="prearchive",
    )


def emit_session_processed(ref: SessionRef, payload: Mapping[str, Any], follows: Event | None = None) -> Event | None:
    """``xnat.session.processed``: processing produced results and attached them to the session
    (``payload`` names them, e.g. ``{"produced": {"1": ["sub-..._T1w.nii.gz", ...]}, "resource": "NIFTI"}``)."""
    return emit_session_event(SESSION_PROCESSED, ref, payload, follows=follows)
