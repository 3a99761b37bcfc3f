"""The archive's REST API: one handler walks ``/data[/archive]/projects|subjects|experiments/...``
through the object model (``model.Archive``) and answers per object kind and method; every
listing and object goes out through ``render`` (json/csv/xml/html).

Behaviour follows XNAT's REST API documentation (Project/Subject/Experiment/Image Scan/Image
Assessor Resource API pages, "How To Download Files via the XNAT REST API", "REST Enhanced
Listing Options", "XNAT REST XML Path Shortcuts") and xnat-web's restlet resources.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import re
import tarfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any
from xml.etree import ElementTree

from xnat_flows.testing import readback
from xnat_flows.testing.importer import archive_format, iter_members
from xnat_flows.testing.model import Archive, Obj, ResourceSet, ScanSet, Target, is_a
from xnat_flows.testing.prearchive import XnatRefusal, is_true
from xnat_flows.testing.render import item, listing_format, object_response, table
from xnat_flows.testing.state import write_stream_to
from xnat_flows.testing.web import STREAM_CHUNK, HandlerBase, Request, Response, request_uploads, text

FILE_COLUMNS = readback.FILE_COLUMNS

# XNAT REST XML path shortcuts (wiki "XNAT REST XML Path Shortcuts"): query names → field paths.
_SHORTCUTS = {
    "subject": {
        "gender": "demographics/gender",
        "handedness": "demographics/handedness",
        "dob": "demographics/dob",
        "yob": "demographics/yob",
        "age": "demographics/age",
        "education": "demographics/education",
        "race": "demographics/race",
        "ethnicity": "demographics/ethnicity",
        "weight": "demographics/weight",
        "height": "demographics/height",
        "group": "group",
        "src": "src",
        "pi_firstname": "",
        "label": "label",
    },
    "experiment": {
        "date": "date",
        "time": "time",
        "visit_id": "visit_id",
        "note": "note",
        "label": "label",
        "acquisition_site": "acquisition_site",
        "scanner": "scanner",
        "operator": "operator",
        "dcmaccessionnumber": "dcmAccessionNumber",
        "dcmpatientid": "dcmPatientId",
        "dcmpatientname": "dcmPatientName",
        "session_type": "session_type",
        "modality": "modality",
    },
    "scan": {
        "type": "type",
        "quality": "quality",
        "note": "note",
        "series_description": "series_description",
        "condition": "condition",
        "documentation": "documentation",
        "scanner": "scanner",
        "modality": "modality",
        "frames": "frames",
        "uid": "UID",
    },
    "project": {
        "name": "name",
        "description": "description",
        "keywords": "keywords",
        "secondary_id": "secondary_ID",
        "alias": "aliases/alias",
        "pi_firstname": "PI/firstname",
        "pi_lastname": "PI/lastname",
    },
}
_SHORTCUTS["assessor"] = _SHORTCUTS["experiment"]
_SHORTCUTS["reconstruction"] = {"type": "type", "baseScanType": "baseScanType"}

_XPATH = re.compile(r"^(?P<type>[A-Za-z][\w-]*:[A-Za-z]\w*)/(?P<path>.+)$")
_FIELD = re.compile(r"^fields/field\[name=(?P<name>[^\]]+)\]/field$")
_TYPED_STEP = re.compile(r"\[@xsi:type=[^\]]*\]")
# Fields kept in table columns rather than as attributes.
_COLUMNS = {
    "experiment": {"date", "time", "label", "modality", "UID"},
    "assessor": {"date", "time", "label"},
    "scan": {"type", "series_description", "UID", "modality"},
    "subject": {"label"},
    "project": {"name", "description"},
    "reconstruction": {"type"},
}
_ARCHIVE_SUFFIXES = {"zip": "zip", "tar.gz": "tar.gz", "tgz": "tar.gz", "tar": "tar"}


class ArchiveHandlers(HandlerBase):
    @property
    def archive(self) -> Archive:
        return Archive(self.store)

    def get_prearchive_code(self, req: Request, m: re.Match[str]) -> Response:
        project = self.store.project(m["project"])
        if project is None:
            return text(404, f"Project {m['project']} not found")
        return text(200, str(project["prearchive_code"]))

    def put_prearchive_code(self, req: Request, m: re.Match[str]) -> Response:
        if self.store.project(m["project"]) is None:
            return text(404, f"Project {m['project']} not found")
        try:
            code = int(m["code"])
        except ValueError:
            return text(400, f"Invalid prearchive code {m['code']}")
        self.store.set_prearchive_code(m["project"], code)
        return text(200, "")

    # -- entry point -------------------------------------------------------------------------------
    def archive_tree(self, req: Request, m: re.Match[str]) -> Response:
        return self._walk(req, [s for s in m["tree"].split("/") if s])

    def _walk(self, req: Request, segments: list[str]) -> Response:
        target = self.archive.resolve(segments)
        if target is None:
            return text(404, f"The requested resource {req.path} was not found.")
        if target.collection == "files" and target.name is not None:
            return self._file(req, target.obj, target.name)
        if target.name is not None:
            return self._missing(req, target, segments)
        if target.is_object:
            assert target.obj is not None
            return self._object(req, target.obj)
        return self._collection(req, target.obj, target.collection or "")

    # -- one object --------------------------------------------------------------------------------
    def _object(self, req: Request, obj: Obj | ScanSet | ResourceSet) -> Response:
        if isinstance(obj, ResourceSet):
            if req.method == "DELETE":
                for resource in obj.resources:
                    self.archive.delete(resource)
                return text(200, "")
            if req.method != "GET":
                return text(405, f"Method {req.method} not allowed")
            return table(req, [self.resource_row(r) for r in obj.resources], "Resources", fixed_columns=True)
        if isinstance(obj, ScanSet):
            if req.method == "DELETE":
                for scan in obj.scans:
                    self.archive.delete(scan)
                return text(200, "")
            if req.method != "GET":
                return text(405, f"Method {req.method} not allowed")
            return self._collection(req, obj.experiment, "scans", [s.row for s in obj.scans])
        if req.method == "GET":
            if obj.kind == "share":
                return object_response(
                    req, item("xnat:projectParticipant", {"project": obj.project, "label": obj.row["label"]})
                )
            return object_response(req, self.document(obj))
        if req.method == "DELETE":
            if obj.kind == "share":
                self.archive.unshare(obj.parent.owner if obj.parent else "", obj.project)
            else:
                self.archive.delete(obj)
            return text(200, "")
        if req.method == "PUT":
            if obj.kind == "resource":
                return text(409, f"Resource {obj.label} already exists.")
            if obj.kind == "share":
                self.archive.share(obj.parent, obj.project, req.param("label") or obj.row["label"])  # type: ignore[arg-type]
                return text(200, "")
            self._apply_fields(req, obj)
            return text(200, obj.id)
        return text(405, f"Method {req.method} not allowed")

    # -- collections -------------------------------------------------------------------------------
    def _collection(
        self, req: Request, parent: Obj | ScanSet | ResourceSet | None, collection: str, only: list[Any] | None = None
    ) -> Response:
        if collection == "files":
            if req.method in ("PUT", "POST"):
                if isinstance(parent, Obj) and parent.kind == "resource":
                    return self._upload(req, parent, "")
                return text(405, f"Method {req.method} not allowed on {req.path}")
            if req.method != "GET":
                return text(405, f"Method {req.method} not allowed")
            return self._files(req, parent)
        if req.method != "GET":
            return text(405, f"Method {req.method} not allowed on a listing")
        store = self.store
        if parent is None:
            if collection == "projects":
                rows = [readback.project_row(p) for p in store.query("SELECT * FROM projects ORDER BY id")]
                return table(req, rows, "Projects")
            if collection == "subjects":
                subjects = store.query("SELECT * FROM subjects ORDER BY id")
                return table(req, [self.subject_row(s, s["project"]) for s in subjects], "Subjects")
            return self._experiments(req, store.query("SELECT * FROM experiments ORDER BY id"), "")
        if isinstance(parent, ScanSet):
            return table(
                req, [self.resource_row(r) for r in self.archive.resources_of(parent)], "Resources", fixed_columns=True
            )
        if isinstance(parent, ResourceSet):
            return text(404, f"The requested resource {req.path} was not found.")
        kind = parent.kind
        if collection == "subjects":
            own = store.query("SELECT * FROM subjects WHERE project = ? ORDER BY id", (parent.id,))
            shared = store.query(
                "SELECT t.* FROM subjects t JOIN shares s ON s.owner = t.id WHERE s.project = ? ORDER BY t.id",
                (parent.id,),
            )
            return table(req, [self.subject_row(s, parent.id) for s in [*own, *shared]], "Subjects")
        if collection == "experiments":
            if kind == "project":
                own = store.query("SELECT * FROM experiments WHERE project = ? ORDER BY id", (parent.id,))
                shared = store.query(
                    "SELECT t.* FROM experiments t JOIN shares s ON s.owner = t.id WHERE s.project = ? ORDER BY t.id",
                    (parent.id,),
                )
                return self._experiments(req, [*own, *shared], parent.id)
            return self._experiments(
                req,
                store.query("SELECT * FROM experiments WHERE subject_id = ? ORDER BY id", (parent.id,)),
                parent.project,
            )
        if collection == "scans":
            scans = (
                only
                if only is not None
                else store.query("SELECT * FROM scans WHERE experiment_id = ? ORDER BY rowid", (parent.id,))
            )
            return table(req, [readback.scan_row(parent.id, s) for s in scans], "Scans")
        if collection == "assessors":
            return self._experiments(
                req,
                store.query("SELECT * FROM experiments WHERE session_id = ? ORDER BY id", (parent.id,)),
                parent.project,
                assessors=True,
            )
        if collection == "reconstructions":
            recons = store.query("SELECT * FROM reconstructions WHERE experiment_id = ? ORDER BY rowid", (parent.id,))
            return table(
                req,
                [
                    {
                        "ID": r["recon_id"],
                        "type": r["type"] or "",
                        "xsiType": "xnat:reconstructedImageData",
                        "URI": f"{self.uri(parent)}/reconstructions/{r['recon_id']}",
                    }
                    for r in recons
                ],
                "Reconstructions",
            )
        if collection == "resources":
            return table(
                req, [self.resource_row(r) for r in self.archive.resources_of(parent)], "Resources", fixed_columns=True
            )
        if collection == "projects":
            projects = [
                {"ID": parent.row["project"], "label": parent.label, "URI": f"/data/projects/{parent.row['project']}"}
            ]
            projects += [
                {"ID": s["project"], "label": s["label"], "URI": f"/data/projects/{s['project']}"}
                for s in self.archive.shares(parent.owner)
            ]
            return table(req, projects, "Projects")
        return text(404, f"The requested resource {req.path} was not found.")

    def _experiments(self, req: Request, rows: list[Any], project: str, assessors: bool = False) -> Response:
        wanted = req.param("xsiType")
        chosen = []
        for row in rows:
            if wanted:
                if not is_a(row["xsi_type"], wanted):
                    continue
            elif bool(row["session_id"]) != assessors:
                continue  # listings of experiments show sessions; assessors are listed under their session
            chosen.append(self.experiment_row(row, project))
        return table(req, chosen, "Assessors" if assessors else "Experiments")

    # -- creation ----------------------------------------------------------------------------------
    def _missing(self, req: Request, target: Target, segments: list[str]) -> Response:
        parent, collection, name, rest = target.obj, target.collection, target.name or "", target.rest
        if req.method not in ("PUT", "POST"):
            return text(404, f"{_SINGULAR.get(collection or '', 'Object')} {name} not found")
        if isinstance(parent, (ScanSet, ResourceSet)):
            return text(404, f"{_SINGULAR.get(collection or '', 'Object')} {name} not found in {parent.ref}")
        if rest:
            # Parents made on the way, as XNAT does: a subject for a new session, a resource for new files.
            creatable = (collection == "subjects" and rest[0] == "experiments") or (
                collection == "resources" and rest[0] == "files"
            )
            if not creatable or parent is None:
                return text(404, f"{_SINGULAR.get(collection or '', 'Object')} {name} not found")
            if collection == "subjects":
                if len(rest) == 2 and req.method == "PUT" and not req.param("xsiType"):
                    return text(400, _NEEDS_XSI_TYPE)  # refused before the subject is made
                self.archive.create_subject(parent.id, name)
            else:
                owner, scan_id = parent.resource_parent()
                self.store.ensure_resource(
                    owner, scan_id, name, req.param("format"), req.param("content"), req.param("tags")
                )
            return self._walk(req, segments)
        if req.method != "PUT":
            return text(405, f"Method {req.method} not allowed")
        return self._create(req, parent, collection or "", name)

    def _create(self, req: Request, parent: Obj | None, collection: str, name: str) -> Response:
        archive = self.archive
        xsi_type = req.param("xsiType")
        if parent is None:
            if collection == "projects":
                fields = self._parse_fields(req, "project")
                self.store.ensure_project(name)
                project = archive.child(None, "projects", name)
                assert isinstance(project, Obj)
                self._store_fields(project, fields)
                return text(201, name)
            return text(404, f"{_SINGULAR[collection]} {name} not found")  # new subjects/experiments need a project
        if collection == "subjects" and parent.kind == "project":
            fields = self._parse_fields(req, "subject")
            row, created = archive.create_subject(parent.id, self._new_label(req, "xnat:subjectData", name))
            self._store_fields(Obj("subject", row, parent, parent.id), fields)
            return text(201 if created else 200, row["id"])
        if collection == "experiments" and parent.kind in ("project", "subject"):
            if not xsi_type:
                return text(400, _NEEDS_XSI_TYPE)
            fields = self._parse_fields(req, "experiment")
            label = self._new_label(req, xsi_type, name)
            if self.store.query_one(
                "SELECT 1 FROM experiments WHERE project = ? AND label = ?", (parent.project, label)
            ):
                return text(409, f"An experiment labelled {label} already exists in project {parent.project}.")
            subject = parent.row if parent.kind == "subject" else self._subject_for(req, parent, xsi_type)
            row = archive.create_experiment(parent.project, subject, label, xsi_type)
            self._store_fields(Obj("experiment", row, parent, parent.project), fields)
            return text(201, row["id"])
        if collection == "assessors" and parent.kind == "experiment":
            if not xsi_type:
                return text(400, "A new assessor needs its data type: add ?xsiType=xnat:qcAssessmentData (or another).")
            fields = self._parse_fields(req, "assessor")
            label = self._new_label(req, xsi_type, name)
            subject = archive.subject_row(parent.row["subject_id"])
            row = archive.create_experiment(parent.row["project"], subject, label, xsi_type, session_id=parent.id)
            self._store_fields(Obj("assessor", row, parent, parent.project), fields)
            return text(201, row["id"])
        if collection == "scans" and parent.kind == "experiment":  # xnat-web ScanResource.handlePut
            if not xsi_type:
                return text(417, "Need PUT Contents")
            if xsi_type.lower() == "xnat:imagescandata" or not is_a(xsi_type, "xnat:imageScanData"):
                return text(
                    400,
                    "Multiple scan modalities can be associated here.  Please retry with the "
                    "specification of a particular modality (i.e. ?xsiType=xnat:mrScanData).",
                )
            fields = self._parse_fields(req, "scan")
            row = archive.create_scan(parent, name, xsi_type)
            self._store_fields(Obj("scan", row, parent, parent.project), fields)
            return text(200, "")
        if collection == "reconstructions" and parent.kind == "experiment":
            fields = self._parse_fields(req, "reconstruction")
            row = archive.create_reconstruction(parent, name, req.param("type"))
            self._store_fields(Obj("reconstruction", row, parent, parent.project), fields)
            return text(201, name)
        if collection == "resources" and parent.kind != "resource":
            owner, scan_id = parent.resource_parent()
            self.store.ensure_resource(
                owner, scan_id, name, req.param("format"), req.param("content"), req.param("tags")
            )
            return text(200, "")
        if collection == "projects" and parent.kind in ("subject", "experiment", "assessor"):
            if self.store.project(name) is None:
                return text(404, f"Project {name} not found")
            if name == parent.row["project"]:
                return text(409, f"{parent.label} already belongs to project {name}")
            archive.share(parent, name, req.param("label") or parent.label)
            return text(200, "")
        return text(404, f"The requested resource {req.path} was not found.")

    def _subject_for(self, req: Request, project: Obj, xsi_type: str):
        ref = (
            req.param(f"{xsi_type}/subject_ID")
            or req.param("subject_ID")
            or req.param("xnat:subjectAssessorData/subject_ID")
        )
        if not ref:
            raise XnatRefusal(
                400,
                "A new experiment needs a subject: create it under /subjects/{subject}/experiments or pass subject_ID.",
            )
        row, _ = self.archive.create_subject(project.id, ref)
        return row

    @staticmethod
    def _new_label(req: Request, xsi_type: str, name: str) -> str:
        return req.param(f"{xsi_type}/label") or req.param("label") or name

    # -- metadata through the query string ---------------------------------------------------------
    def _apply_fields(self, req: Request, obj: Obj) -> None:
        self._store_fields(obj, self._parse_fields(req, obj.kind))

    def _parse_fields(self, req: Request, kind: str) -> tuple[dict[str, str], dict[str, str]]:
        """The fields a PUT sets, checked before anything is written: ``?xnat:mrSessionData/date=…``,
        XNAT's shortcuts (``?date=…``), ``…/fields/field[name=x]/field=…``. Returns (columns, attributes);
        every field named is stored and read back, nothing is acknowledged and dropped."""
        shortcuts = _SHORTCUTS.get(kind, {})
        values: dict[str, str] = {}
        for key, value in req.params.items():
            match = _XPATH.match(key)
            if match:
                path = _TYPED_STEP.sub("", match["path"])
            elif key.lower() in shortcuts:
                path = shortcuts[key.lower()]
            else:
                continue
            if path:
                values[path] = value
        columns = {k: ("" if v == "NULL" else v) for k, v in values.items() if k in _COLUMNS.get(kind, set())}
        if columns.get("date"):
            columns["date"] = _xs_date(columns["date"])
        if columns.get("time"):
            columns["time"] = _xs_time(columns["time"])
        attrs = {}
        for path, value in values.items():
            if path in columns or path == "ID":
                continue
            custom = _FIELD.match(path)
            if "[" in path and not custom:
                raise XnatRefusal(400, f"Unsupported field path {path!r}")
            attrs[f"fields/{custom['name']}" if custom else path] = value
        return columns, attrs

    def _store_fields(self, obj: Obj, fields: tuple[dict[str, str], dict[str, str]]) -> None:
        columns, attrs = fields
        if columns:
            self._set_columns(obj, columns)
        if attrs:
            self.archive.set_attrs(obj.owner, attrs)

    def _set_columns(self, obj: Obj, values: dict[str, str]) -> None:
        if obj.kind in ("experiment", "assessor"):
            names = {"UID": "uid"}
            if "label" in values:
                clash = self.store.query_one(
                    "SELECT 1 FROM experiments WHERE project = ? AND label = ? AND id != ?",
                    (obj.row["project"], values["label"], obj.id),
                )
                if clash:
                    raise XnatRefusal(409, f"An experiment labelled {values['label']} already exists.")
            table_name, where, args = "experiments", "id = ?", [obj.id]
        elif obj.kind == "scan":
            names = {"UID": "series_uid"}
            table_name, where, args = "scans", "experiment_id = ? AND scan_id = ?", [obj.row["experiment_id"], obj.id]
        elif obj.kind == "subject":
            names = {}
            table_name, where, args = "subjects", "id = ?", [obj.id]
        elif obj.kind == "project":
            names = {}
            table_name, where, args = "projects", "id = ?", [obj.id]
        else:
            names = {}
            table_name, where, args = (
                "reconstructions",
                "experiment_id = ? AND recon_id = ?",
                [obj.row["experiment_id"], obj.id],
            )
        assignments = ", ".join(f"{names.get(k, k)} = ?" for k in values)
        with self.store.transaction() as db:
            db.execute(f"UPDATE {table_name} SET {assignments} WHERE {where}", (*values.values(), *args))

    # -- documents (single objects) ----------------------------------------------------------------
    def document(self, obj: Obj) -> dict[str, Any]:
        """The ``items`` entry of an object with its children, as XNAT's JSON/XML representation."""
        attrs = self.archive.attrs(obj.owner)
        fields, children = _split_attrs(attrs)
        row = obj.row
        if obj.kind == "project":
            base = {
                "ID": obj.id,
                "secondary_ID": obj.id,
                "name": row["name"] or obj.id,
                "description": row["description"] or "",
                "active": "true",
            }
            return item(
                "xnat:projectData", {**base, **fields}, children + self._resource_children(obj, "resources/resource")
            )
        if obj.kind == "subject":
            label = self._label_in(obj)
            base = {"ID": obj.id, "project": row["project"], "label": label, "id": obj.id}
            return item(
                "xnat:subjectData",
                {**base, **fields},
                children + self._resource_children(obj, "resources/resource") + self._sharing(obj),
                {"start_date": row["insert_date"]},
            )
        if obj.kind in ("experiment", "assessor"):
            return self._experiment_document(obj, fields, children)
        if obj.kind == "scan":
            base = {
                "ID": obj.id,
                "type": row["type"],
                "UID": row["series_uid"],
                "series_description": row["series_description"],
                "quality": "usable",
                "image_session_ID": row["experiment_id"],
                "modality": row["modality"],
                "xnat_imagescandata_id": f"{row['experiment_id']}:{obj.id}",
            }
            return item(row["xsi_type"], {**base, **fields}, children + self._resource_children(obj, "file"))
        if obj.kind == "reconstruction":
            base = {"ID": obj.id, "type": row["type"] or ""}
            return item(
                "xnat:reconstructedImageData", {**base, **fields}, children + self._resource_children(obj, "out/file")
            )
        return self._resource_item(obj)

    def _experiment_document(self, obj: Obj, fields: dict[str, str], children: list[dict[str, Any]]) -> dict[str, Any]:
        row = obj.row
        base = {
            "ID": obj.id,
            "label": self._label_in(obj),
            "project": row["project"],
            "subject_ID": row["subject_id"],
            "UID": row["uid"],
            "date": row["date"],
            "time": row["time"],
            "modality": row["modality"],
            "id": obj.id,
        }
        if obj.kind == "assessor":
            base = {
                "ID": obj.id,
                "label": row["label"],
                "project": row["project"],
                "date": row["date"],
                "imageSession_ID": row["session_id"],
                "id": obj.id,
            }
            return item(
                row["xsi_type"],
                {**base, **fields},
                children + self._resource_children(obj, "out/file") + self._sharing(obj),
                {"start_date": row["insert_date"]},
            )
        scans = [
            Obj("scan", s, obj, obj.project)
            for s in self.store.query("SELECT * FROM scans WHERE experiment_id = ? ORDER BY rowid", (obj.id,))
        ]
        if scans:
            children.append({"field": "scans/scan", "items": [self.document(s) for s in scans]})
        recons = [
            Obj("reconstruction", r, obj, obj.project)
            for r in self.store.query("SELECT * FROM reconstructions WHERE experiment_id = ? ORDER BY rowid", (obj.id,))
        ]
        if recons:
            children.append(
                {"field": "reconstructions/reconstructedImage", "items": [self.document(r) for r in recons]}
            )
        assessors = [
            Obj("assessor", a, obj, obj.project)
            for a in self.store.query("SELECT * FROM experiments WHERE session_id = ? ORDER BY id", (obj.id,))
        ]
        if assessors:
            children.append({"field": "assessors/assessor", "items": [self.document(a) for a in assessors]})
        children += self._resource_children(obj, "resources/resource") + self._sharing(obj)
        return item(row["xsi_type"], {**base, **fields}, children, {"start_date": row["insert_date"]})

    def _label_in(self, obj: Obj) -> str:
        """An object's label as seen from the project it was addressed through (a share may rename it)."""
        if obj.project and obj.project != obj.row["project"]:
            share = self.store.query_one(
                "SELECT label FROM shares WHERE owner = ? AND project = ?", (obj.owner, obj.project)
            )
            if share is not None:
                return share["label"]
        return obj.row["label"]

    def _sharing(self, obj: Obj) -> list[dict[str, Any]]:
        shares = self.archive.shares(obj.owner)
        if not shares:
            return []
        share_type = "xnat:projectParticipant" if obj.kind == "subject" else "xnat:experimentData_share"
        return [
            {
                "field": "sharing/share",
                "items": [item(share_type, {"project": s["project"], "label": s["label"]}) for s in shares],
            }
        ]

    def _resource_children(self, obj: Obj, field: str) -> list[dict[str, Any]]:
        resources = self.archive.resources_of(obj)
        return [{"field": field, "items": [self._resource_item(r) for r in resources]}] if resources else []

    def _resource_item(self, resource: Obj) -> dict[str, Any]:
        files = self.store.files(resource.row["id"])
        return item(
            "xnat:resourceCatalog",
            {
                "label": resource.row["label"],
                "format": resource.row["format"] or "",
                "content": resource.row["content"] or "",
                "tags": resource.row["tags"] or "",
                "file_count": len(files),
                "file_size": sum(f["size"] or 0 for f in files),
                "xnat_abstractresource_id": resource.row["id"],
            },
        )

    # -- listing rows ----------------------------------------------------------------------------
    def subject_row(self, subject: Any, project: str) -> dict[str, Any]:
        obj = Obj("subject", subject, None, project)
        attrs = self.archive.attrs(subject["id"])
        return {
            "ID": subject["id"],
            "label": self._label_in(obj),
            "project": subject["project"],
            "URI": f"/data/subjects/{subject['id']}",
            "insert_date": subject["insert_date"],
            "insert_user": "admin",
            "xsiType": "xnat:subjectData",
            **{k.rsplit("/", 1)[-1]: v for k, v in attrs.items() if k.startswith("demographics/")},
        }

    def experiment_row(self, experiment: Any, project: str) -> dict[str, Any]:
        obj = Obj("assessor" if experiment["session_id"] else "experiment", experiment, None, project)
        subject = self.archive.subject_row(experiment["subject_id"])
        uri = (
            f"/data/experiments/{experiment['session_id']}/assessors/{experiment['id']}"
            if experiment["session_id"]
            else f"/data/experiments/{experiment['id']}"
        )
        row = {
            "ID": experiment["id"],
            "URI": uri,
            "date": experiment["date"],
            "insert_date": experiment["insert_date"],
            "label": self._label_in(obj),
            "project": experiment["project"],
            "xsiType": experiment["xsi_type"],
            "subject_ID": experiment["subject_id"],
            "subject_label": subject["label"] if subject else "",
            "UID": experiment["uid"],
            "modality": experiment["modality"],
        }
        if experiment["session_id"]:
            row["session_ID"] = experiment["session_id"]
        return row

    def resource_row(self, resource: Obj) -> dict[str, Any]:
        files = self.store.files(resource.row["id"])
        parent = resource.parent
        assert parent is not None
        category = {"scan": "scans", "reconstruction": "reconstructions", "assessor": "assessors"}.get(
            parent.kind, "resources"
        )
        return {
            "xnat_abstractresource_id": resource.row["id"],
            "label": resource.row["label"],
            "element_name": "xnat:resourceCatalog",
            "category": category,
            "cat_id": parent.id,
            "cat_desc": "",
            "format": resource.row["format"] or "",
            "content": resource.row["content"] or "",
            "tags": resource.row["tags"] or "",
            "file_count": len(files),
            "file_size": sum(f["size"] or 0 for f in files),
        }

    def uri(self, obj: Obj) -> str:
        if obj.kind == "project":
            return f"/data/projects/{obj.id}"
        if obj.kind == "subject":
            return f"/data/subjects/{obj.id}"
        if obj.kind == "experiment":
            return f"/data/experiments/{obj.id}"
        if obj.kind == "assessor":
            return f"/data/experiments/{obj.row['session_id']}/assessors/{obj.id}"
        if obj.kind == "scan":
            return f"/data/experiments/{obj.row['experiment_id']}/scans/{obj.id}"
        if obj.kind == "reconstruction":
            return f"/data/experiments/{obj.row['experiment_id']}/reconstructions/{obj.id}"
        assert obj.parent is not None
        return f"{self.uri(obj.parent)}/resources/{obj.label}"

    # -- files -------------------------------------------------------------------------------------
    def _file_entries(self, parent: Obj | ScanSet | ResourceSet | None) -> list[tuple[Obj, Any]]:
        """(resource, file row) of every file below ``parent``: one resource, a set, or all of an object's."""
        if parent is None:
            return []
        if isinstance(parent, ResourceSet):
            resources = parent.resources
        elif isinstance(parent, Obj) and parent.kind == "resource":
            resources = [parent]
        else:
            resources = self.archive.resources_of(parent)
        return [(resource, f) for resource in resources for f in self.store.files(resource.row["id"])]

    def _files(self, req: Request, parent: Obj | ScanSet | ResourceSet | None) -> Response:
        entries = self._file_entries(parent)
        fmt = listing_format(req)
        if fmt in _ARCHIVE_SUFFIXES:
            name = _top_label(parent) or "download"
            return self._archive_response(
                [
                    (self.zip_path(resource, f["path"]), self.store.resource_dir(resource.row["id"]) / f["path"])
                    for resource, f in entries
                ],
                f"{name}.{_ARCHIVE_SUFFIXES[fmt]}",
                _ARCHIVE_SUFFIXES[fmt],
            )
        rows = []
        for resource, f in entries:
            base = f"{self.uri(resource.parent)}/resources/{resource.label}" if resource.parent else ""
            rows.append(
                {
                    "Name": f["path"].rsplit("/", 1)[-1],
                    "Size": f["size"],
                    "URI": f"{base}/files/{f['path']}",
                    "collection": resource.label,
                    "file_tags": "",
                    "file_format": resource.row["format"] or "",
                    "file_content": resource.row["content"] or "",
                    "cat_ID": resource.row["id"],
                    "digest": f["md5"],
                    "path": f["path"],
                }
            )
        return table(req, rows, "Files", FILE_COLUMNS, fixed_columns=True)

    def zip_path(self, resource: Obj, path: str) -> str:
        """XNAT's layout in every download zip: {session}/scans/{id}/resources/{label}/files/{path}."""
        parent = resource.parent
        assert parent is not None
        tail = f"resources/{resource.label}/files/{path}"
        if parent.kind == "scan":
            session = self.store.experiment(parent.row["experiment_id"])
            return f"{session['label'] if session else parent.row['experiment_id']}/scans/{parent.id}/{tail}"
        if parent.kind == "reconstruction":
            session = self.store.experiment(parent.row["experiment_id"])
            return f"{session['label'] if session else ''}/reconstructions/{parent.id}/out/{tail}"
        if parent.kind == "assessor":
            session = self.store.experiment(parent.row["session_id"])
            return f"{session['label'] if session else ''}/assessors/{parent.label}/out/{tail}"
        return f"{parent.label}/{tail}"

    def _archive_response(self, entries: list[tuple[str, Path]], name: str, kind: str) -> Response:
        if kind == "zip":
            return self._zip_response(entries, name)
        import tempfile

        if self.store.check_space is not None:
            self.store.check_space()
        handle, tmp_name = tempfile.mkstemp(dir=self.store.tmp_dir, prefix="dl-", suffix=".tar")
        with open(handle, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz" if kind == "tar.gz" else "w") as archive:
            for arcname, path in entries:
                archive.add(path, arcname)
        content_type = "application/x-gzip" if kind == "tar.gz" else "application/x-tar"
        return Response(
            200,
            content_type=content_type,
            file=Path(tmp_name),
            delete_file=True,
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    def _file(self, req: Request, parent: Obj | ScanSet | ResourceSet | None, file_path: str) -> Response:
        if not isinstance(parent, Obj) or parent.kind != "resource":
            return text(404, f"The requested resource {req.path} was not found.")
        if req.method in ("PUT", "POST"):
            return self._upload(req, parent, file_path)
        if req.method == "DELETE":
            return self._delete_file(parent, file_path)
        if req.method != "GET":
            return text(405, f"Method {req.method} not allowed")
        store = self.store
        if (
            store.query_one("SELECT 1 FROM files WHERE resource_id = ? AND path = ?", (parent.row["id"], file_path))
            is None
        ):
            return text(404, f"File {file_path} not found")
        path = store.resource_dir(parent.row["id"]) / file_path
        modified = email.utils.formatdate(path.stat().st_mtime, usegmt=True)
        return Response(200, content_type="application/octet-stream", file=path, headers={"Last-Modified": modified})

    def _delete_file(self, resource: Obj, file_path: str) -> Response:
        with self.store.transaction() as db:
            gone = db.execute(
                "DELETE FROM files WHERE resource_id = ? AND path = ?", (resource.row["id"], file_path)
            ).rowcount
        if not gone:
            return text(404, f"File {file_path} not found")
        (self.store.resource_dir(resource.row["id"]) / file_path).unlink(missing_ok=True)
        return text(200, "")

    def _upload(self, req: Request, resource: Obj, file_path: str) -> Response:
        uploads = request_uploads(req, PurePosixPath(file_path).name if file_path else None, self.store.tmp_dir)
        if not uploads:
            size = req.body.bytes_read + len(req.body.read())
            if size == 0:
                return text(
                    400,
                    f"You tried to {req.method} to this service, but didn't provide any data (found "
                    "request entity size of 0). If you think you sent data to upload, you can try to "
                    f"{req.method} with the query-string parameter inbody=true or use "
                    "multipart/form-data encoding.",
                )
            return text(
                400,
                f"You tried to {req.method} a payload of {size} bytes to this service, but didn't "
                "provide any data. If you think you sent data to upload, you can try to "
                f"{req.method} with the query-string parameter inbody=true or use multipart/form-data "
                "encoding.",
            )
        store = self.store
        resource_id = resource.row["id"]
        overwrite = is_true(req.param("overwrite"))
        extract = is_true(req.param("extract"))
        base_dir = PurePosixPath(file_path).parent.as_posix() if file_path else ""
        duplicates: list[str] = []

        def save(target: str, chunks: Iterator[bytes] | bytes) -> None:
            clean = PurePosixPath(target)
            if clean.is_absolute() or ".." in clean.parts:
                raise XnatRefusal(400, f"Invalid file path {target}")
            exists = store.query_one(
                "SELECT 1 FROM files WHERE resource_id = ? AND path = ?", (resource_id, clean.as_posix())
            )
            if exists and not overwrite:
                duplicates.append(clean.as_posix())
                return
            size, md5 = write_stream_to(
                store.resource_dir(resource_id) / clean, chunks, store.tmp_dir, store.check_space
            )
            store.record_file(resource_id, clean.as_posix(), size, md5)

        try:
            for upload in uploads:
                if extract and _is_archive_name(upload.name):
                    for member, data in iter_members(upload, store.tmp_dir):
                        save(f"{base_dir}/{member}" if base_dir and base_dir != "." else member, data)
                else:
                    target = file_path if (file_path and len(uploads) == 1) else upload.name
                    save(target, iter(partial(upload.stream.read, STREAM_CHUNK), b""))
        finally:
            if req.form is not None:
                req.form.cleanup()
        if duplicates:
            return Response(200, json.dumps({"duplicates": duplicates}).encode(), "text/html")
        return text(200, "")

    # -- site-wide listings and services -----------------------------------------------------------
    def list_users(self, req: Request, m: re.Match[str]) -> Response:
        rows = [
            {
                "login": u["username"],
                "firstname": u["username"],
                "lastname": "",
                "email": f"{u['username']}@example.org",
                "xdat_user_id": index,
                "enabled": "1",
            }
            for index, u in enumerate(self.store.query("SELECT username FROM users ORDER BY username"), start=1)
        ]
        return table(req, rows, "Users")

    def refresh_catalog(self, req: Request, m: re.Match[str]) -> Response:
        """POST /data/services/refresh/catalog?resource=/archive/projects/...: the catalogs are always
        current here (files are recorded as they are written), so only the named resources are checked."""
        names = [r for value in req.multi.get("resource", []) for r in value.split(",") if r.strip()]
        if not names:
            return text(400, "Specify the resources to refresh: ?resource=/archive/experiments/{ID}")
        for name in names:
            path = name.strip()
            path = path[len("/archive") :] if path.startswith("/archive/") else path
            path = path[len("/data") :] if path.startswith("/data/") else path
            target = self.archive.resolve([s for s in path.split("/") if s])
            if target is None or target.name is not None or target.obj is None:
                return text(404, f"Unknown resource {name}")
        return text(200, "")

    def search(self, req: Request, m: re.Match[str]) -> Response:
        """POST /data/search with an xdat:search (or xdat:bundle) document: rows of its root element."""
        raw = req.body.read(5 * 1024 * 1024)
        try:
            document = ElementTree.fromstring(raw)
        except ElementTree.ParseError as exc:
            return text(400, f"Malformed search document: {exc}")
        ns = {"xdat": "http://nrg.wustl.edu/security"}
        root_element = (document.findtext("xdat:root_element_name", "", ns) or "").strip()
        if not root_element:
            return text(400, "The search document names no xdat:root_element_name")
        rows = self._search_rows(root_element)
        for criteria in document.iter("{http://nrg.wustl.edu/security}criteria"):
            field = (criteria.findtext("xdat:schema_field", "", ns) or "").strip()
            comparison = (criteria.findtext("xdat:comparison_type", "=", ns) or "=").strip().upper()
            value = (criteria.findtext("xdat:value", "", ns) or "").strip()
            rows = [r for r in rows if _compare(_lookup_field(r, field), comparison, value)]
        fields = []
        for search_field in document.findall("xdat:search_field", ns):
            element = (search_field.findtext("xdat:element_name", "", ns) or "").strip()
            field_id = (search_field.findtext("xdat:field_ID", "", ns) or "").strip()
            fields.append((element, field_id))
        if fields:
            picked = []
            for row in rows:
                out = {}
                for element, field_id in fields:
                    key = (
                        field_id.lower()
                        if element.lower() == root_element.lower()
                        else (f"{element.replace(':', '_')}_{field_id}".lower())
                    )
                    out[key] = _lookup_field(row, field_id) or ""
                picked.append(out)
            rows = picked
        return table(req, rows, "Search", filter_rows=False)

    def _search_rows(self, element: str) -> list[dict[str, Any]]:
        store = self.store
        lowered = element.lower()
        if lowered == "xnat:projectdata":
            return [readback.project_row(p) for p in store.query("SELECT * FROM projects ORDER BY id")]
        if lowered == "xnat:subjectdata":
            return [self.subject_row(s, s["project"]) for s in store.query("SELECT * FROM subjects ORDER BY id")]
        if is_a(element, "xnat:imagescandata") or lowered.endswith("scandata"):
            rows = []
            for scan in store.query("SELECT * FROM scans ORDER BY experiment_id, rowid"):
                if is_a(scan["xsi_type"], element):
                    rows.append(
                        {**readback.scan_row(scan["experiment_id"], scan), "image_session_ID": scan["experiment_id"]}
                    )
            return rows
        return [
            self.experiment_row(e, e["project"])
            for e in store.query("SELECT * FROM experiments ORDER BY id")
            if is_a(e["xsi_type"], element)
        ]


_NEEDS_XSI_TYPE = "A new experiment needs its data type: add ?xsiType=xnat:mrSessionData (or another)."
_SINGULAR = {
    "projects": "Project",
    "subjects": "Subject",
    "experiments": "Experiment",
    "scans": "Scan",
    "assessors": "Assessor",
    "reconstructions": "Reconstruction",
    "resources": "Resource",
}


def _xs_date(value: str) -> str:
    """A date as XNAT stores it (xs:date, YYYY-MM-DD) from the spellings it accepts; 400 for anything else."""
    for spelling in ("%Y-%m-%d", "%m/%d/%Y", "%Y%m%d"):
        try:
            return dt.datetime.strptime(value.strip(), spelling).date().isoformat()
        except ValueError:
            continue
    raise XnatRefusal(400, f"Invalid date {value!r}: use YYYY-MM-DD")


def _xs_time(value: str) -> str:
    for spelling in ("%H:%M:%S", "%H:%M", "%H%M%S", "%H:%M:%S.%f"):
        try:
            return dt.datetime.strptime(value.strip(), spelling).time().isoformat(timespec="seconds")
        except ValueError:
            continue
    raise XnatRefusal(400, f"Invalid time {value!r}: use HH:MM:SS")


def _split_attrs(attrs: dict[str, str]) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Stored field paths → top-level data fields and children (custom fields, demographics, PI…)."""
    fields: dict[str, str] = {}
    custom: list[dict[str, Any]] = []
    nested: dict[str, dict[str, str]] = {}
    for path, value in attrs.items():
        if path.startswith("fields/"):
            custom.append(item("xnat:fieldDefinitionGroup_field", {"name": path[len("fields/") :], "field": value}))
        elif "/" in path:
            head, tail = path.split("/", 1)
            nested.setdefault(head, {})[tail.replace("/", "_")] = value
        else:
            fields[path] = value
    children = [{"field": "fields/field", "items": custom}] if custom else []
    child_types = {
        "demographics": "xnat:demographicData",
        "PI": "xnat:investigatorData",
        "investigator": "xnat:investigatorData",
    }
    for head, values in nested.items():
        children.append({"field": head, "items": [item(child_types.get(head, "xnat:" + head), values)]})
    return fields, children


def _top_label(obj: Obj | ScanSet | ResourceSet | None) -> str:
    """The label a download is named after: the session (or project/subject) above what was asked for."""
    while obj is not None:
        if isinstance(obj, ResourceSet):
            obj = obj.parent
        elif isinstance(obj, ScanSet):
            obj = obj.experiment
        elif obj.kind in ("resource", "scan", "reconstruction"):
            obj = obj.parent
        else:
            return obj.label
    return ""


def _lookup_field(row: dict[str, Any], field: str) -> str | None:
    """A search field (``LABEL``, ``xnat:mrSessionData/label``, ``xnat:mrSessionData.PROJECT``) of a row."""
    name = re.split(r"[/.]", field)[-1].lower()
    aliases = {"subject_label": "subject_label", "subject_id": "subject_ID", "session_id": "ID"}
    for key, value in row.items():
        if key.lower() == name or key == aliases.get(name):
            return "" if value is None else str(value)
    return None


def _compare(actual: str | None, comparison: str, expected: str) -> bool:
    if actual is None:
        return False
    if comparison == "LIKE":
        import fnmatch

        return fnmatch.fnmatchcase(actual.lower(), expected.replace("%", "*").lower())
    if comparison in ("=", "EQUALS"):
        return actual == expected
    if comparison in ("!=", "<>"):
        return actual != expected
    try:
        left, right = float(actual), float(expected)
    except ValueError:
        left, right = actual, expected  # type: ignore[assignment]
    return {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}.get(comparison, False)


def _is_archive_name(name: str) -> bool:
    try:
        archive_format(name)
    except XnatRefusal:
        return False
    return True
