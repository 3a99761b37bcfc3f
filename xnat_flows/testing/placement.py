"""The per-file path of an import: an instance into its prearchive session, as xnat-web's
`GradualDicomImporter.call` places it (every gradual-DICOM instance, every DICOM-zip entry,
every C-STORE).

What XNAT does per file, and no more: find or create the session (project + StudyInstanceUID,
`PrearcDatabase.eitherGetOrCreateSession`), pick the scan from SeriesNumber/SeriesInstanceUID
(`Restructurer.determineScanSubdir`), write the file once under XNAT's file name. The session's
catalog and checksums come later, when it is built (xnat-web's session builder; the emulator
computes a file's MD5 when it is first listed, see ``Store.fill_digests``).

No lock is global to the per-file path: an open session is found in memory (one database
look-up per session and request, not per file), a session's own lock guards only its scan
table and counters, and files are written outside any lock, so parallel uploads into the same
session write at once. The database learns what a request placed in one transaction per batch,
committed before the request is answered. Archiving a session first ``quiesce``s it: no new file
goes into it, and the files being written are in the database before it is read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from xnat_flows.testing.dicomhdr import InstanceHeader, xnat_file_name
from xnat_flows.testing.httpbody import write_all
from xnat_flows.testing.state import READY, RECEIVING, PrearcRow, Store, fresh_temp_file

log = logging.getLogger(__name__)

# Row parameters remembered from the import request (used later by the rebuilder / archiver).
REMEMBERED_PARAMS = (
    "overwrite",
    "overwrite_files",
    "SOURCE",
    "prevent_auto_commit",
    "prevent_anon",
    "VISIT",
    "PROTOCOL",
    "TIMEZONE",
    "Sender-AE-Title",
    "AA",
)
_FLUSH_EVERY = 256  # files a request keeps in memory before it writes their rows


@dataclass
class Placement:
    """Where an instance goes: resolved project/subject/label plus prearchive options."""

    project: str
    subject: str
    label: str
    direct_archive: bool = False
    timestamp: str | None = None
    folder: str | None = None
    params: dict[str, str] = field(default_factory=dict)


@dataclass
class _OpenSession:
    """A prearchive row files are going into, as the per-file path keeps it in memory."""

    row: PrearcRow
    scans: dict[str, str]  # SeriesInstanceUID -> scan ID
    lock: threading.Condition = field(default_factory=threading.Condition)
    writers: int = 0
    closed: bool = False  # archived or replaced: placements look the session up again
    stale: bool = False  # the row changed in the database: checked again before the next file
    touched: float = field(default_factory=time.time)
    new_scans: list[tuple[Any, ...]] = field(default_factory=list)
    files: list[tuple[Any, ...]] = field(default_factory=list)
    dirs: dict[tuple[str, str], str] = field(default_factory=dict)  # (scan, resource) -> its directory

    def no_writers(self) -> bool:
        return self.writers == 0


class Held:
    """The rows one import request writes into: kept from the idle rebuilder until it ends."""

    def __init__(self) -> None:
        self.rows: set[int] = set()
        self.sessions: dict[int, _OpenSession] = {}  # by id(): every session object this request wrote into
        self.placed = 0


def _session_key(header: InstanceHeader, where: Placement) -> tuple[Any, ...]:
    # As `Store.find_open_row` matches: project, StudyInstanceUID, Direct-Archive, and the given
    # timestamp/folder (else the session label).
    return (
        where.project,
        header.study_uid,
        where.direct_archive,
        where.timestamp or "",
        ("folder", where.folder) if where.folder else ("name", where.label),
    )


class Placements:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()  # the open-session table and the held sets; never held while writing
        self._open: dict[tuple[Any, ...], _OpenSession] = {}
        self._held: list[Held] = []
        store.on_prearc_change = self.forget

    # -- requests ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def holding(self) -> Iterator[Held]:
        """Rows placed with the yielded ``Held`` are kept from the idle rebuilder until the block ends,
        and what was placed is in the database when it ends (``flush`` commits it earlier).

        XNAT's DICOM-zip importer builds (and with ``dest`` archives) what it received within the
        request; the rebuilder must not take a session of that request half-way, however long the
        request runs between its last instance and its commit.
        """
        held = Held()
        with self._lock:
            self._held.append(held)
        try:
            yield held
        finally:
            try:
                self.flush(held)
            finally:
                with self._lock:
                    self._held.remove(held)

    def is_held(self, row_id: int) -> bool:
        """An import request still running places instances in this row."""
        with self._lock:
            return any(row_id in held.rows for held in self._held)

    def last_touched(self, row: PrearcRow) -> float:
        """When the row last received a file, counting files not yet in the database."""
        with self._lock:
            sessions = [s for s in self._open.values() if s.row.id == row.id]
        return max([row.lastmod, *(s.touched for s in sessions)])

    # -- the per-file path ---------------------------------------------------------------------------
    def place(self, header: InstanceHeader, data: bytes, where: Placement, held: Held) -> PrearcRow:
        """Write one instance into its prearchive session, creating session and scan as needed."""
        name = xnat_file_name(header)
        resource = "secondary" if header.derived_secondary else "DICOM"
        if self.store.check_space is not None:  # a full disk refuses before a session is made
            self.store.check_space()
        session, scan_id = self._enter(header, where, held)
        written = False
        try:
            directory = session.dirs.get((scan_id, resource))
            if directory is None:  # once per scan and resource: path objects cost more than the write
                path = self.store.prearc_file_path(session.row.id, scan_id, resource, name).parent
                path.mkdir(parents=True, exist_ok=True)
                directory = session.dirs.setdefault((scan_id, resource), str(path))
            self._write(f"{directory}/{name}", data)
            written = True
        finally:
            with session.lock:
                session.writers -= 1
                if written:
                    session.files.append(
                        (session.row.id, scan_id, resource, name, len(data), None, header.sop_instance_uid)
                    )
                    session.touched = time.time()
                session.lock.notify_all()
        held.placed += 1
        if held.placed % _FLUSH_EVERY == 0:
            self.flush(held)
        return session.row

    def _write(self, final: str, data: bytes) -> None:
        """One write of the file, under a temp name renamed into place (a file read meanwhile is
        whole, the old one or the new); a failed write leaves no temp file behind."""
        fd, tmp_name = fresh_temp_file(self.store.tmp_dir)
        try:
            try:  # os.write, not a file object: fdopen's fstat, isatty ioctl and lseek cost three
                write_all(fd, data)  # syscalls per file, each a turn of the GIL (strace -c)
            finally:
                os.close(fd)
            os.replace(tmp_name, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise

    def _enter(self, header: InstanceHeader, where: Placement, held: Held) -> tuple[_OpenSession, str]:
        """The open session for this instance, its scan ID, and one writer counted in."""
        key = _session_key(header, where)
        while True:
            with self._lock:
                session = self._open.get(key)
                if session is not None and not session.stale:
                    held.rows.add(session.row.id)
            if session is None or session.stale:
                session = self._open_session(key, header, where, held)
            with session.lock:
                if session.closed:
                    continue  # being archived or changed meanwhile: look it up again
                held.sessions[id(session)] = session
                scan_id = session.scans.get(header.series_uid)
                if scan_id is None:
                    scan_id = next_free_scan_id(
                        header.series_number or "0", header.modality, set(session.scans.values())
                    )
                    session.scans[header.series_uid] = scan_id
                    session.new_scans.append(
                        (
                            session.row.id,
                            scan_id,
                            header.series_uid,
                            header.series_number,
                            header.modality,
                            header.series_description,
                        )
                    )
                session.writers += 1
                return session, scan_id

    def _open_session(self, key: tuple[Any, ...], header: InstanceHeader, where: Placement, held: Held) -> _OpenSession:
        """Find or create the row in the database (once per session, and again after the row
        changed; the store's lock, then ours)."""
        store = self.store
        with store.lock:
            with self._lock:
                known = self._open.get(key)
                if known is not None and not known.stale:
                    held.rows.add(known.row.id)
                    return known
            if where.direct_archive:
                refused = self._direct_archive_refused(header, where)
                if refused is not None:
                    # xnat-web `GradualDicomImporter.eitherGetOrCreateSession`: "Unable to directly archive
                    # session, will proceed through prearchive" (the project's auto-archive setting applies).
                    log.info(
                        "Direct-Archive of %s/%s not possible (%s): through the prearchive",
                        where.project,
                        where.label,
                        refused,
                    )
                    through = dataclasses.replace(where, direct_archive=False)
                    session = self._open_session(_session_key(header, through), header, through, held)
                    with self._lock:
                        self._open[key] = session  # this key's next files go there without asking again
                    return session
            row = store.find_open_row(
                where.project, header.study_uid, where.label, where.direct_archive, where.timestamp, where.folder
            )
            if row is None:
                row = self._new_row(header, where)
            with self._lock:
                if known is not None and known.row.id == row.id:  # still the row files go to
                    known.row, known.stale = row, False
                    held.rows.add(row.id)
                    return known
                if known is not None:
                    known.closed = True
            scans = {str(s["series_uid"]): str(s["scan_id"]) for s in store.prearc_scans(row.id)}
            session = _OpenSession(row, scans)
            with self._lock:
                self._open[key] = session
                held.rows.add(row.id)
            return session

    def _direct_archive_refused(self, header: InstanceHeader, where: Placement) -> str | None:
        """Why XNAT would not take this instance by Direct-Archive, or None (xnat-web
        `DirectArchiveSessionServiceImpl.getOrCreate`): its Direct-Archive session (project,
        StudyInstanceUID, label) no longer receives, or there is none and the archive directory it
        would write into already exists (an archived session of that label, or another study's
        Direct-Archive session receiving into it)."""
        row = self.store.find_direct_archive_row(where.project, header.study_uid, where.label)
        if row is not None:
            return None if row.status == RECEIVING else f"it is no longer in receiving state ({row.status})"
        folder = where.folder or where.label
        if self.store.archive_folder_taken(where.project, folder):
            return f"data already exists in the archive under {where.project}/{folder}"
        return None

    def _new_row(self, header: InstanceHeader, where: Placement) -> PrearcRow:
        from xnat_flows.testing.prearchive import XnatRefusal  # prearchive builds on this module

        store = self.store
        if where.timestamp and where.folder:
            clash = store.prearc_by_url(where.project, where.timestamp, where.folder)
            if clash is not None:
                raise XnatRefusal(
                    400,
                    f"The destination prearchive session {clash.url} holds a different "
                    "StudyInstanceUID; cannot merge this upload into it.",
                )
        remembered = {k: v for k, v in where.params.items() if k in REMEMBERED_PARAMS}
        return store.insert_prearc_row(
            project=where.project,
            timestamp=where.timestamp or store.new_timestamp(),
            folder=where.folder or where.label,
            name=where.label,
            subject=where.subject,
            tag=header.study_uid,
            status=RECEIVING,
            scan_date=_format_date(header.study_date),
            scan_time=_format_time(header.study_time),
            modality=header.modality,
            direct_archive=where.direct_archive,
            params=remembered,
        )

    # -- into the database ---------------------------------------------------------------------------
    def flush(self, held: Held) -> None:
        """Commit the rows of the files this request placed (one transaction)."""
        self._commit(list(held.sessions.values()))

    def _commit(self, sessions: list[_OpenSession]) -> None:
        batches = []
        for session in sessions:
            with session.lock:
                if session.files or session.new_scans:
                    batches.append((session.row.id, session.new_scans, session.files, session.touched))
                    session.new_scans, session.files = [], []
        if not batches:
            return
        with self.store.transaction() as db:
            for row_id, scans, files, touched in batches:
                if db.execute("SELECT 1 FROM prearc WHERE id = ?", (row_id,)).fetchone() is None:
                    continue  # deleted meanwhile (prearchive DELETE): its files went with it
                db.executemany(
                    "INSERT OR IGNORE INTO prearc_scans(row_id, scan_id, series_uid, series_number, modality, "
                    "series_description) VALUES (?,?,?,?,?,?)",
                    scans,
                )
                db.executemany(
                    "INSERT OR REPLACE INTO prearc_files(row_id, scan_id, resource, name, size, md5, sop_uid) "
                    "VALUES (?,?,?,?,?,?,?)",
                    files,
                )
                db.execute(
                    "UPDATE prearc SET lastmod = MAX(COALESCE(lastmod, 0), ?), "
                    "status = CASE WHEN status = ? THEN ? ELSE status END WHERE id = ?",
                    (touched, READY, RECEIVING, row_id),
                )

    def quiesce(self, row_id: int) -> None:
        """Before a row is archived or changed: no new file goes into it (placements look it up
        again), the files being written finish, and every placed file is in the database."""
        with self._lock:
            sessions = [s for s in self._open.values() if s.row.id == row_id]
            for key in [k for k, s in self._open.items() if s.row.id == row_id]:
                del self._open[key]
        for session in sessions:
            with session.lock:
                session.closed = True
                session.lock.wait_for(session.no_writers, timeout=60)
        self._commit(sessions)

    def forget(self, row_id: int) -> None:
        """The row changed in the database (status, project, deleted): check it before the next file."""
        with self._lock:
            for session in self._open.values():
                if session.row.id == row_id:
                    session.stale = True


def _format_date(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) >= 8 and value[:8].isdigit() else ""


def _format_time(value: str) -> str:
    if len(value) >= 6 and value[:6].isdigit():
        return f"{value[:2]}:{value[2:4]}:{value[4:6]}" + (value[6:10] if value[6:7] == "." else "")
    return ""


def next_free_scan_id(series_number: str, modality: str, taken: set[str]) -> str:
    if series_number not in taken:
        return series_number
    index = 1
    while f"{series_number}-{modality}{index}" in taken:
        index += 1
    return f"{series_number}-{modality}{index}"
