"""Prearchive sessions: placing instances, the idle rebuilder and archiving.

As xnat-web's `GradualDicomImporter`, `SessionXMLRebuilder`, `PrearcSessionArchiver` and `Archiver` do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import TYPE_CHECKING

from xnat_flows.testing.dicomhdr import InstanceHeader, UnparsableDicom, read_header
from xnat_flows.testing.faults import Faults
from xnat_flows.testing.placement import Held, Placement, Placements, next_free_scan_id
from xnat_flows.testing.state import (
    ARCHIVING,
    CONFLICT,
    ERROR,
    QUEUED_ARCHIVING,
    QUEUED_BUILDING,
    READY,
    RECEIVING,
    PrearcRow,
    Store,
    now_text,
    scan_xsi_type,
    session_xsi_type,
)

if TYPE_CHECKING:
    from xnat_flows.testing.anon_config import AnonScripts

log = logging.getLogger(__name__)

UNASSIGNED = "Unassigned"


class XnatRefusal(Exception):
    """A refusal with the HTTP status and message XNAT would send."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def is_true(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def archive_uri(project: str, subject_id: str, experiment_id: str) -> str:
    return f"/data/archive/projects/{project}/subjects/{subject_id}/experiments/{experiment_id}"


def prearchive_uri(row: PrearcRow) -> str:
    return "/data" + row.url


def direct_archive_uri(row: PrearcRow) -> str:
    return f"/xapi/direct-archive/{row.project}/{row.tag}/{row.name}"


def _overwrite_mode(value: str | None) -> str | None:
    """None (fail if exists), 'append' or 'override' (xnat-web
    `Importer.parseOverrideValue`: any unknown value acts as append)."""
    if value is None or value == "":
        return None
    return "override" if value.lower() in {"delete", "override"} else "append"


class Prearchive:
    def __init__(
        self, store: Store, faults: Faults, rebuild_idle_seconds: float, anon_scripts: AnonScripts | None = None
    ) -> None:
        self.store = store
        self.faults = faults
        self.rebuild_idle_seconds = rebuild_idle_seconds
        if anon_scripts is None:
            from xnat_flows.testing.anon_config import AnonScripts

            anon_scripts = AnonScripts()
        self.anon_scripts = anon_scripts
        self._stop = threading.Event()
        self._wake = threading.Event()  # a session was queued: the rebuilder takes it now
        self._thread: threading.Thread | None = None
        self.placements = Placements(store)

    def holding(self) -> contextlib.AbstractContextManager[Held]:
        """An import request's placements, kept from the idle rebuilder until it ends (``placement``)."""
        return self.placements.holding()

    def _is_held(self, row_id: int) -> bool:
        """An import request still running places instances in this row (``holding``)."""
        return self.placements.is_held(row_id)

    def place_instance(self, header: InstanceHeader, data: bytes, where: Placement, held: Held) -> PrearcRow:
        """Store one instance in its prearchive session, creating session and scan as needed."""
        return self.placements.place(header, data, where, held)

    # -- building and archiving ------------------------------------------------------------------
    def build(self, row_id: int) -> PrearcRow:
        """Rebuild the session document; the emulator's build only applies forced failures."""
        row = self._require(row_id)
        forced = self.faults.take_forced_outcome()
        if forced is not None:
            self._fail(row, forced, "forced by fault injection")
            raise XnatRefusal(409 if forced == CONFLICT else 500, f"Session build ended in {forced}")
        if row.status != READY:
            self.store.update_prearc(row_id, status=READY)
        return self._require(row_id)

    def archive(
        self,
        row_id: int,
        *,
        overwrite: str | None = None,
        overwrite_files: bool = False,
        project: str | None = None,
        subject: str | None = None,
        label: str | None = None,
    ) -> str:
        """Move a prearchive session into the archive, applying XNAT's merge rules (xnat-web `PrearcSessionArchiver`)."""
        store = self.store
        with store.lock:
            self.placements.quiesce(row_id)  # files still being written into it are in, no new ones
            row = store.prearc_row(row_id)
            if row is None:
                raise XnatRefusal(404, "Unknown prearchive session.")
            if row.status == ARCHIVING:
                raise XnatRefusal(403, "Operation already in progress on this prearchive entry.")
            if row.project == UNASSIGNED:
                raise XnatRefusal(400, "Cannot archive sessions from the Unassigned folder.")
            if project and project != row.project:
                raise XnatRefusal(
                    400,
                    "Project mismatch: source and destination must refer to the same project. "
                    "You should change the project in the Prearchive prior to running this "
                    "Archive operation.",
                )
            subject_label = subject or row.subject
            session_label = label or row.name
            if not subject_label:
                raise XnatRefusal(400, "Unable to identify subject.")
            if not session_label:
                raise XnatRefusal(400, "unable to deduce session label")
            files = store.prearc_files(row_id)
            if not files:
                self._fail(row, ERROR, "Empty sessions cannot be archived.")
                raise XnatRefusal(500, "Empty sessions cannot be archived.")
            mode = _overwrite_mode(overwrite)
            existing = store.experiment(session_label, row.project)
            try:
                scan_targets = self._plan_scans(row, existing, mode, overwrite_files, subject_label)
            except XnatRefusal as refusal:  # XNAT leaves a refused merge in CONFLICT
                self._fail(row, CONFLICT, refusal.message)
                raise
            store.update_prearc(row_id, status=ARCHIVING)
            try:
                return self._move_into_archive(row, existing, subject_label, session_label, scan_targets, files)
            except Exception as exc:  # disk or database trouble: XNAT marks the row ERROR
                self._fail(row, ERROR, f"archive failed: {exc}")
                raise XnatRefusal(500, f"The session {row.url} did not return a valid data URI.") from exc

    def _plan_scans(
        self, row: PrearcRow, existing, mode: str | None, overwrite_files: bool, subject_label: str
    ) -> dict[str, str]:
        """Map each prearchive scan to its archive scan ID, or raise the archiver's 409."""
        store = self.store
        incoming = store.prearc_scans(row.id)
        if existing is None:
            return {str(s["scan_id"]): str(s["scan_id"]) for s in incoming}
        if mode is None:
            raise XnatRefusal(409, "Session already exists, retry with overwrite enabled")
        override = mode == "override"
        # xnat-web `PrearcSessionArchiver.checkForConflicts`: a merge never moves a session to another
        # subject, whatever the overwrite mode; only the study UID check is skipped by delete/override.
        archived_subject = store.subject(existing["subject_id"])
        if archived_subject is not None and archived_subject["label"].lower() != subject_label.lower():
            raise XnatRefusal(
                409,
                f"Invalid modification of session subject via archive process.: {existing['label']} "
                "Already Exists for another Subject",
            )
        if not override:
            for what, old, new in (("UID", existing["uid"], row.tag), ("modality", existing["modality"], row.modality)):
                if old and new and old != new:
                    raise XnatRefusal(409, f"Invalid modification of session {what} via archive process.")
        archived = {
            str(s["scan_id"]): s for s in store.query("SELECT * FROM scans WHERE experiment_id = ?", (existing["id"],))
        }
        taken = set(archived)
        targets: dict[str, str] = {}
        for scan in incoming:
            scan_id = str(scan["scan_id"])
            same_uid = [s for s in archived.values() if s["series_uid"] == scan["series_uid"]]
            if same_uid:
                target = str(same_uid[0]["scan_id"])
                if target != scan_id and not override:
                    raise XnatRefusal(
                        409,
                        f"Session already contains a scan ({target}) with the same UID, "
                        f"but a different number ({scan_id}).",
                    )
                if not (override or overwrite_files) and self._has_duplicate_files(
                    row.id, scan_id, existing["id"], target
                ):
                    raise XnatRefusal(409, f"Session already contains a scan ({target}) with the same UID and number.")
            elif scan_id in taken:
                target = next_free_scan_id(scan["series_number"] or scan_id, scan["modality"] or "", taken)
            else:
                target = scan_id
            taken.add(target)
            targets[scan_id] = target
        return targets

    def _has_duplicate_files(self, row_id: int, scan_id: str, experiment_id: str, target: str) -> bool:
        for prearc_file in self.store.prearc_files(row_id, scan_id):
            resource = self.store.resource(experiment_id, target, prearc_file["resource"])
            if resource is not None and self.store.query_one(
                "SELECT 1 FROM files WHERE resource_id = ? AND path = ?", (resource["id"], prearc_file["name"])
            ):
                return True
        return False

    def _move_into_archive(
        self, row: PrearcRow, existing, subject_label: str, session_label: str, scan_targets: dict[str, str], files
    ) -> str:
        store = self.store
        subject_row = store.ensure_subject(row.project, subject_label)
        if existing is None:
            experiment_id = store.next_accession("E")
            with store.transaction() as db:
                db.execute(
                    "INSERT INTO experiments(id, project, subject_id, label, xsi_type, uid, date, time, modality, "
                    "insert_date) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (
                        experiment_id,
                        row.project,
                        subject_row["id"],
                        session_label,
                        session_xsi_type(row.modality),
                        row.tag,
                        row.scan_date,
                        row.scan_time,
                        row.modality,
                        now_text(),
                    ),
                )
            self._record_patient(row, experiment_id)
        else:  # same subject: ``_plan_scans`` refuses a merge that would move the session
            experiment_id = existing["id"]
        scans = {str(s["scan_id"]): s for s in store.prearc_scans(row.id)}
        with store.transaction() as db:
            for source_id, target_id in scan_targets.items():
                scan = scans[source_id]
                db.execute(
                    "INSERT OR REPLACE INTO scans(experiment_id, scan_id, series_uid, series_number, xsi_type, type, "
                    "series_description, modality) VALUES (?,?,?,?,?,?,?,?)",
                    (
                        experiment_id,
                        target_id,
                        scan["series_uid"],
                        scan["series_number"],
                        scan_xsi_type(scan["modality"] or row.modality),
                        scan["series_description"] or "",
                        scan["series_description"] or "",
                        scan["modality"] or "",
                    ),
                )
        resource_ids: dict[tuple[str, str], int] = {}
        for key in {(scan_targets[str(f["scan_id"])], f["resource"]) for f in files}:
            resource, _ = store.ensure_resource(experiment_id, key[0], key[1], "DICOM", "RAW")
            resource_ids[key] = resource["id"]
            store.resource_dir(resource["id"]).mkdir(parents=True, exist_ok=True)
        records = []
        for prearc_file in files:
            resource_id = resource_ids[(scan_targets[str(prearc_file["scan_id"])], prearc_file["resource"])]
            os.replace(
                store.prearc_file_path(row.id, prearc_file["scan_id"], prearc_file["resource"], prearc_file["name"]),
                store.resource_dir(resource_id) / prearc_file["name"],
            )
            records.append((resource_id, prearc_file["name"], prearc_file["size"], prearc_file["md5"]))
        with store.transaction() as db:  # one commit for the whole session
            db.executemany("INSERT OR REPLACE INTO files(resource_id, path, size, md5) VALUES (?, ?, ?, ?)", records)
        store.delete_prearc_row(row.id)
        return archive_uri(row.project, subject_row["id"], experiment_id)

    def _record_patient(self, row: PrearcRow, experiment_id: str) -> None:
        """XNAT keeps the DICOM patient of a session (``dcmPatientId``, ``dcmPatientName``), read
        from its files; a client compares them before merging into it."""
        first = next(iter(self.store.prearc_files(row.id)), None)
        if first is None:
            return
        path = self.store.prearc_file_path(row.id, first["scan_id"], first["resource"], first["name"])
        try:
            header = read_header(path.read_bytes(), first["name"])
        except (OSError, UnparsableDicom):
            return
        values = {"dcmPatientId": header.patient_id, "dcmPatientName": header.patient_name}
        with self.store.transaction() as db:
            for name, value in values.items():
                if value:
                    db.execute(
                        "INSERT OR REPLACE INTO attrs(owner, path, value) VALUES (?, ?, ?)",
                        (experiment_id, name, value),
                    )

    def _fail(self, row: PrearcRow, status: str, reason: str) -> None:
        entry = f"Attempt to direct-archive failed: {reason}" if row.direct_archive else reason
        self.store.update_prearc(row.id, status=status, direct_archive=False)
        self.store.append_prearc_log(row.id, entry)

    def _require(self, row_id: int) -> PrearcRow:
        row = self.store.prearc_row(row_id)
        if row is None:
            raise XnatRefusal(404, "Unknown prearchive session.")
        return row

    def auto_archive_overwrite(self, row: PrearcRow) -> str:
        """Request's overwrite if given, else the project code's default (4 append, 5 delete)."""
        if row.params.get("overwrite"):
            return row.params["overwrite"]
        project = self.store.project(row.project)
        return "delete" if project is not None and project["prearchive_code"] == 5 else "append"

    def archive_with_fallback(self, row: PrearcRow, overwrite: str | None) -> str | None:
        """Archive; on failure leave the row in CONFLICT (409s) or ERROR and return None."""
        try:
            return self.archive(row.id, overwrite=overwrite, overwrite_files=is_true(row.params.get("overwrite_files")))
        except XnatRefusal as exc:
            if exc.status != 404:
                current = self.store.prearc_row(row.id)
                if current is not None and current.status not in (ERROR, CONFLICT):
                    self._fail(current, CONFLICT if exc.status == 409 else ERROR, exc.message)
            return None

    # -- the idle rebuilder (XNAT's SessionXMLRebuilder) -----------------------------------------
    def finish_receiving(self, row: PrearcRow) -> None:
        forced = self.faults.take_forced_outcome()
        if forced is not None:
            self._fail(row, forced, "forced by fault injection")
            return
        if row.direct_archive:
            self.archive_with_fallback(row, row.params.get("overwrite") or None)
            return
        project = self.store.project(row.project)
        auto_archive = project is not None and project["prearchive_code"] in (4, 5)
        routed = row.params.get("AA", "").lower()  # `AA:true|false` in the routing comment wins (XNAT 1.7+)
        if routed in ("true", "false"):
            auto_archive = routed == "true"
        if auto_archive:
            self.archive_with_fallback(row, self.auto_archive_overwrite(row))
        else:
            self.store.update_prearc(row.id, status=READY)

    def trigger_direct_archive(self, project: str, tag: str, label: str) -> None:
        """Queue a Direct-Archive session for building and archiving now, not after the idle
        interval (xnat-web `DirectArchiveSessionApi.triggerArchive`, XNAT 1.8.4+): refused while
        a request is still writing into it; the archiving itself happens on the rebuilder."""
        with self.store.lock:
            rows = [
                r
                for r in self.store.prearc_rows([project], include_direct=True)
                if r.direct_archive and r.tag == tag and r.name == label and r.status == RECEIVING
            ]
            if not rows:
                raise XnatRefusal(404, f"No direct archive session found for {project}/{tag}/{label}")
            row = rows[-1]
            if self._is_held(row.id):
                raise XnatRefusal(
                    400,
                    f"Refusing to trigger archive on DirectArchiveSession id={row.id} because it is "
                    "still receiving new files or doesn't have an id",
                )
            self.store.update_prearc(row.id, status=QUEUED_BUILDING)
        self._wake.set()

    def tick(self) -> None:
        for candidate in self.store.prearc_rows(include_direct=True):
            if candidate.status not in (QUEUED_ARCHIVING, QUEUED_BUILDING, RECEIVING):
                continue
            try:
                with self.store.lock:  # re-read under the lock: an instance may just have arrived
                    row = self.store.prearc_row(candidate.id)
                    if row is None or self._is_held(row.id):
                        continue
                    if row.status == QUEUED_BUILDING and row.direct_archive:
                        self.finish_receiving(row)
                    elif row.status == QUEUED_ARCHIVING:
                        self.archive_with_fallback(row, self.auto_archive_overwrite(row))
                    elif (
                        row.status == RECEIVING
                        and time.time() - self.placements.last_touched(row) >= self.rebuild_idle_seconds
                        and not is_true(row.params.get("prevent_auto_commit"))
                        and row.params.get("SOURCE", "").lower() != "uploader"
                    ):
                        self.finish_receiving(row)
            except Exception:  # keep the rebuilder alive whatever one session does
                log.exception("rebuilder failed on prearchive row %s", candidate.id)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="xnat-emulator-rebuilder", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        """The idle rebuilder's thread is alive (a stopped one leaves every session as it is)."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        interval = max(0.02, min(0.5, self.rebuild_idle_seconds / 5))
        while True:
            self._wake.wait(interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.tick()
            except Exception:  # the pass's own query failed (e.g. a busy database): try again next pass
                log.exception("rebuilder pass failed")
