"""XNAT's object model over the emulator's store: projects, subjects, experiments (image sessions),
scans, assessors, reconstructions, resources and files, and the one walk that turns a REST path
into objects.

The hierarchy and the ways of naming each object follow XNAT's REST API ("REST Enhanced Listing
Options", the Subject/Experiment/Image Scan/Image Assessor Resource API pages) and xnat-web's
``org.nrg.xnat.restlet.resources``: subjects and experiments by accession ID anywhere or by label
within a project (their own or one they are shared into), scans by ID, by a comma list, by type
or ``ALL``, resources by label or by ``xnat_abstractresource_id``.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from xnat_flows.testing.prearchive import XnatRefusal
from xnat_flows.testing.state import Store, now_text

# Abstract types a listing's xsiType filter may name, and what they contain (XNAT's xnat.xsd).
_ABSTRACT = {
    "xnat:experimentdata": lambda t: True,
    "xnat:subjectassessordata": lambda t: t.endswith("sessiondata") or t == "xnat:subjectvariablesdata",
    "xnat:imagesessiondata": lambda t: t.endswith("sessiondata"),
    "xnat:imageassessordata": lambda t: t.endswith(("assessordata", "assessmentdata")),
    "xnat:deriveddata": lambda t: t.endswith(("assessordata", "assessmentdata")),
    "xnat:imagescandata": lambda t: t.endswith("scandata"),
    "xnat:abstractresource": lambda t: t.startswith("xnat:resource"),
}


def is_a(xsi_type: str, wanted: str) -> bool:
    """xsiType ``xsi_type`` is ``wanted`` or extends it (case-insensitive, as XNAT compares them)."""
    actual, wanted = (xsi_type or "").lower(), wanted.lower()
    if actual == wanted:
        return True
    check = _ABSTRACT.get(wanted)
    return bool(check and check(actual))


def project_owner(project_id: str) -> str:
    """Resources and attributes are owned by an object key; projects' keys are kept apart from IDs."""
    return f"project:{project_id}"


@dataclass
class Obj:
    """One object of the archive, with the project it was addressed through (for shared objects)."""

    kind: str  # project | subject | experiment | assessor | scan | reconstruction | resource
    row: sqlite3.Row | dict[str, Any]
    parent: Obj | None = None
    project: str = ""  # the project in the request path (a share's project when addressed through it)

    @property
    def id(self) -> str:
        if self.kind == "scan":
            return str(self.row["scan_id"])
        if self.kind == "reconstruction":
            return str(self.row["recon_id"])
        return str(self.row["id"])

    @property
    def owner(self) -> str:
        """Key of this object as a parent of resources, custom fields and shares."""
        if self.kind == "project":
            return project_owner(self.id)
        if self.kind == "scan":
            return f"{self.row['experiment_id']}:scan:{self.id}"
        if self.kind == "reconstruction":
            return f"{self.row['experiment_id']}:recon:{self.id}"
        return self.id

    def resource_parent(self) -> tuple[str, str]:
        """(experiment_id, scan_id) columns under which this object's resources are stored."""
        if self.kind == "scan":
            return str(self.row["experiment_id"]), self.id
        if self.kind == "reconstruction":
            return f"{self.row['experiment_id']}:recon:{self.id}", ""
        if self.kind == "project":
            return project_owner(self.id), ""
        return self.id, ""

    @property
    def label(self) -> str:
        if self.kind in ("subject", "experiment", "assessor", "resource"):
            return str(self.row["label"])
        return self.id


@dataclass
class ScanSet:
    """``scans/1,2``, ``scans/T1w`` or ``scans/ALL``: several scans addressed at once."""

    experiment: Obj
    scans: list[Obj]
    ref: str


@dataclass
class ResourceSet:
    """``resources/DICOM,SNAPSHOTS`` or resources of a scan set (``scans/ALL/resources/DICOM``)."""

    parent: Obj | ScanSet
    resources: list[Obj]
    ref: str


@dataclass
class Target:
    """Where a path leads: ``obj`` (or a scan set), then maybe a collection and an unresolved name."""

    obj: Obj | ScanSet | ResourceSet | None
    collection: str | None = None  # "subjects", "resources", "files", ... below obj
    name: str | None = None  # an unresolved member of the collection (e.g. for creation)
    rest: list[str] = field(default_factory=list)  # segments after an unresolved name / the file path

    @property
    def is_object(self) -> bool:
        return self.collection is None


_CHILDREN = {
    None: ("projects", "subjects", "experiments"),
    "project": ("subjects", "experiments", "resources", "files"),
    "subject": ("experiments", "resources", "projects", "files"),
    "experiment": ("scans", "assessors", "reconstructions", "resources", "projects", "files"),
    "assessor": ("resources", "projects", "files", "out", "in"),
    "scan": ("resources", "files"),
    "reconstruction": ("resources", "files", "out", "in"),
    "scanset": ("resources", "files"),
    "resource": ("files",),
    "resourceset": ("files",),
}


class Archive:
    """Look-ups and changes of archive objects (the store holds the rows)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- the walk ----------------------------------------------------------------------------------
    def resolve(self, segments: list[str]) -> Target | None:
        """Walk ``segments`` (the path after ``/data`` or ``/data/archive``); None when the path names
        no collection XNAT has (404)."""
        current: Obj | ScanSet | ResourceSet | None = None
        index = 0
        while index < len(segments):
            if isinstance(current, (ScanSet, ResourceSet)):
                kind: str | None = "scanset" if isinstance(current, ScanSet) else "resourceset"
            else:
                kind = current.kind if current else None
            collection = segments[index]
            if collection in ("out", "in") and kind in ("assessor", "reconstruction"):
                index += 1  # the in/out taxonomy of derived resources: one set of resources here
                continue
            if collection not in _CHILDREN.get(kind, ()):
                return None
            index += 1
            if index == len(segments):
                return Target(current, collection)
            if collection == "files":
                return Target(current, "files", "/".join(segments[index:]), [])
            name = segments[index]
            child = self.child(current, collection, name)
            if child is None:
                return Target(current, collection, name, segments[index + 1 :])
            current = child
            index += 1
        return Target(current)

    def child(
        self, parent: Obj | ScanSet | ResourceSet | None, collection: str, name: str
    ) -> Obj | ScanSet | ResourceSet | None:
        store = self.store
        if isinstance(parent, ResourceSet):
            return None
        if collection == "resources" and parent is not None and (isinstance(parent, ScanSet) or "," in name):
            wanted = [part for part in name.split(",") if part]
            chosen = [r for r in self.resources_of(parent) if r.label in wanted or str(r.row["id"]) in wanted]
            return ResourceSet(parent, chosen, name) if chosen else None
        if isinstance(parent, ScanSet):
            return None
        project = parent.project if parent is not None else ""
        if parent is None:
            if collection == "projects":
                row = store.project(name)
                return Obj("project", row, None, name) if row else None
            if collection == "subjects":
                row = store.query_one("SELECT * FROM subjects WHERE id = ?", (name,))
                return Obj("subject", row, None, row["project"]) if row else None
            row = store.query_one("SELECT * FROM experiments WHERE id = ?", (name,))
            return self._experiment_obj(row, None, row["project"] if row else "")
        kind = parent.kind
        if collection == "projects":  # the projects an object is shared into
            share = store.query_one("SELECT * FROM shares WHERE owner = ? AND project = ?", (parent.owner, name))
            return Obj("share", dict(share), parent, name) if share else None
        if collection == "subjects" and kind == "project":
            row = self._in_project("subjects", name, project)
            return Obj("subject", row, parent, project) if row else None
        if collection == "experiments" and kind in ("project", "subject"):
            row = self._in_project("experiments", name, project)
            if row is not None and row["session_id"]:
                row = None  # assessors are reached through their session
            if row is not None and kind == "subject" and row["subject_id"] != parent.id:
                row = None
            return self._experiment_obj(row, parent, project)
        if collection == "assessors" and kind == "experiment":
            row = store.query_one(
                "SELECT * FROM experiments WHERE session_id = ? AND (id = ? OR label = ?) ORDER BY id = ? DESC",
                (parent.id, name, name, name),
            )
            return Obj("assessor", row, parent, project) if row else None
        if collection == "scans" and kind == "experiment":
            return self._scans(parent, name)
        if collection == "reconstructions" and kind == "experiment":
            row = store.query_one(
                "SELECT * FROM reconstructions WHERE experiment_id = ? AND recon_id = ?", (parent.id, name)
            )
            return Obj("reconstruction", row, parent, project) if row else None
        if collection == "resources":
            owner, scan_id = parent.resource_parent()
            row = store.query_one(
                "SELECT * FROM resources WHERE experiment_id = ? AND scan_id = ? AND (label = ? OR CAST(id AS TEXT) = ?) "
                "ORDER BY label = ? DESC",
                (owner, scan_id, name, name, name),
            )
            return Obj("resource", row, parent, project) if row else None
        return None

    def _experiment_obj(self, row: sqlite3.Row | None, parent: Obj | None, project: str) -> Obj | None:
        if row is None:
            return None
        return Obj("assessor" if row["session_id"] else "experiment", row, parent, project)

    def _in_project(self, table: str, ref: str, project: str) -> sqlite3.Row | None:
        """A subject or experiment of ``project`` by ID or label, its own or shared into it."""
        store = self.store
        row = store.query_one(
            f"SELECT * FROM {table} WHERE project = ? AND (id = ? OR label = ?) ORDER BY id = ? DESC",
            (project, ref, ref, ref),
        )
        if row is not None:
            return row
        share = store.query_one(
            f"SELECT t.* FROM {table} t JOIN shares s ON s.owner = t.id WHERE s.project = ? AND (t.id = ? OR s.label = ?)",
            (project, ref, ref),
        )
        return share

    def _scans(self, experiment: Obj, ref: str) -> Obj | ScanSet | None:
        rows = self.store.query("SELECT * FROM scans WHERE experiment_id = ? ORDER BY rowid", (experiment.id,))
        by_id = {r["scan_id"]: r for r in rows}
        if "," not in ref and ref in by_id:
            return Obj("scan", by_id[ref], experiment, experiment.project)
        wanted = [part for part in ref.split(",") if part]
        if ref.upper() == "ALL":
            chosen = rows
        else:  # IDs and types, as XNAT's ScanList accepts them
            chosen = [r for r in rows if r["scan_id"] in wanted or (r["type"] or "") in wanted]
        if not chosen and ref.upper() != "ALL":
            return None
        return ScanSet(experiment, [Obj("scan", r, experiment, experiment.project) for r in chosen], ref)

    # -- reading -----------------------------------------------------------------------------------
    def resources_of(self, parent: Obj | ScanSet) -> list[Obj]:
        if isinstance(parent, ScanSet):
            return [r for scan in parent.scans for r in self.resources_of(scan)]
        owner, scan_id = parent.resource_parent()
        rows = self.store.query(
            "SELECT * FROM resources WHERE experiment_id = ? AND scan_id = ? ORDER BY id", (owner, scan_id)
        )
        return [Obj("resource", r, parent, parent.project) for r in rows]

    def attrs(self, owner: str) -> dict[str, str]:
        return {
            r["path"]: r["value"]
            for r in self.store.query("SELECT path, value FROM attrs WHERE owner = ? ORDER BY rowid", (owner,))
        }

    def shares(self, owner: str) -> list[sqlite3.Row]:
        return self.store.query("SELECT * FROM shares WHERE owner = ? ORDER BY project", (owner,))

    def subject_row(self, subject_id: str) -> sqlite3.Row | None:
        return self.store.query_one("SELECT * FROM subjects WHERE id = ?", (subject_id,))

    # -- changing ----------------------------------------------------------------------------------
    def create_subject(self, project: str, label: str) -> tuple[sqlite3.Row, bool]:
        existing = self._in_project("subjects", label, project)
        if existing is not None:
            return existing, False
        return self.store.ensure_subject(project, label), True

    def create_experiment(
        self, project: str, subject: Any, label: str, xsi_type: str, session_id: str = ""
    ) -> sqlite3.Row:
        store = self.store
        experiment_id = store.next_accession("E")
        modality = _modality_of(xsi_type)
        try:
            with store.transaction() as db:
                db.execute(
                    "INSERT INTO experiments(id, project, subject_id, label, xsi_type, uid, date, time, "
                    "modality, insert_date, session_id) VALUES (?, ?, ?, ?, ?, '', '', '', ?, ?, ?)",
                    (experiment_id, project, subject["id"], label, xsi_type, modality, now_text(), session_id),
                )
        except sqlite3.IntegrityError as exc:  # two requests creating the same label at once
            raise XnatRefusal(409, f"An experiment labelled {label} already exists in project {project}.") from exc
        row = store.query_one("SELECT * FROM experiments WHERE id = ?", (experiment_id,))
        assert row is not None
        return row

    def create_scan(self, experiment: Obj, scan_id: str, xsi_type: str) -> sqlite3.Row:
        modality = _modality_of(xsi_type)
        with self.store.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO scans(experiment_id, scan_id, series_uid, series_number, xsi_type, type, "
                "series_description, modality) VALUES (?, ?, '', ?, ?, '', '', ?)",
                (experiment.id, scan_id, scan_id, xsi_type, modality),
            )
        row = self.store.query_one(
            "SELECT * FROM scans WHERE experiment_id = ? AND scan_id = ?", (experiment.id, scan_id)
        )
        assert row is not None
        return row

    def create_reconstruction(self, experiment: Obj, recon_id: str, recon_type: str) -> sqlite3.Row:
        with self.store.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO reconstructions(experiment_id, recon_id, type) VALUES (?, ?, ?)",
                (experiment.id, recon_id, recon_type),
            )
        row = self.store.query_one(
            "SELECT * FROM reconstructions WHERE experiment_id = ? AND recon_id = ?", (experiment.id, recon_id)
        )
        assert row is not None
        return row

    def share(self, obj: Obj, project: str, label: str) -> bool:
        with self.store.transaction() as db:
            created = (
                db.execute(
                    "INSERT OR IGNORE INTO shares(owner, project, label) VALUES (?, ?, ?)", (obj.owner, project, label)
                ).rowcount
                == 1
            )
            if not created:
                db.execute("UPDATE shares SET label = ? WHERE owner = ? AND project = ?", (label, obj.owner, project))
        return created

    def unshare(self, owner: str, project: str) -> None:
        with self.store.transaction() as db:
            db.execute("DELETE FROM shares WHERE owner = ? AND project = ?", (owner, project))

    def set_attrs(self, owner: str, values: dict[str, str]) -> None:
        with self.store.transaction() as db:
            for path, value in values.items():
                if value == "NULL":  # XNAT's way of clearing a field through the query string
                    db.execute("DELETE FROM attrs WHERE owner = ? AND path = ?", (owner, path))
                else:
                    db.execute(
                        "INSERT OR REPLACE INTO attrs(owner, path, value) VALUES (?, ?, ?)", (owner, path, value)
                    )

    def delete(self, obj: Obj) -> None:
        """Delete an object with everything below it (files included, as with XNAT's removeFiles=true)."""
        store = self.store
        if obj.kind == "project":
            for subject in store.query("SELECT * FROM subjects WHERE project = ?", (obj.id,)):
                self.delete(Obj("subject", subject, obj, obj.id))
        elif obj.kind == "subject":
            for experiment in store.query(
                "SELECT * FROM experiments WHERE subject_id = ? AND session_id = ''", (obj.id,)
            ):
                self.delete(Obj("experiment", experiment, obj, obj.project))
        elif obj.kind == "experiment":
            for assessor in store.query("SELECT * FROM experiments WHERE session_id = ?", (obj.id,)):
                self.delete(Obj("assessor", assessor, obj, obj.project))
            for scan in store.query("SELECT * FROM scans WHERE experiment_id = ?", (obj.id,)):
                self.delete(Obj("scan", scan, obj, obj.project))
            for recon in store.query("SELECT * FROM reconstructions WHERE experiment_id = ?", (obj.id,)):
                self.delete(Obj("reconstruction", recon, obj, obj.project))
        if obj.kind != "resource":
            for resource in self.resources_of(obj):
                self.delete(resource)
        with store.transaction() as db:
            if obj.kind == "resource":
                db.execute("DELETE FROM files WHERE resource_id = ?", (obj.row["id"],))
                db.execute("DELETE FROM resources WHERE id = ?", (obj.row["id"],))
            elif obj.kind == "scan":
                db.execute(
                    "DELETE FROM scans WHERE experiment_id = ? AND scan_id = ?", (obj.row["experiment_id"], obj.id)
                )
            elif obj.kind == "reconstruction":
                db.execute(
                    "DELETE FROM reconstructions WHERE experiment_id = ? AND recon_id = ?",
                    (obj.row["experiment_id"], obj.id),
                )
            elif obj.kind in ("experiment", "assessor"):
                db.execute("DELETE FROM experiments WHERE id = ?", (obj.id,))
            elif obj.kind == "subject":
                db.execute("DELETE FROM subjects WHERE id = ?", (obj.id,))
            elif obj.kind == "project":
                db.execute("DELETE FROM projects WHERE id = ?", (obj.id,))
                store.projects_changed()
                db.execute("DELETE FROM shares WHERE project = ?", (obj.id,))
            db.execute("DELETE FROM attrs WHERE owner = ?", (obj.owner,))
            db.execute("DELETE FROM shares WHERE owner = ?", (obj.owner,))
        if obj.kind == "resource":
            import shutil

            shutil.rmtree(store.resource_dir(obj.row["id"]), ignore_errors=True)


_SESSION_TYPE = re.compile(r"^[a-z]+:(?P<modality>[a-z0-9]+?)(?:session|scan)data$", re.IGNORECASE)
_MODALITY_NAMES = {"pet": "PT", "otherdicom": "OT", "petmr": "PT"}


def _modality_of(xsi_type: str) -> str:
    match = _SESSION_TYPE.match(xsi_type or "")
    if not match:
        return ""
    name = match["modality"].lower()
    return _MODALITY_NAMES.get(name, name.upper())
