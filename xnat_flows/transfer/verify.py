"""Read a session back from XNAT and compare it with what was sent.

Archiving is asynchronous (Direct-Archive and the prearchive both build the session after an
idle interval), so verification polls until the session appears and its per-scan file counts
match, or the wait runs out. Scans are matched by SeriesInstanceUID when XNAT lists it, else
by SeriesNumber (XNAT's scan ID); counts are distinct SOP Instance UIDs, because XNAT stores
one file per instance whatever the upload contained.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from xnat_flows.client.client import XnatClient
from xnat_flows.client.errors import NotFoundError, PermissionDeniedError
from xnat_flows.transfer.scan import DicomFile
from xnat_flows.transfer.upload import UploadTarget

_DICOM_RESOURCES = ("DICOM", "secondary")


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    experiment_id: str | None
    uri: str | None
    expected_count: int
    found_count: int
    scans: dict[str, tuple[int, int]] = field(default_factory=dict)  # scan ID -> (expected, found)
    missing: list[str] = field(default_factory=list)  # scan IDs with fewer files than sent
    waited_seconds: float = 0.0

    def summary(self) -> str:
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
    scan_id: str  # what XNAT derives from SeriesNumber
    count: int


def _expected_series(files: Iterable[DicomFile]) -> list[_Series]:
    instances: dict[str, set[str]] = {}
    numbers: dict[str, int | None] = {}
    for f in files:
        instances.setdefault(f.series_uid, set()).add(f.sop_instance_uid)
        numbers[f.series_uid] = f.series_number
    return [
        _Series(uid, str(numbers[uid]) if numbers[uid] is not None else uid, len(sops)) for uid, sops in instances.items()
    ]


def _match(expected: list[_Series], scan_rows: list[dict[str, str]], by_number: bool = True) -> dict[str, str]:
    """series UID -> XNAT scan ID; by SeriesInstanceUID, else (``by_number``) by scan ID."""
    by_uid = {row.get("UID", ""): row["ID"] for row in scan_rows if row.get("UID")}
    ids = {row["ID"] for row in scan_rows}
    mapping = {}
    for series in expected:
        if series.uid in by_uid:
            mapping[series.uid] = by_uid[series.uid]
        elif by_number and series.scan_id in ids:
            mapping[series.uid] = series.scan_id
    return mapping


def _file_count(client: XnatClient, base: str, scan_id: str) -> int:
    rows = client.get_rows(f"{base}/scans/{scan_id}/resources")
    counts = [int(row.get("file_count") or 0) for row in rows if row.get("label") in _DICOM_RESOURCES]
    if counts and any(counts):
        return sum(counts)
    total = 0
    for label in _DICOM_RESOURCES:  # file_count may be empty: count the files themselves
        try:
            total += len(client.get_rows(f"{base}/scans/{scan_id}/resources/{label}/files"))
        except NotFoundError:
            pass
    return total


def _locate_archived(client: XnatClient, target: UploadTarget) -> tuple[str, str] | None:
    try:
        document = client.get_json(f"/data/projects/{target.project}/experiments/{target.session}")
    except NotFoundError:
        return None
    try:
        experiment_id = document["items"][0]["data_fields"]["ID"]
    except (KeyError, IndexError, TypeError):
        return None
    return experiment_id, f"/data/experiments/{experiment_id}"


def _locate_prearchived(client: XnatClient, target: UploadTarget, study_uids: set[str]) -> str | None:
    for row in client.get_rows(f"/data/prearchive/projects/{target.project}"):
        if row.get("status") != "READY":
            continue
        if row.get("tag") in study_uids or row.get("name") == target.session or row.get("folderName") == target.session:
            return "/data" + row["url"] if not row["url"].startswith("/data") else row["url"]
    return None


def _holds_in_prearchive(client: XnatClient, target: UploadTarget) -> bool:
    """True when the project keeps uploads in the prearchive (prearchive code 0)."""
    if target.direct_archive:
        return False
    try:
        return client.get_text(f"/data/projects/{target.project}/prearchive_code") == "0"
    except (NotFoundError, PermissionDeniedError):  # not readable by this user: look in the archive
        return False


def verify_session(
    client: XnatClient,
    target: UploadTarget,
    expected_files: Iterable[DicomFile],
    *,
    wait_timeout: float = 600.0,
    poll_interval: float = 2.0,
) -> VerifyResult:
    """Wait for the session and compare per-scan file counts with ``expected_files``."""
    files = list(expected_files)
    expected = _expected_series(files)
    expected_total = sum(s.count for s in expected)
    in_prearchive = _holds_in_prearchive(client, target)
    started = time.monotonic()
    nothing_found = {s.scan_id: (s.count, 0) for s in expected}
    result = VerifyResult(False, None, None, expected_total, 0, nothing_found, list(nothing_found))
    polls = 0
    while True:
        if in_prearchive:
            located = _locate_prearchived(client, target, {f.study_uid for f in files})
            found = (None, located) if located else None
        else:
            found = _locate_archived(client, target)
        if found is not None:
            experiment_id, base = found
            result = _compare(client, expected, experiment_id, base)
            if result.ok:
                break
            if target.direct_archive:
                _merge_conflicts(client, target, {f.study_uid for f in files})
        if time.monotonic() - started >= wait_timeout:
            break
        # quick first looks (XNAT often archives within a second of the last request), then
        # every poll_interval: the wait ends soon after the session is complete, not up to 2 s later
        time.sleep(min(poll_interval, 0.1 * 2 ** polls))
        polls += 1
    return dataclasses.replace(result, waited_seconds=time.monotonic() - started)


def archived_complete(client: XnatClient, target: UploadTarget, files: Iterable[DicomFile]) -> bool:
    """True when the archived target session already holds every series of ``files`` with at
    least as many instances, each series matched by its SeriesInstanceUID (never by number
    alone, so another study under the same label cannot pass). Checked once, without waiting.
    """
    if _holds_in_prearchive(client, target):
        return False
    found = _locate_archived(client, target)
    return found is not None and _compare(client, _expected_series(files), *found, by_number=False).ok


def _merge_conflicts(client: XnatClient, target: UploadTarget, study_uids: set[str]) -> None:
    """Archive what XNAT parked in the prearchive as CONFLICT for this session, with the target's
    overwrite policy.

    Instances re-sent by Direct-Archive to a session that XNAT has archived meanwhile (a resumed
    gradual-DICOM upload) do not merge on their own: XNAT falls back to the prearchive and marks
    the row CONFLICT (xnat-api.md §3.7). Archiving it with ``overwrite`` is what completes them.
    """
    from xnat_flows.manage.prearchive import archive_session

    try:
        rows = client.get_rows(f"/data/prearchive/projects/{target.project}")
    except (NotFoundError, PermissionDeniedError):  # no prearchive this user may read: nothing to merge
        return
    for row in rows:
        if row.get("status") != "CONFLICT" or row.get("tag") not in study_uids:
            continue
        log.info("merging prearchive CONFLICT %s into %s/%s (overwrite=%s)", row.get("url"), target.subject,
                 target.session, target.overwrite)
        archive_session(client, target.project, row["timestamp"], row.get("folderName") or row["name"],
                        subject=target.subject, label=target.session, overwrite=target.overwrite, wait_seconds=0)


def _compare(client: XnatClient, expected: list[_Series], experiment_id: str | None, base: str,
             by_number: bool = True) -> VerifyResult:
    scan_rows = client.get_rows(f"{base}/scans")
    mapping = _match(expected, scan_rows, by_number)
    scans: dict[str, tuple[int, int]] = {}
    missing: list[str] = []
    for series in expected:
        scan_id = mapping.get(series.uid)
        found = _file_count(client, base, scan_id) if scan_id is not None else 0
        key = scan_id or series.scan_id
        scans[key] = (series.count, found)
        if found < series.count:
            missing.append(key)
    found_total = sum(found for _, found in scans.values())
    expected_total = sum(s.count for s in expected)
    return VerifyResult(not missing, experiment_id, base, expected_total, found_total, scans, missing)
