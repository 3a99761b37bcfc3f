"""Read a session back from XNAT and compare it with what was sent.

Archiving is asynchronous (Direct-Archive and the prearchive both build the session after an
idle interval), so verification polls until the session appears and its per-scan file counts
match, or the wait runs out. Scans are matched by SeriesInstanceUID, read from the session's
own document (XNAT's scan *listing* has no UID column); only a scan XNAT recorded without a UID
is matched by SeriesNumber (XNAT's scan ID, ``5`` or ``5-MR1`` for a second series numbered 5).
Counts are distinct SOP Instance UIDs, because XNAT stores one file per instance whatever the
upload contained. An upload that XNAT parked in the prearchive (ERROR, or CONFLICT it could not
merge) fails verification even when an older copy of the same series already fills the counts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from xnat_flows.client.archive import ArchivedScan, find_archived
from xnat_flows.client.client import XnatClient
from xnat_flows.client.errors import NotFoundError, PermissionDeniedError, XnatError
from xnat_flows.client.prearchive import (
    CONFLICT,
    ERROR,
    READY,
    PrearchiveSession,
    archive_session,
    direct_archive_sessions,
    is_transient_status,
    list_sessions,
    parked_session,
)
from xnat_flows.transfer.scan import DicomFile
from xnat_flows.transfer.target import UploadTarget

_DICOM_RESOURCES = ("DICOM", "secondary")


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyResult:
    """What verifying an upload found: per-scan file counts sent and archived, and what XNAT parked."""

    ok: bool
    experiment_id: str | None
    uri: str | None
    expected_count: int
    found_count: int
    scans: dict[str, tuple[int, int]] = field(default_factory=dict)  # scan ID -> (expected, found)
    missing: list[str] = field(default_factory=list)  # scan IDs with fewer files than sent
    waited_seconds: float = 0.0
    parked: list[str] = field(default_factory=list)  # prearchive rows of this upload XNAT did not archive
    processing: bool = False  # XNAT was still receiving or building this upload when the wait ran out
    next_steps: list[str] = field(default_factory=list)  # what a person can do about each parked row
    conflict: bool = False  # a parked row is in CONFLICT: it meets a session it may not join on its own

    def summary(self, status_shown_by: str = "the project's prearchive") -> str:
        """One line for a person.

        ``status_shown_by`` names, in the reader's terms, where a session's prearchive status is
        seen (the CLI: its ``prearchive list`` command).

        Returns:
            The sentence.
        """
        if self.processing:
            return (
                f"XNAT was still processing this upload when the wait ran out ({self.found_count}/"
                f"{self.expected_count} files in the archive so far, which may be an earlier copy's): check again "
                f"later ({status_shown_by} shows the session's status)"
            )
        if self.parked:
            return (
                f"XNAT did not archive this upload: it parked it in the prearchive ({'; '.join(self.parked)}); "
                "what the archive holds is not this upload" + "".join(f". {step}" for step in self.next_steps)
            )
        if self.ok:
            where = self.experiment_id or self.uri
            return f"{self.found_count}/{self.expected_count} files in {len(self.scans)} scans ({where})"
        if self.uri is None:
            return "the session did not appear in XNAT before the wait ran out"
        short = ", ".join(f"scan {s}: {self.scans[s][1]}/{self.scans[s][0]}" for s in self.missing)
        return f"{self.found_count}/{self.expected_count} files arrived; short: {short}"


@dataclass(frozen=True)
class _Series:
    uid: str
    number: str  # SeriesNumber as XNAT's scan ID starts with it ("" when the series has none)
    count: int

    @property
    def label(self) -> str:
        return self.number or self.uid


def _expected_series(files: Iterable[DicomFile]) -> list[_Series]:
    instances: dict[str, set[str]] = {}
    numbers: dict[str, int | None] = {}
    for f in files:
        instances.setdefault(f.series_uid, set()).add(f.sop_instance_uid)
        numbers[f.series_uid] = f.series_number
    return [
        _Series(uid, str(numbers[uid]) if numbers[uid] is not None else "", len(sops))
        for uid, sops in instances.items()
    ]


def _numbered(scan_id: str, number: str) -> bool:
    """XNAT's scan ID for SeriesNumber ``number``: ``5``, or ``5-MR1``, ``5-MR2`` for further series numbered 5."""
    return bool(number) and (scan_id == number or scan_id.startswith(f"{number}-"))


def _match(expected: list[_Series], scans: list[ArchivedScan], by_number: bool = True) -> dict[str, str]:
    """Series UID -> XNAT scan ID: by SeriesInstanceUID.

    A scan XNAT recorded without a UID may be matched by number (``by_number``), each such scan to
    one series at most.

    Returns:
        Series UID to XNAT scan ID, for the series matched.
    """
    by_uid = {scan.uid: scan.id for scan in scans if scan.uid}
    uid_less = [scan.id for scan in scans if not scan.uid]
    mapping = {}
    for series in expected:
        if series.uid in by_uid:
            mapping[series.uid] = by_uid[series.uid]
        elif by_number:
            candidate = next((scan_id for scan_id in uid_less if _numbered(scan_id, series.number)), None)
            if candidate is not None:
                uid_less.remove(candidate)
                mapping[series.uid] = candidate
    return mapping


def _file_count(client: XnatClient, base: str, scan_id: str) -> int:
    rows = client.get_rows(f"{base}/scans/{scan_id}/resources")
    counts = [int(row.get("file_count") or 0) for row in rows if row.get("label") in _DICOM_RESOURCES]
    if counts and any(counts):
        return sum(counts)
    total = 0
    for label in _DICOM_RESOURCES:  # file_count may be empty: count the files themselves
        with contextlib.suppress(NotFoundError):
            total += len(client.get_rows(f"{base}/scans/{scan_id}/resources/{label}/files"))
    return total


def _prearchive_rows(client: XnatClient, project: str) -> list[PrearchiveSession]:
    try:
        return list_sessions(client, project)
    except (NotFoundError, PermissionDeniedError):  # no prearchive this user may read
        return []


def _locate_prearchived(client: XnatClient, target: UploadTarget, study_uids: set[str]) -> str | None:
    for row in _prearchive_rows(client, target.project):
        if row.status != READY:
            continue
        if row.tag in study_uids or target.session in (row.name, row.folder_name):
            return row.url if row.url.startswith("/data") else "/data" + row.url
    return None


def _holds_in_prearchive(client: XnatClient, target: UploadTarget) -> bool:
    """True when the project keeps uploads in the prearchive (prearchive code 0)."""
    if target.direct_archive:
        return False
    try:
        return client.get_text(f"/data/projects/{target.project}/prearchive_code") == "0"
    except (NotFoundError, PermissionDeniedError):  # not readable by this user: look in the archive
        return False


def prearchive_snapshot(client: XnatClient, project: str) -> frozenset[str]:
    """The prearchive rows of ``project`` (by URL) before an upload.

    Rows that were there already are not this upload's.

    Returns:
        The URLs of the project's prearchive rows.
    """
    return frozenset(row.url for row in _prearchive_rows(client, project))


def _processing(client: XnatClient, target: UploadTarget, study_uids: set[str], before: frozenset[str]) -> bool:
    """XNAT is still receiving or building this upload (Direct-Archive table or a new prearchive row)."""
    # the Direct-Archive table first: a session leaves it for the prearchive, never the other way
    receiving = _receiving_direct(client, target, study_uids)
    return receiving or _building(_prearchive_rows(client, target.project), study_uids, before)


def _receiving_direct(client: XnatClient, target: UploadTarget, study_uids: set[str]) -> bool:
    """XNAT's Direct-Archive table holds this upload's study under the label."""
    return any(
        row.get("tag") in study_uids and row.get("label") == target.session
        for row in direct_archive_sessions(client, target.project)
    )


def _building(rows: Iterable[PrearchiveSession], study_uids: set[str], before: frozenset[str]) -> bool:
    """A prearchive row of this upload (not in ``before``) XNAT is still receiving or building."""
    return any(row.tag in study_uids and row.url not in before and is_transient_status(row.status) for row in rows)


def parked_rows(
    client: XnatClient,
    target: UploadTarget,
    study_uids: set[str],
    before: frozenset[str],
    rows: Sequence[PrearchiveSession] | None = None,
) -> list[PrearchiveSession]:
    """This upload's prearchive rows that XNAT parked.

    In ERROR, or in CONFLICT (it would merge into an archived session it may not join on its own);
    for a Direct-Archive upload also READY: a part that reached XNAT after its Direct-Archive
    session was archived went through the prearchive (xnat-web ``DirectArchiveSessionServiceImpl``:
    the session no longer receives) of a project that archives by hand, and waits there for a
    person. Rows there before the upload are not its.

    Args:
        client: A logged-in client.
        target: The destination session.
        study_uids: The studies this upload sent.
        before: The project's prearchive rows before the upload (``prearchive_snapshot``).
        rows: The project's prearchive rows already read, else read here.

    Returns:
        The parked rows.
    """
    statuses = (ERROR, CONFLICT, READY) if target.direct_archive else (ERROR, CONFLICT)
    return [
        row
        for row in (_prearchive_rows(client, target.project) if rows is None else rows)
        if row.tag in study_uids
        and row.status in statuses
        and row.url not in before
        and row.name in (target.session, "")
    ]


def parked_result(
    client: XnatClient, result: VerifyResult, rows: list[PrearchiveSession], for_flow_run: bool = False
) -> VerifyResult:
    """``result`` failed for ``rows``, each described with what it conflicts with and what to do.

    In a flow run operator's terms with ``for_flow_run``.

    Args:
        client: A logged-in client (each row's conflict is looked up).
        result: The verification so far.
        rows: The parked rows (``parked_rows``).
        for_flow_run: Word the next steps for a flow run's operator instead of the CLI's user.

    Returns:
        A copy of ``result`` with ``ok`` false and the parked rows and next steps filled in.
    """
    described = [parked_session(client, row) for row in rows]
    return dataclasses.replace(
        result,
        ok=False,
        parked=[p.describe() for p in described],
        next_steps=[p.next_steps(for_flow_run) for p in described],
        conflict=any(row.status == CONFLICT for row in rows),
    )


def verify_session(
    client: XnatClient,
    target: UploadTarget,
    expected_files: Iterable[DicomFile],
    *,
    wait_timeout: float = 600.0,
    poll_interval: float = 2.0,
    prearchive_before: frozenset[str] | None = None,
    for_flow_run: bool = False,
) -> VerifyResult:
    """Wait for the session and compare per-scan file counts with ``expected_files``.

    ``prearchive_before`` (``prearchive_snapshot`` taken before the upload) lets verification tell
    this upload's prearchive rows from older ones: a row of this study that XNAT parked in ERROR,
    or in CONFLICT that merging could not clear, fails the verification whatever the archive holds.

    Args:
        client: A logged-in client.
        target: The destination session.
        expected_files: What was sent.
        wait_timeout: The longest wait for the session, in seconds.
        poll_interval: The pause between two looks.
        prearchive_before: The project's prearchive rows before the upload, or None.
        for_flow_run: Word the next steps for a flow run's operator instead of the CLI's user.

    Returns:
        The counts found per scan, ``ok`` when every scan holds at least what was sent and nothing
        of this upload is parked.
    """
    files = list(expected_files)
    study_uids = {f.study_uid for f in files}
    expected = _expected_series(files)
    expected_total = sum(s.count for s in expected)
    in_prearchive = _holds_in_prearchive(client, target)
    started = time.monotonic()
    nothing_found = {s.label: (s.count, 0) for s in expected}
    result = VerifyResult(False, None, None, expected_total, 0, nothing_found, list(nothing_found))
    polls = 0
    merge_tried: set[str] = set()
    while True:
        if in_prearchive:
            base = _locate_prearchived(client, target, study_uids)
            if base is not None:
                scans = [ArchivedScan(id=r["ID"], uid=r.get("UID", "")) for r in client.get_rows(f"{base}/scans")]
                result = _compare(client, expected, None, base, scans)
        else:
            # Under the target's subject only: the label under another subject is another patient's
            # session (XNAT parks this upload in CONFLICT), whatever its counts say.
            session = find_archived(client, target.project, target.session, target.subject)
            if session is not None:
                # Another study under this label (a merge the user forced): its scans prove nothing.
                same_study = not session.uid or session.uid in study_uids
                result = _compare(
                    client, expected, session.experiment_id, session.uri, session.scans, by_number=same_study
                )
        processing = False
        if prearchive_before is not None and not in_prearchive:
            # A row of this upload parked in ERROR or CONFLICT ends the wait at once, whatever the
            # archive's counts say (they may be an earlier copy's). Only a late copy of the same
            # study, subject, label and patient (of this upload, or of an earlier run of it that a
            # re-run completes) is merged (append), each row once.
            # One look at the prearchive for both questions below, after the Direct-Archive table:
            # two looks would miss a row that turned from RECEIVING to CONFLICT between them.
            receiving = _receiving_direct(client, target, study_uids)
            snapshot = _prearchive_rows(client, target.project)
            rows = parked_rows(client, target, study_uids, frozenset(), rows=snapshot)
            fresh = [row for row in rows if row.url not in merge_tried]
            merge_tried.update(row.url for row in fresh)
            if any([_merge_own_late_copy(client, target, row, files) for row in fresh]):
                continue
            parked = [row for row in rows if row.url not in prearchive_before]
            if parked:
                result = parked_result(client, result, parked, for_flow_run)
                break
            if result.ok:
                # The counts may be an earlier copy's: done only once XNAT has finished with this upload.
                processing = receiving or _building(snapshot, study_uids, prearchive_before)
        if result.ok and not processing:
            break
        if time.monotonic() - started >= wait_timeout:
            if not processing and not result.ok and prearchive_before is not None and not in_prearchive:
                # Short counts while XNAT still holds this study in the prearchive (a label already
                # archived sends it there, to wait for the idle timer): not files missing, work in
                # progress, also when an earlier run of this upload put it there.
                processing = _processing(client, target, study_uids, frozenset())
            if processing:
                result = dataclasses.replace(result, ok=False, processing=True)
            break
        # quick first looks (XNAT often archives within a second of the last request), then
        # every poll_interval: the wait ends soon after the session is complete, not up to 2 s later
        time.sleep(min(poll_interval, 0.1 * 2**polls))
        polls += 1
    return dataclasses.replace(result, waited_seconds=time.monotonic() - started)


def archived_complete(client: XnatClient, target: UploadTarget, files: Iterable[DicomFile]) -> bool:
    """True when the archived target session already holds every series of ``files``.

    Each series with at least as many instances, matched by its SeriesInstanceUID (never by number
    alone, so another study under the same label cannot pass). Checked once, without waiting.

    Args:
        client: A logged-in client.
        target: The destination session.
        files: What would be sent.

    Returns:
        True when the archive holds it all.
    """
    if _holds_in_prearchive(client, target):
        return False
    session = find_archived(client, target.project, target.session)
    if session is None:
        return False
    return _compare(
        client, _expected_series(files), session.experiment_id, session.uri, session.scans, by_number=False
    ).ok


def _merge_own_late_copy(
    client: XnatClient, target: UploadTarget, row: PrearchiveSession, files: list[DicomFile]
) -> bool:
    """Archive ``row`` into the target session with ``append`` if it is this upload's own late copy.

    A copy of the upload that reached XNAT after the session was archived (a resumed or retried
    request, a batch that started late) cannot join it on its own: XNAT parks it in CONFLICT (XNAT
    wiki: *Using Direct-to-Archive Uploading*), or in READY where the project archives by hand
    (``parked_rows``). It is merged only when it is the same study (StudyInstanceUID),
    for the same subject and label, and the archived session records the same DICOM patient; and
    only with ``append``, under which XNAT still refuses another study or subject
    (xnat-web ``PrearcSessionArchiver.checkForConflicts``). Anything else is for a person to look at.

    Returns:
        True when XNAT took it.
    """
    if (
        row.status not in (CONFLICT, READY)
        or row.name != target.session
        or row.subject.lower() != target.subject.lower()
    ):
        return False
    existing = find_archived(client, target.project, target.session, subject=target.subject)
    if existing is None or not existing.uid or existing.uid != row.tag:
        return False
    patient = _patient_id(files)
    if existing.patient_id and patient is not None and existing.patient_id != patient:
        return False
    log.info("merging this upload's late copy %s into %s/%s (append)", row.url, target.subject, target.session)
    try:
        archive_session(
            client,
            target.project,
            row.timestamp,
            row.folder_name,
            subject=target.subject,
            label=target.session,
            overwrite="append",
            overwrite_files=True,  # the late copy repeats instances the session already holds
            wait_seconds=0,
        )
    except XnatError as exc:  # XNAT refused the merge: the row stays for a person to look at
        log.warning("XNAT did not merge %s into %s: %s", row.url, target.session, exc)
        return False
    return True


def _patient_id(files: list[DicomFile]) -> str | None:
    """The PatientID the upload sent, read from its first file.

    A de-identified file's as sent (its rewritten bytes), not the original's on disk.

    Returns:
        The PatientID ('' when none), or None when the file cannot be read.
    """
    import io

    import pydicom  # lazy, as in transfer.scan

    from xnat_flows.transfer.scan import read_exactly

    if not files:
        return None
    try:
        source = files[0].path if files[0].rewrite is None else io.BytesIO(b"".join(read_exactly(files[0])))
        dataset = pydicom.dcmread(source, stop_before_pixels=True, specific_tags=["PatientID"])
    except (OSError, XnatError, pydicom.errors.InvalidDicomError):
        return None
    return str(dataset.get("PatientID", "") or "")


def _compare(
    client: XnatClient,
    expected: list[_Series],
    experiment_id: str | None,
    base: str,
    scans: list[ArchivedScan],
    by_number: bool = True,
) -> VerifyResult:
    mapping = _match(expected, scans, by_number)
    counts: dict[str, tuple[int, int]] = {}
    missing: list[str] = []
    for series in expected:
        scan_id = mapping.get(series.uid)
        found = _file_count(client, base, scan_id) if scan_id is not None else 0
        key = scan_id or series.label
        if key in counts:  # two unmatched series with one number
            key = f"{key} ({series.uid})"
        counts[key] = (series.count, found)
        if found < series.count:
            missing.append(key)
    found_total = sum(found for _, found in counts.values())
    expected_total = sum(s.count for s in expected)
    return VerifyResult(not missing, experiment_id, base, expected_total, found_total, counts, missing)
