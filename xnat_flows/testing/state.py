"""Persistent emulator state: SQLite metadata plus files on disk under ``data_dir``.

Every mutation commits before the HTTP answer goes out, so a restart loses nothing acknowledged.
One connection guarded by one re-entrant lock: the emulator's load is small metadata writes, and
the bytes themselves move outside the lock (written to a temp file, then renamed into place);
the per-file import path (``placement``) writes its rows in batches, not per file.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import itertools
import json
import os
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS users(username TEXT PRIMARY KEY, password TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jsessions(token TEXT PRIMARY KEY, username TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS alias_tokens(alias TEXT PRIMARY KEY, secret TEXT NOT NULL, username TEXT NOT NULL,
    created REAL NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS projects(id TEXT PRIMARY KEY, name TEXT, description TEXT,
    prearchive_code INTEGER NOT NULL DEFAULT 4, insert_date TEXT);
CREATE TABLE IF NOT EXISTS subjects(id TEXT PRIMARY KEY, project TEXT NOT NULL, label TEXT NOT NULL,
    insert_date TEXT, UNIQUE(project, label));
CREATE TABLE IF NOT EXISTS experiments(id TEXT PRIMARY KEY, project TEXT NOT NULL, subject_id TEXT NOT NULL,
    label TEXT NOT NULL, xsi_type TEXT, uid TEXT, date TEXT, time TEXT, modality TEXT, insert_date TEXT,
    UNIQUE(project, label));
CREATE TABLE IF NOT EXISTS scans(experiment_id TEXT NOT NULL, scan_id TEXT NOT NULL, series_uid TEXT,
    series_number TEXT, xsi_type TEXT, type TEXT, series_description TEXT, modality TEXT,
    PRIMARY KEY(experiment_id, scan_id));
CREATE TABLE IF NOT EXISTS resources(id INTEGER PRIMARY KEY AUTOINCREMENT, experiment_id TEXT NOT NULL,
    scan_id TEXT NOT NULL DEFAULT '', label TEXT NOT NULL, format TEXT, content TEXT, tags TEXT,
    UNIQUE(experiment_id, scan_id, label));
CREATE TABLE IF NOT EXISTS files(resource_id INTEGER NOT NULL, path TEXT NOT NULL, size INTEGER, md5 TEXT,
    PRIMARY KEY(resource_id, path));
CREATE TABLE IF NOT EXISTS attrs(owner TEXT NOT NULL, path TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY(owner, path));
CREATE TABLE IF NOT EXISTS shares(owner TEXT NOT NULL, project TEXT NOT NULL, label TEXT NOT NULL,
    PRIMARY KEY(owner, project));
CREATE TABLE IF NOT EXISTS reconstructions(experiment_id TEXT NOT NULL, recon_id TEXT NOT NULL, type TEXT,
    PRIMARY KEY(experiment_id, recon_id));
CREATE TABLE IF NOT EXISTS prearc(id INTEGER PRIMARY KEY AUTOINCREMENT, project TEXT NOT NULL,
    timestamp TEXT NOT NULL, folder TEXT NOT NULL, name TEXT, subject TEXT, tag TEXT, status TEXT,
    scan_date TEXT, scan_time TEXT, uploaded TEXT, lastmod REAL, modality TEXT,
    direct_archive INTEGER NOT NULL DEFAULT 0, params TEXT NOT NULL DEFAULT '{}', log TEXT NOT NULL DEFAULT '[]',
    UNIQUE(project, timestamp, folder));
CREATE TABLE IF NOT EXISTS prearc_scans(row_id INTEGER NOT NULL, scan_id TEXT NOT NULL, series_uid TEXT,
    series_number TEXT, modality TEXT, series_description TEXT, PRIMARY KEY(row_id, scan_id));
CREATE TABLE IF NOT EXISTS prearc_files(row_id INTEGER NOT NULL, scan_id TEXT NOT NULL, resource TEXT NOT NULL,
    name TEXT NOT NULL, size INTEGER, md5 TEXT, sop_uid TEXT, PRIMARY KEY(row_id, scan_id, resource, name));
"""

# Prearchive statuses (xnat-web `PrearcUtils.PrearcStatus`) the emulator produces.
RECEIVING, READY, ARCHIVING, CONFLICT, ERROR, QUEUED_ARCHIVING, QUEUED_BUILDING = (
    "RECEIVING",
    "READY",
    "ARCHIVING",
    "CONFLICT",
    "ERROR",
    "QUEUED_ARCHIVING",
    "QUEUED_BUILDING",
)
AUTOARCHIVE_NAMES = {0: "Manual", 4: "AutoArchive", 5: "AutoArchiveOverwrite"}

_MODALITY_XSI = {
    "MR": "mr",
    "CT": "ct",
    "PT": "pet",
    "US": "us",
    "NM": "nm",
    "CR": "cr",
    "DX": "dx",
    "MG": "mg",
    "XA": "xa",
    "RF": "rf",
    "OP": "op",
    "IO": "io",
    "SR": "sr",
    "ECG": "ecg",
    "SM": "sm",
    "XC": "xc",
}


def session_xsi_type(modality: str) -> str:
    prefix = _MODALITY_XSI.get(modality.upper())
    return f"xnat:{prefix}SessionData" if prefix else "xnat:otherDicomSessionData"


def scan_xsi_type(modality: str) -> str:
    prefix = _MODALITY_XSI.get(modality.upper())
    if modality.upper() == "SEG":
        return "xnat:segScanData"
    return f"xnat:{prefix}ScanData" if prefix else "xnat:otherDicomScanData"


def now_text(with_millis: bool = True) -> str:
    stamp = dt.datetime.now()
    return (
        stamp.strftime("%Y-%m-%d %H:%M:%S.") + f"{stamp.microsecond // 1000:03d}"
        if with_millis
        else stamp.strftime("%Y-%m-%d %H:%M:%S")
    )


@dataclass
class PrearcRow:
    id: int
    project: str
    timestamp: str
    folder: str
    name: str
    subject: str
    tag: str
    status: str
    scan_date: str
    scan_time: str
    uploaded: str
    lastmod: float
    modality: str
    direct_archive: bool
    params: dict[str, str]
    log: list[str]

    @property
    def url(self) -> str:
        return f"/prearchive/projects/{self.project}/{self.timestamp}/{self.folder}"


def _row(record: sqlite3.Row) -> PrearcRow:
    return PrearcRow(
        id=record["id"],
        project=record["project"],
        timestamp=record["timestamp"],
        folder=record["folder"],
        name=record["name"] or "",
        subject=record["subject"] or "",
        tag=record["tag"] or "",
        status=record["status"],
        scan_date=record["scan_date"] or "",
        scan_time=record["scan_time"] or "",
        uploaded=record["uploaded"] or "",
        lastmod=record["lastmod"] or 0.0,
        modality=record["modality"] or "",
        direct_archive=bool(record["direct_archive"]),
        params=json.loads(record["params"]),
        log=json.loads(record["log"]),
    )


def write_stream_to(
    path: Path, chunks: Iterator[bytes] | bytes, tmp_dir: Path, check_space: Callable[[], None] | None = None
) -> tuple[int, str]:
    """Write bytes atomically (temp file + rename) and return (size, md5).

    ``check_space`` raises ENOSPC while a test simulates a full disk. A failed write removes its
    temp file, so the space comes back when the disk does."""
    if check_space is not None:
        check_space()
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.md5()
    size = 0
    fd, tmp_name = fresh_temp_file(tmp_dir)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in [chunks] if isinstance(chunks, bytes) else chunks:
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return size, digest.hexdigest()


def is_disk_full(exc: BaseException) -> bool:
    """A write failed for want of space: ENOSPC/EDQUOT, or SQLite's "database or disk is full"."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower()


_temp_counter = itertools.count()


def fresh_temp_file(tmp_dir: Path) -> tuple[int, str]:
    """A fresh temp file; cheaper than mkstemp's random names (one per DICOM instance)."""
    name = f"{tmp_dir}/part-{os.getpid()}-{threading.get_ident()}-{next(_temp_counter)}"
    try:
        return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), name
    except FileNotFoundError:
        tmp_dir.mkdir(parents=True, exist_ok=True)
        return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), name


class Store:
    """All emulator state. Paths: prearchive/{row_id}/{scan}/{resource}/{name}, archive/{resource_id}/{path}."""

    def __init__(self, data_dir: Path, site_id: str) -> None:
        self.data_dir = data_dir
        self.site_id = site_id
        self.tmp_dir = data_dir / "tmp"
        self.prearc_dir = data_dir / "prearchive"
        self.archive_dir = data_dir / "archive"
        for directory in (self.tmp_dir, self.prearc_dir, self.archive_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self._db = sqlite3.connect(data_dir / "emulator.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._migrate()
        self._last_stamp = ""
        self.check_space: Callable[[], None] | None = None  # the emulator's simulated-disk-full check
        # Called with a prearchive row's id when the row changes or goes (the per-file path's cache).
        self.on_prearc_change: Callable[[int], None] | None = None
        # XNAT's site setting `checksums` (on in xnat-web's site-config.properties): catalogs carry MD5s.
        self.checksums = True
        self._project_ids: frozenset[str] | None = None

    def _migrate(self) -> None:
        """Columns added after the first release, for data dirs made by an older emulator."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(experiments)")}
        if "session_id" not in columns:  # assessors: the image session they assess
            self._db.execute("ALTER TABLE experiments ADD COLUMN session_id TEXT NOT NULL DEFAULT ''")

    def close(self) -> None:
        with self.lock:
            self._db.close()

    # -- low level -----------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self.lock:
            return self._db.execute(sql, args).fetchall()

    def query_one(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Row | None:
        rows = self.query(sql, args)
        return rows[0] if rows else None

    def next_accession(self, kind: str) -> str:
        """Site-wide accession IDs: {SITE}_E00001 / {SITE}_S00001 (xnat-web `XnatExperimentdata.CreateNewID`)."""
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO counters(name, value) VALUES (?, 0)", (kind,))
            db.execute("UPDATE counters SET value = value + 1 WHERE name = ?", (kind,))
            value = db.execute("SELECT value FROM counters WHERE name = ?", (kind,)).fetchone()[0]
        return f"{self.site_id}_{kind}{value:05d}"

    # -- users and JSESSIONs ---------------------------------------------------------------------
    def ensure_user(self, username: str, password: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO users(username, password) VALUES (?, ?)", (username, password))

    def check_password(self, username: str, password: str) -> bool:
        row = self.query_one("SELECT password FROM users WHERE username = ?", (username,))
        return row is not None and secrets.compare_digest(row["password"], password)

    def user_for_credentials(self, name: str, secret: str) -> str | None:
        """The user behind username:password or alias:secret (XNAT wiki: User Alias Token API), or None."""
        if self.check_password(name, secret):
            return name
        token = self.query_one("SELECT * FROM alias_tokens WHERE alias = ?", (name,))
        if token is not None and secrets.compare_digest(token["secret"], secret) and token["expires"] > time.time():
            return str(token["username"])
        return None

    def issue_alias_token(self, username: str, lifetime: float = 2 * 24 * 3600) -> sqlite3.Row:
        import uuid

        alias, secret, now = str(uuid.uuid4()), secrets.token_urlsafe(48), time.time()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO alias_tokens(alias, secret, username, created, expires) VALUES (?,?,?,?,?)",
                (alias, secret, username, now, now + lifetime),
            )
        found = self.query_one("SELECT * FROM alias_tokens WHERE alias = ?", (alias,))
        assert found is not None
        return found

    def invalidate_alias_token(self, alias: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM alias_tokens WHERE alias = ?", (alias,))

    def create_jsession(self, username: str) -> str:
        token = secrets.token_hex(16).upper()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO jsessions(token, username, created) VALUES (?, ?, ?)", (token, username, time.time())
            )
        return token

    def delete_jsessions(self, tokens: list[str]) -> None:
        with self.transaction() as db:
            db.executemany("DELETE FROM jsessions WHERE token = ?", [(t,) for t in tokens])

    def jsessions(self) -> list[sqlite3.Row]:
        return self.query("SELECT token, username, created FROM jsessions ORDER BY created")

    # -- projects ------------------------------------------------------------------------------
    def ensure_project(self, project_id: str, prearchive_code: int = 4) -> bool:
        """Create a project if missing; True when it was created."""
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO projects(id, name, description, prearchive_code, insert_date) VALUES (?,?,?,?,?)",
                (project_id, project_id, "", prearchive_code, now_text()),
            )
            self._project_ids = None
            return cursor.rowcount == 1

    def project(self, project_id: str) -> sqlite3.Row | None:
        return self.query_one("SELECT * FROM projects WHERE id = ?", (project_id,))

    def project_ids(self) -> frozenset[str]:
        """Every project's ID; kept in memory (an import asks for every file) until projects change."""
        known = self._project_ids
        if known is None:
            with self.lock:
                known = self._project_ids = frozenset(r["id"] for r in self.query("SELECT id FROM projects"))
        return known

    def projects_changed(self) -> None:
        self._project_ids = None

    def set_prearchive_code(self, project_id: str, code: int) -> None:
        with self.transaction() as db:
            db.execute("UPDATE projects SET prearchive_code = ? WHERE id = ?", (code, project_id))

    # -- prearchive rows -------------------------------------------------------------------------
    def new_timestamp(self) -> str:
        """yyyyMMdd_HHmmssSSS, unique per emulator (bumped by a millisecond on collision)."""
        with self.lock:
            stamp = dt.datetime.now()
            text = stamp.strftime("%Y%m%d_%H%M%S") + f"{stamp.microsecond // 1000:03d}"
            if text <= self._last_stamp:
                last = dt.datetime.strptime(self._last_stamp, "%Y%m%d_%H%M%S%f")
                bumped = last + dt.timedelta(milliseconds=1)
                text = bumped.strftime("%Y%m%d_%H%M%S") + f"{bumped.microsecond // 1000:03d}"
            self._last_stamp = text
            return text

    def prearc_row(self, row_id: int) -> PrearcRow | None:
        record = self.query_one("SELECT * FROM prearc WHERE id = ?", (row_id,))
        return _row(record) if record else None

    def prearc_by_url(self, project: str, timestamp: str, folder: str) -> PrearcRow | None:
        record = self.query_one(
            "SELECT * FROM prearc WHERE project = ? AND timestamp = ? AND folder = ?", (project, timestamp, folder)
        )
        return _row(record) if record else None

    def prearc_rows(self, projects: list[str] | None = None, include_direct: bool = False) -> list[PrearcRow]:
        rows = [_row(r) for r in self.query("SELECT * FROM prearc ORDER BY id")]
        if not include_direct:
            rows = [r for r in rows if not r.direct_archive]
        if projects is not None:
            rows = [r for r in rows if r.project in projects]
        return rows

    def find_open_row(
        self, project: str, tag: str, label: str, direct_archive: bool, timestamp: str | None, folder: str | None
    ) -> PrearcRow | None:
        """The session an instance appends to: same project + StudyInstanceUID
        (xnat-web `PrearcDatabase.eitherGetOrCreateSession`)."""
        sql = "SELECT * FROM prearc WHERE project = ? AND tag = ? AND direct_archive = ? AND status IN (?, ?, ?)"
        args: list[Any] = [project, tag, int(direct_archive), RECEIVING, READY, QUEUED_ARCHIVING]
        if timestamp:
            sql += " AND timestamp = ?"
            args.append(timestamp)
        if folder:
            sql += " AND folder = ?"
            args.append(folder)
        else:
            sql += " AND name = ?"
            args.append(label)
        record = self.query_one(sql + " ORDER BY id DESC", tuple(args))
        return _row(record) if record else None

    def find_direct_archive_row(self, project: str, tag: str, label: str) -> PrearcRow | None:
        """The Direct-Archive session of this project, StudyInstanceUID and label, whatever its status
        (xnat-web `DirectArchiveSessionDao.findByProjectTagName`)."""
        record = self.query_one(
            "SELECT * FROM prearc WHERE project = ? AND tag = ? AND name = ? AND direct_archive = 1 ORDER BY id DESC",
            (project, tag, label),
        )
        return _row(record) if record else None

    def archive_folder_taken(self, project: str, folder: str) -> bool:
        """The project's archive has a session directory of this name: an archived session labelled so,
        or a Direct-Archive session writing into it."""
        return (
            self.query_one(
                "SELECT 1 FROM experiments WHERE project = ? AND label = ? UNION ALL "
                "SELECT 1 FROM prearc WHERE project = ? AND folder = ? AND direct_archive = 1",
                (project, folder, project, folder),
            )
            is not None
        )

    def insert_prearc_row(self, **fields: Any) -> PrearcRow:
        fields.setdefault("uploaded", now_text())
        fields.setdefault("lastmod", time.time())
        fields["params"] = json.dumps(fields.get("params", {}))
        fields["direct_archive"] = int(fields.get("direct_archive", False))
        columns = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        with self.transaction() as db:
            cursor = db.execute(f"INSERT INTO prearc({columns}) VALUES ({marks})", tuple(fields.values()))
            row_id = cursor.lastrowid
        row = self.prearc_row(int(row_id or 0))
        assert row is not None
        return row

    def update_prearc(self, row_id: int, **fields: Any) -> None:
        if "params" in fields:
            fields["params"] = json.dumps(fields["params"])
        if "log" in fields:
            fields["log"] = json.dumps(fields["log"])
        if "direct_archive" in fields:
            fields["direct_archive"] = int(fields["direct_archive"])
        assignments = ", ".join(f"{k} = ?" for k in fields)
        with self.transaction() as db:
            db.execute(f"UPDATE prearc SET {assignments} WHERE id = ?", (*fields.values(), row_id))
            self._prearc_changed(row_id)

    def _prearc_changed(self, row_id: int) -> None:
        if self.on_prearc_change is not None:
            self.on_prearc_change(row_id)

    def append_prearc_log(self, row_id: int, entry: str) -> None:
        row = self.prearc_row(row_id)
        if row is not None:
            self.update_prearc(row_id, log=[*row.log, f"{now_text()} {entry}"])

    def delete_prearc_row(self, row_id: int) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM prearc WHERE id = ?", (row_id,))
            db.execute("DELETE FROM prearc_scans WHERE row_id = ?", (row_id,))
            db.execute("DELETE FROM prearc_files WHERE row_id = ?", (row_id,))
            self._prearc_changed(row_id)
        shutil.rmtree(self.prearc_dir / str(row_id), ignore_errors=True)

    def prearc_scans(self, row_id: int) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM prearc_scans WHERE row_id = ? ORDER BY rowid", (row_id,))

    def prearc_files(self, row_id: int, scan_id: str | None = None) -> list[sqlite3.Row]:
        if scan_id is None:
            return self.query("SELECT * FROM prearc_files WHERE row_id = ? ORDER BY scan_id, name", (row_id,))
        return self.query(
            "SELECT * FROM prearc_files WHERE row_id = ? AND scan_id = ? ORDER BY name", (row_id, scan_id)
        )

    def prearc_file_path(self, row_id: int, scan_id: str, resource: str, name: str) -> Path:
        return self.prearc_dir / str(row_id) / scan_id / resource / name

    # -- archive ---------------------------------------------------------------------------------
    def experiment(self, ref: str, project: str | None = None) -> sqlite3.Row | None:
        """By accession ID, or (within a project) by label."""
        if project is None:
            return self.query_one("SELECT * FROM experiments WHERE id = ?", (ref,))
        return self.query_one(
            "SELECT * FROM experiments WHERE project = ? AND (id = ? OR label = ?) ORDER BY id = ? DESC",
            (project, ref, ref, ref),
        )

    def subject(self, ref: str, project: str | None = None) -> sqlite3.Row | None:
        if project is None:
            return self.query_one("SELECT * FROM subjects WHERE id = ?", (ref,))
        return self.query_one("SELECT * FROM subjects WHERE project = ? AND (id = ? OR label = ?)", (project, ref, ref))

    def ensure_subject(self, project: str, label: str) -> sqlite3.Row:
        with self.lock:
            existing = self.subject(label, project)
            if existing is not None:
                return existing
            subject_id = self.next_accession("S")
            with self.transaction() as db:
                db.execute(
                    "INSERT INTO subjects(id, project, label, insert_date) VALUES (?, ?, ?, ?)",
                    (subject_id, project, label, now_text()),
                )
            found = self.subject(subject_id)
            assert found is not None
            return found

    def resource(self, experiment_id: str, scan_id: str, label: str) -> sqlite3.Row | None:
        return self.query_one(
            "SELECT * FROM resources WHERE experiment_id = ? AND scan_id = ? AND label = ?",
            (experiment_id, scan_id, label),
        )

    def ensure_resource(
        self, experiment_id: str, scan_id: str, label: str, fmt: str = "", content: str = "", tags: str = ""
    ) -> tuple[sqlite3.Row, bool]:
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO resources(experiment_id, scan_id, label, format, content, tags) VALUES (?,?,?,?,?,?)",
                (experiment_id, scan_id, label, fmt, content, tags),
            )
            created = cursor.rowcount == 1
        found = self.resource(experiment_id, scan_id, label)
        assert found is not None
        return found, created

    def resource_dir(self, resource_id: int) -> Path:
        return self.archive_dir / str(resource_id)

    def record_file(self, resource_id: int, path: str, size: int, md5: str) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO files(resource_id, path, size, md5) VALUES (?, ?, ?, ?)",
                (resource_id, path, size, md5),
            )

    def files(self, resource_id: int) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM files WHERE resource_id = ? ORDER BY path", (resource_id,))

    def digests(self, table: str, key: dict[str, Any], names: dict[str, Path]) -> dict[str, str]:
        """MD5s of the files ``names`` (name -> path) in ``table`` (``files`` or ``prearc_files``,
        rows picked by ``key``), computed and stored the first time they are asked for; empty
        when the site's ``checksums`` setting is off.

        XNAT computes them when it builds a session's catalog; the emulator when they are first
        listed: the same values, without hashing every file of an import on its way in."""
        if not self.checksums or not names:
            return {}
        name_column = "path" if table == "files" else "name"
        where = " AND ".join(f"{column} = ?" for column in key)
        known = {
            r[name_column]: r["md5"]
            for r in self.query(f"SELECT {name_column}, md5 FROM {table} WHERE {where}", tuple(key.values()))
        }
        missing = {n: p for n, p in names.items() if not known.get(n)}
        computed = {}
        for name, path in missing.items():
            digest = hashlib.md5()
            try:
                with open(path, "rb") as handle:
                    while chunk := handle.read(1024 * 1024):
                        digest.update(chunk)
            except OSError:
                continue
            computed[name] = digest.hexdigest()
        if computed:
            with self.transaction() as db:
                db.executemany(
                    f"UPDATE {table} SET md5 = ? WHERE {where} AND {name_column} = ?",
                    [(md5, *key.values(), name) for name, md5 in computed.items()],
                )
        return {n: known.get(n) or computed.get(n, "") for n in names}
