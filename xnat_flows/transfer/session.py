"""Upload a directory of DICOM as XNAT session(s): scan, plan, send, verify, resume.

This is the library-level upload (no Prefect): the CLI calls ``upload_session``, which runs the
one sequence of a REST upload (``sequence.sequence_upload``) with the steps on a client
(``ClientSteps``); the Prefect flow runs the same sequence with its tasks as the steps.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from xnat_flows.client.archive import archived_studies, find_archived, study_label, subject_label
from xnat_flows.client.client import XnatClient
from xnat_flows.client.errors import ConflictError, InputError, XnatError
from xnat_flows.client.prearchive import (
    CONFLICT,
    ERROR,
    ParkedSession,
    PrearchiveSession,
    direct_archive_sessions,
    is_transient_status,
    list_sessions,
    parked_session,
    trigger_direct_archive,
)
from xnat_flows.transfer.archive_stream import ArchiveFormat
from xnat_flows.transfer.claim import DEFAULT_CLAIM_WAIT_SECONDS, DestinationClaim, destination_name
from xnat_flows.transfer.deidentify import streamed_refusals, streamed_session
from xnat_flows.transfer.journal import ResumeState, UploadJournal, resume_key
from xnat_flows.transfer.partition import partition_by_bytes, partition_in_order
from xnat_flows.transfer.pool import interruptible_pool
from xnat_flows.transfer.progress import Progress, ProgressCallback
from xnat_flows.transfer.scan import DicomFile, ScanResult, SkippedFile, scan_directory
from xnat_flows.transfer.sequence import sequence_upload
from xnat_flows.transfer.target import UploadTarget
from xnat_flows.transfer.upload import upload_batch, upload_gradual
from xnat_flows.transfer.upload_result import BatchResult, GradualResult, UploadResult
from xnat_flows.transfer.verify import (
    VerifyResult,
    archived_complete,
    parked_rows,
    prearchive_snapshot,
    verify_session,
)

if TYPE_CHECKING:
    from xnat_flows.transfer.deidentify import Anonymizer

log = logging.getLogger(__name__)
T = TypeVar("T")


def plan_sessions(
    scan: ScanResult, target: UploadTarget, *, per_study: bool = False
) -> list[tuple[UploadTarget, list[DicomFile]]]:
    """(target, files) per session: one per StudyInstanceUID.

    Several studies need ``per_study`` (each becomes its own session, labelled by ``study_label`` —
    even when the folder holds one study today — so a study keeps its label whatever is added or
    removed beside it).

    Args:
        scan: The scanned folder.
        target: Where the upload goes (the session label of a single study).
        per_study: One session per StudyInstanceUID, each label suffixed by ``study_label``.

    Returns:
        The session's target and its files, one pair per session.
    """
    groups = scan.by_study()
    if per_study:
        return [(target.with_session(study_label(target.session, uid)), files) for uid, files in groups.items()]
    if len(groups) == 1:
        return [(target, next(iter(groups.values())))]
    listed = ", ".join(f"{uid} ({len(files)} files)" for uid, files in groups.items())
    raise InputError(
        f"{scan.root} holds {len(groups)} studies but one session label ({target.session}) was given; "
        f"StudyInstanceUIDs: {listed}",
        hint=f"Upload each study as its own session (per_study=True; labels get {target.session}_ and 8 hex "
        "digits of the study's UID), or point at one study's directory",
        reason="several-studies",
    )


def check_destination(
    client: XnatClient,
    target: UploadTarget,
    study_uid: str,
    *,
    allow_other_study: bool = False,
    per_study: bool = False,
    settle_seconds: float = 300.0,
) -> UploadTarget:
    """Refuse, before anything is sent, an upload that XNAT would park in CONFLICT or merge wrongly.

    Looks at the archive and at what XNAT is still receiving (Direct-Archive) or holds in the
    prearchive for this label:

    * the label holds, receives or stages another study: refused unless ``allow_other_study``
      (XNAT merges an upload into an existing session of the same label, and with
      ``overwrite=delete`` it does not compare the StudyInstanceUIDs);
    * the label holds this study under another subject: refused (XNAT refuses to move a session to
      another subject; ours would park in CONFLICT);
    * ``per_study``: the study is archived in the project under another label (a re-run with
      ``-E`` spelled differently would archive it a second time): refused, naming that label.

    A Direct-Archive session of this study and label that an earlier upload closed (archiving
    now) is waited for, at most ``settle_seconds``: files sent into it meanwhile would be parked.

    Args:
        client: A logged-in client.
        target: The planned destination.
        study_uid: The StudyInstanceUID being sent.
        allow_other_study: Upload even into a session that holds another study.
        per_study: The upload labels each study itself (``plan_sessions``).
        settle_seconds: The longest wait for a closed Direct-Archive session of this label.

    Returns:
        The target to use: with ``allow_other_study`` its overwrite becomes ``delete`` (XNAT refuses
        a change of study UID under ``append``).
    """
    where = f"{target.project}/{target.session}"
    _settle_closed_direct_archive(client, target, study_uid, settle_seconds)
    other: str | None = None
    existing = find_archived(client, target.project, target.session)
    same_study = existing is not None and (not existing.uid or existing.uid == study_uid)
    if existing is not None and not same_study:
        other = (
            f"Session {where} ({existing.experiment_id}) already holds another study (StudyInstanceUID {existing.uid})"
        )
    if (
        existing is not None
        and (same_study or allow_other_study)  # else the other study is the first thing to say
        and find_archived(client, target.project, target.session, target.subject) is None
    ):
        # XNAT refuses to move a session to another subject whatever the overwrite mode
        holder = subject_label(client, target.project, existing.subject_id) or existing.subject_id
        raise ConflictError(
            f"Session {where} ({existing.experiment_id}) holds {'this' if same_study else 'another'} study under "
            f"subject {holder!r}, not "
            f"{target.subject!r}: nothing was sent (XNAT never moves a session to another subject)",
            status=409,
            hint=f"Check the subject: to add to that session, give its subject; to keep this upload apart, "
            f"give it a label of its own. The project's prearchive and XNAT's session page show which subject "
            f"holds {target.session}",
            reason="other-subject",
        )
    for row in direct_archive_sessions(client, target.project):
        if row.get("label") != target.session:
            continue
        if row.get("tag") != study_uid and other is None:
            other = f"XNAT is receiving another study (StudyInstanceUID {row.get('tag')}) into {where}"
        elif row.get("tag") == study_uid and row.get("subject") and row["subject"] != target.subject:
            raise ConflictError(
                f"XNAT is receiving this study into {where} for subject {row['subject']!r}, not {target.subject!r}: "
                "nothing was sent",
                status=409,
                hint="Check the subject, or give this upload a label of its own",
                reason="other-subject-receiving",
            )
    if other is None:
        rows = _prearchive_rows_or_none(client, target.project)
        # rows XNAT may still archive into this label (parked ones, CONFLICT and ERROR, wait for a person)
        staged = [
            r
            for r in rows
            if r.name == target.session and r.tag and r.tag != study_uid and r.status not in (CONFLICT, ERROR)
        ]
        if staged:
            other = (
                f"The prearchive holds another study (StudyInstanceUID {staged[0].tag}) for {where} "
                f"({staged[0].src}, {staged[0].status})"
            )
    if per_study:
        _refuse_study_archived_elsewhere(client, target, study_uid)
    if other is None:
        return target
    if not allow_other_study:
        raise ConflictError(
            f"{other}; this upload is study {study_uid}: nothing was sent",
            status=409,
            hint="Choose a session label of its own (or one per study), or, if the two studies must share one "
            "session, ask for it explicitly (allow_other_study=True)",
            reason="other-study",
        )
    log.warning("adding study %s to %s, which holds another study (asked for explicitly): %s", study_uid, where, other)
    return dataclasses.replace(target, overwrite="delete")


def _prearchive_rows_or_none(client: XnatClient, project: str) -> list[PrearchiveSession]:
    try:
        return list_sessions(client, project)
    except XnatError:  # a prearchive this account cannot read: the archive and Direct-Archive tell
        return []


def _settle_closed_direct_archive(client: XnatClient, target: UploadTarget, study_uid: str, timeout: float) -> None:
    """Wait (at most ``timeout``) while a Direct-Archive session of this study and label is closed but not yet archived.

    XNAT takes no more files into it, and files sent meanwhile are parked.
    """
    _wait_while(
        lambda: [
            row
            for row in direct_archive_sessions(client, target.project)
            if row.get("label") == target.session and row.get("tag") == study_uid and row.get("status") != "RECEIVING"
        ],
        timeout,
        lambda row: log.info(
            "XNAT is archiving an upload of this study into %s/%s (%s): waiting for it to finish",
            target.project,
            target.session,
            row.get("status"),
        ),
    )


def _wait_while(rows: Callable[[], Sequence[T]], timeout: float, notice: Callable[[T], object]) -> None:
    """Poll ``rows`` until it finds none or ``timeout`` has passed; ``notice`` the first row found, once."""
    deadline = time.monotonic() + timeout
    announced = False
    while True:
        found = rows()
        if not found or time.monotonic() >= deadline:
            return
        if not announced:
            announced = True
            notice(found[0])
        time.sleep(0.25)


def _refuse_study_archived_elsewhere(client: XnatClient, target: UploadTarget, study_uid: str) -> None:
    """A ``--per-study`` upload of a study the project already holds under another label."""
    found = archived_studies(client, target.project).get(study_uid)
    if found is None or not found.get("label") or found["label"] == target.session:
        return
    label = found["label"]
    prefix, _, digits = label.rpartition("_")
    same_run = bool(prefix) and label == study_label(prefix, study_uid)
    raise ConflictError(
        f"Study {study_uid} is already archived in {target.project} as session {label} ({found.get('ID', '?')})"
        f"{f' (a per-study label of the session label {prefix})' if same_run else ''}; this upload would "
        f"archive it again as {target.session}: nothing was sent",
        status=409,
        reason="per-study-other-label" if same_run else None,
        facts={"label": prefix} if same_run else None,
        hint=f"Upload again per study with the session label {prefix} to complete that session"
        if same_run
        else f"Look at {label} first: this upload would be a second copy of that study",
    )


def resume_state(
    client: XnatClient, journal: UploadJournal | None, target: UploadTarget, files: Sequence[DicomFile]
) -> ResumeState:
    """What the journal says an earlier run delivered to this server's ``target``.

    Only if XNAT still has the session of ``files``' study; else nothing (the entries are dropped):
    skipping must never rest on a stale record.

    Args:
        client: A client of the server the journal's records are for.
        journal: The upload journal, or None for none.
        target: The destination.
        files: What is being sent there (their study is looked up).

    Returns:
        The resume state for this destination.
    """
    key = resume_key(client.base_url, target.key)
    if journal is None or not files:
        return ResumeState(journal, key, set())
    done = journal.done(key)
    if done and not _session_present(client, target, files[0].study_uid):
        log.warning(
            "the resume journal lists %d deliveries to %s/%s on %s, but XNAT has no such session "
            "(deleted, or never archived): sending everything again",
            len(done),
            target.project,
            target.session,
            client.base_url,
        )
        journal.clear(key)
        return ResumeState(journal, key, set())
    return ResumeState(journal, key, done)


def _session_present(client: XnatClient, target: UploadTarget, study_uid: str) -> bool:
    return study_present(client, study_uid, project=target.project, label=target.session)


def study_present(client: XnatClient, study_uid: str, *, project: str | None = None, label: str | None = None) -> bool:
    """XNAT holds study ``study_uid``.

    Archived (as session ``label`` of ``project`` when they are given, else as any session of
    ``project``, or of any project), being received by Direct-Archive, or held in the prearchive
    (not in ERROR). What a resume journal's record is checked against before it is trusted (REST
    uploads, and C-STORE in ``cstore.resume``).

    Args:
        client: A logged-in client.
        study_uid: The StudyInstanceUID.
        project: Look only in this project.
        label: With ``project``: look only for this session label.

    Returns:
        True when XNAT holds the study in one of those places.
    """
    if project and label:
        found = find_archived(client, project, label)
        if found is not None and (not found.uid or found.uid == study_uid):
            return True
    elif study_uid in archived_studies(client, project):
        return True
    if project and any(
        row.get("tag") == study_uid and (label is None or row.get("label") == label)
        for row in direct_archive_sessions(client, project)
    ):
        return True
    try:
        rows = list_sessions(client, project)
    except XnatError:  # a prearchive this account cannot read: only the archive tells
        return False
    return any(row.tag == study_uid and row.status != ERROR for row in rows)


def upload_batch_resumable(
    client: XnatClient,
    batch: list[DicomFile],
    target: UploadTarget,
    fmt: ArchiveFormat = "tar",
    *,
    index: int = 0,
    journal: UploadJournal | None = None,
    resume: ResumeState | None = None,
    raise_on_error: bool = True,
    on_streamed: Callable[[int], None] | None = None,
) -> BatchResult:
    """One DICOM-zip batch with resume.

    A batch whose content digest the journal holds for this destination was delivered by an earlier
    run and is not sent again. ``resume``: the state already read for this destination
    (``upload_batches`` reads it once for all its batches).

    Args:
        client: A logged-in client.
        batch: The batch's files.
        target: The destination session.
        fmt: The archive format (tar, tgz or zip).
        index: The batch's number, for the result.
        journal: The upload journal, or None for no resume.
        resume: The state already read for this destination, else read here.
        raise_on_error: Raise a permanent rejection; False: return it as ``ok=False``.
        on_streamed: Told the bytes streamed so far in the current attempt.

    Returns:
        The batch's result; ``resumed`` when an earlier run delivered it.
    """
    streamed = streamed_session(batch)
    if streamed is not None:  # a session de-identified as it is sent: this batch's files, rewritten now
        batch = streamed.rewrite(batch)
        if not batch:  # every file refused (the streamed session lists them): nothing to send
            return BatchResult(index=index, files=(), bytes=0, seconds=0.0, ok=True)
    if resume is None:
        resume = resume_state(client, journal, target, batch)
    if resume.holds(batch):
        relpaths = tuple(f.relpath for f in batch)
        return BatchResult(
            index=index, files=relpaths, bytes=sum(f.size for f in batch), seconds=0.0, ok=True, resumed=True
        )
    result = upload_batch(
        client, batch, target, fmt, index=index, raise_on_error=raise_on_error, on_streamed=on_streamed
    )
    if result.ok:
        resume.record(batch)
    return result


def upload_batches_of(files: Sequence[DicomFile], workers: int) -> list[list[DicomFile]]:
    """A session's DICOM-zip batches, one per worker.

    Balanced by bytes (``partition_by_bytes``); a session de-identified as it is sent
    (``deidentify.StreamedDeidentification``) in consecutive batches (``partition_in_order``), each
    rewritten just before its request (``upload_batch_resumable``).

    Returns:
        The batches.
    """
    if streamed_session(files) is not None:
        return partition_in_order(files, workers)
    return partition_by_bytes(files, workers)


def upload_batches(
    client: XnatClient,
    files: list[DicomFile],
    target: UploadTarget,
    *,
    workers: int = 4,
    fmt: ArchiveFormat = "tar",
    journal: UploadJournal | None = None,
    progress: ProgressCallback | None = None,
) -> list[BatchResult]:
    """DICOM-zip: ``workers`` byte-balanced batches sent in parallel; journaled batches are skipped.

    Args:
        client: A logged-in client.
        files: The session's files.
        target: The destination session.
        workers: How many batches, sent in parallel.
        fmt: The archive format of each batch.
        journal: The upload journal, or None for no resume.
        progress: Told of the bytes and files sent as they go.

    Returns:
        Each batch's result, in batch order.
    """
    batches = upload_batches_of(files, workers)
    resume = resume_state(client, journal, target, files)
    total_bytes = sum(f.size for f in files)
    lock = threading.Lock()
    counters = {"files": 0, "bytes": 0, "failed": 0}
    streaming = [0] * len(batches)  # file bytes of each batch's current attempt, while in flight

    def report() -> None:
        with lock:  # one report at a time, so the callback sees progress in order
            if progress is not None:
                bytes_done = counters["bytes"] + sum(streaming)
                progress(Progress(counters["files"], len(files), bytes_done, total_bytes, counters["failed"]))

    def run(index: int, batch: list[DicomFile]) -> BatchResult:
        def streamed_bytes(n: int) -> None:
            streaming[index] = n
            report()

        result = upload_batch_resumable(
            client,
            batch,
            target,
            fmt,
            index=index,
            resume=resume,
            raise_on_error=False,
            on_streamed=streamed_bytes if progress is not None else None,
        )
        with lock:
            streaming[index] = 0
            counters["files"] += len(result.files)
            counters["bytes"] += result.bytes if result.ok else 0
            counters["failed"] += 0 if result.ok else len(result.files)
        report()
        return result

    report()  # sending starts: a first report, nothing sent yet (the CLI times the sending from it)
    with interruptible_pool(len(batches), "dicom-zip", on_interrupt=client.cancel) as pool:
        futures = [pool.submit(run, index, batch) for index, batch in enumerate(batches)]
        results = [future.result() for future in futures]
    client.check_cancelled()  # cancelled batches are not failures to report, but a stop
    return results


def upload_instances(
    client: XnatClient,
    files: list[DicomFile],
    target: UploadTarget,
    *,
    workers: int = 4,
    journal: UploadJournal | None = None,
    progress: ProgressCallback | None = None,
) -> GradualResult:
    """gradual-DICOM with resume: instances journaled by an earlier run are not sent again.

    A run with instances the journal does not list (a fresh host, or the same session sent before
    as DICOM-zip) whose session XNAT has already archived complete sends nothing: gradual-DICOM
    cannot replace archived instances, so re-sending them would only park a CONFLICT copy in
    the prearchive (XNAT wiki: Using Direct-to-Archive Uploading). DICOM-zip with an overwrite policy replaces them.

    Args:
        client: A logged-in client.
        files: The session's instances.
        target: The destination session.
        workers: Requests in flight at once.
        journal: The upload journal, or None for no resume.
        progress: Told of the instances sent as they go.

    Returns:
        The gradual upload's result, counting the instances resumed.
    """
    resume = resume_state(client, journal, target, files)
    pending = resume.pending(files)
    if pending and archived_complete(client, target, files):
        log.info(
            "%s/%s/%s already holds all %d instances in the archive: nothing sent",
            target.project,
            target.subject,
            target.session,
            len(files),
        )
        return GradualResult(total=len(files), resumed_count=len(files), already_archived=True)
    result = upload_gradual(
        client, pending, target, workers=workers, progress=progress, on_sent=lambda f: resume.record([f])
    )
    result.resumed_count = len(files) - len(pending)
    result.total += result.resumed_count
    return result


def archive_now(
    client: XnatClient, target: UploadTarget, study_uid: str, uris: Iterable[str], *, requests_in_doubt: int = 0
) -> list[str]:
    """Ask XNAT to archive this study's Direct-Archive session now: everything of it is in.

    Now instead of after the idle interval (``target.archive_when_complete``).

    ``uris``: what the import service answered; a run whose every part an earlier run delivered
    has none, and the session's URI is then the one XNAT gives such a session. A session XNAT
    did not queue is archived by its idle timer as usual (``trigger_direct_archive``).

    Not when ``requests_in_doubt``: a request that reached XNAT unanswered (and was sent again)
    may still be on its way into the session. Archived now, that late copy would open a second
    session that meets the archived one and parks in CONFLICT; the idle timer waits for it.

    Args:
        client: A logged-in client.
        target: The destination session.
        study_uid: The study sent.
        uris: The session URIs the import service answered.
        requests_in_doubt: Requests of this upload that reached XNAT without an answer.

    Returns:
        The Direct-Archive sessions XNAT queued for archiving; none when it was not asked.
    """
    if not (target.direct_archive and target.archive_when_complete):
        return []
    if requests_in_doubt:
        log.info(
            "%d request(s) reached XNAT without an answer: leaving %s/%s to XNAT's idle interval, "
            "in case a copy is still on its way in",
            requests_in_doubt,
            target.project,
            target.session,
        )
        return []
    sessions = [uri for uri in dict.fromkeys(uris) if uri.startswith("/xapi/direct-archive/")]
    return [uri for uri in sessions or [target.direct_archive_uri(study_uid)] if trigger_direct_archive(client, uri)]


class ClientSteps:
    """The steps of ``sequence.sequence_upload`` run directly on one client (the library, the CLI).

    Args:
        client: The XNAT client every step uses.
        workers: Parallel requests (DICOM-zip: batches).
        fmt: Archive format of each DICOM-zip batch.
        journal: The resume journal (None: no resume).
        progress: Called with a ``Progress`` snapshot as files are sent.
        verify_timeout: How long verification waits for the session in the archive (seconds).
        poll_interval: Verification's longest pause between looks (seconds).
        claim_wait: How long the claim of a destination waits for another upload to it (seconds).
    """

    def __init__(
        self,
        client: XnatClient,
        *,
        workers: int = 4,
        fmt: ArchiveFormat = "tar",
        journal: UploadJournal | None = None,
        progress: ProgressCallback | None = None,
        verify_timeout: float = 600.0,
        poll_interval: float = 2.0,
        claim_wait: float = DEFAULT_CLAIM_WAIT_SECONDS,
    ) -> None:
        self.client = client
        self.workers = workers
        self.fmt: ArchiveFormat = fmt
        self.journal = journal
        self.progress = progress
        self.verify_timeout = verify_timeout
        self.poll_interval = poll_interval
        self.claim_wait = claim_wait

    def claim(self, targets: Sequence[UploadTarget]) -> DestinationClaim:
        """One upload at a time per session label on this machine (``claim.DestinationClaim``)."""
        names = [destination_name(self.client.base_url, t.project, t.session) for t in targets]
        return DestinationClaim(names, wait_seconds=self.claim_wait, on_wait=log.warning)

    def check_destination(
        self, target: UploadTarget, study_uid: str, allow_other_study: bool, per_study: bool
    ) -> tuple[UploadTarget, frozenset[str]]:
        """``check_destination``, then the prearchive's rows before anything is sent."""
        checked = check_destination(
            self.client, target, study_uid, allow_other_study=allow_other_study, per_study=per_study
        )
        return checked, prearchive_snapshot(self.client, target.project)

    def send_batches(self, target: UploadTarget, files: list[DicomFile]) -> list[BatchResult]:
        """``upload_batches``."""
        self.client.reserve_connections(self.workers)
        return upload_batches(
            self.client,
            files,
            target,
            workers=self.workers,
            fmt=self.fmt,
            journal=self.journal,
            progress=self.progress,
        )

    def send_instances(self, target: UploadTarget, files: list[DicomFile]) -> GradualResult:
        """``upload_instances``."""
        self.client.reserve_connections(self.workers)
        return upload_instances(
            self.client, files, target, workers=self.workers, journal=self.journal, progress=self.progress
        )

    def archive_now(self, target: UploadTarget, study_uid: str, uris: list[str], requests_in_doubt: int) -> list[str]:
        """``archive_now``."""
        return archive_now(self.client, target, study_uid, uris, requests_in_doubt=requests_in_doubt)

    def verify(self, target: UploadTarget, files: list[DicomFile], prearchive_before: frozenset[str]) -> VerifyResult:
        """``verify.verify_session``."""
        return verify_session(
            self.client,
            target,
            files,
            wait_timeout=self.verify_timeout,
            poll_interval=self.poll_interval,
            prearchive_before=prearchive_before,
        )

    def forget_delivered(self, target: UploadTarget) -> None:
        """Clear the journal's record of this destination."""
        if self.journal is not None:
            self.journal.clear(resume_key(self.client.base_url, target.key))

    def look_for_parked(
        self, target: UploadTarget, study_uid: str, prearchive_before: frozenset[str]
    ) -> list[ParkedSession]:
        """``look_for_parked``."""
        return look_for_parked(self.client, target, study_uid, prearchive_before)


def upload_session(
    client: XnatClient,
    root_or_scan: str | os.PathLike[str] | ScanResult,
    target: UploadTarget,
    *,
    workers: int = 4,
    fmt: ArchiveFormat = "tar",
    gradual: bool = False,
    per_study: bool = False,
    journal: UploadJournal | None = None,
    progress: ProgressCallback | None = None,
    verify: bool = True,
    verify_timeout: float = 600.0,
    poll_interval: float = 2.0,
    allow_other_study: bool = False,
    claim_wait: float = DEFAULT_CLAIM_WAIT_SECONDS,
    anonymizer: Anonymizer | None = None,
    require_clean: bool = False,
    allow: Sequence[str] = (),
) -> UploadResult:
    """Scan (unless given a ``ScanResult``), upload every planned session, verify each.

    The steps run in ``sequence.sequence_upload``'s order on ``client`` (``ClientSteps``): the
    destinations are claimed first (``DestinationClaim``: one upload at a time per session label
    on this machine, waiting at most ``claim_wait``), then every planned session is checked
    before anything is sent (``check_destination``: another study or subject under the label
    stops the upload with ``ConflictError``). Without ``verify``, the prearchive is looked at once
    at the end: a row of this upload that XNAT parked (CONFLICT, ERROR) fails the result.

    Args:
        client: The XNAT client.
        root_or_scan: The folder to scan, or a scan already made.
        target: Where the upload goes (with ``per_study``: the label each study's label starts with).
        workers: Parallel requests (DICOM-zip: batches).
        fmt: Archive format of each DICOM-zip batch.
        gradual: gradual-DICOM (one instance per request) instead of DICOM-zip.
        per_study: one session per StudyInstanceUID, labelled by ``study_label``.
        journal: The resume journal: what an earlier run delivered is not sent again.
        progress: Called with a ``Progress`` snapshot as files are sent.
        verify: Read every session back and compare it with what was sent.
        verify_timeout: How long verification waits for a session in the archive (seconds).
        poll_interval: Verification's longest pause between looks (seconds).
        allow_other_study: Upload into a label that holds another study (asked for explicitly).
        claim_wait: How long to wait for another upload to the same label (seconds).
        anonymizer: De-identify every file as it streams out (``transfer.deidentify``) with the
            session's project, subject and label as the script's variables; checks, journal and
            verification then work on the rewritten instances, and files the script cannot be
            applied to are listed in ``not_deidentified``, not sent.
        require_clean: Before anything is sent, try ``anonymizer`` on every planned file and stop
            (``IdentifiersSurvive``) if an identifying attribute survives (``deidentify.require_clean``).
        allow: With ``require_clean``: the attributes the site keeps on purpose.

    Returns:
        The upload's result: ``ok`` only when every file is in XNAT (verified when asked).

    Raises:
        InputError: bad arguments, or several studies without ``per_study``.
        ConflictError: a destination holds another study or subject; nothing was sent.
    """
    if workers < 1:
        raise InputError(f"workers must be at least 1 (got {workers})")
    started = time.monotonic()
    scan = root_or_scan if isinstance(root_or_scan, ScanResult) else scan_directory(Path(root_or_scan))
    plan = plan_sessions(scan, target, per_study=per_study)
    if require_clean:
        from xnat_flows.transfer.deidentify import require_clean as gate
        from xnat_flows.transfer.deidentify import xnat_variables

        gate(anonymizer, [(xnat_variables(planned), files) for planned, files in plan], allow)
    refused: list[SkippedFile] = []
    if anonymizer is not None:
        from xnat_flows.transfer.deidentify import deidentify_plan

        # DICOM-zip: rewritten batch by batch while earlier batches stream, where the script allows
        plan, refused = deidentify_plan(plan, anonymizer, streamed=not gradual)
    if target.direct_archive:
        client.require_direct_archive()
    steps = ClientSteps(
        client,
        workers=workers,
        fmt=fmt,
        journal=journal,
        progress=progress,
        verify_timeout=verify_timeout,
        poll_interval=poll_interval,
        claim_wait=claim_wait,
    )
    sessions = sequence_upload(
        steps, plan, gradual=gradual, verify=verify, allow_other_study=allow_other_study, per_study=per_study
    )
    return UploadResult(
        sessions=sessions,
        skipped=list(scan.skipped),
        not_deidentified=refused + streamed_refusals(plan),
        seconds=time.monotonic() - started,
        upload_seconds=sum(s.seconds for s in sessions),
    )


def look_for_parked(
    client: XnatClient, target: UploadTarget, study_uid: str, before: frozenset[str], *, settle_seconds: float = 60.0
) -> list[ParkedSession]:
    """One look at the prearchive after an upload that is not verified.

    This upload's rows XNAT parked in CONFLICT or ERROR, each with what it conflicts with.

    XNAT decides when it archives: the look waits (at most ``settle_seconds``) while this upload's
    Direct-Archive session is queued, building or archiving (``--archive-when-complete``), but not
    while it is still receiving (XNAT's idle timer may take minutes: that is what verifying is for);
    and, as long, while XNAT holds this Direct-Archive upload in its prearchive instead (the label
    was archived already), where nothing can ask XNAT to archive it sooner.

    Args:
        client: A logged-in client.
        target: The destination session.
        study_uid: The study sent.
        before: The prearchive's rows before the upload (``prearchive_snapshot``).
        settle_seconds: The longest wait for XNAT to finish archiving.

    Returns:
        The parked sessions, each with what it conflicts with; empty when none.
    """
    _settle_closed_direct_archive(client, target, study_uid, settle_seconds)
    if target.direct_archive:
        _settle_prearchive_route(client, target, study_uid, before, settle_seconds)
    return [parked_session(client, row) for row in parked_rows(client, target, {study_uid}, before)]


def _settle_prearchive_route(
    client: XnatClient, target: UploadTarget, study_uid: str, before: frozenset[str], timeout: float
) -> None:
    """Wait (at most ``timeout``) while XNAT holds a Direct-Archive upload in its prearchive, receiving or building.

    XNAT takes an upload through the prearchive when Direct-Archive would write into an archived
    session (xnat-web ``DirectArchiveSessionServiceImpl.getOrCreate``), and the project's setting
    then archives it or parks it.
    """
    _wait_while(
        lambda: [
            row
            for row in _prearchive_rows_or_none(client, target.project)
            if row.tag == study_uid
            and row.url not in before
            and row.name == target.session
            and is_transient_status(row.status)
        ],
        timeout,
        lambda row: log.info(
            "XNAT took this upload into its prearchive (%s, %s), not straight into the archive: "
            "waiting for it to be archived or parked",
            row.src,
            row.status,
        ),
    )
