"""Experiments (image sessions and assessors), scans and reconstructions: listings, creation and
documents.

As XNAT's REST API documentation (Experiment, Image Scan and Image Assessor API pages, "Get All
Experiments") and xnat-web's ``ExperimentResource``, ``ScanResource`` and their list resources answer.
"""

from __future__ import annotations

import re
from typing import Any

from xnat_flows.testing import readback
from xnat_flows.testing.archive_base import ArchiveBase
from xnat_flows.testing.model import Obj, is_a
from xnat_flows.testing.prearchive import XnatRefusal
from xnat_flows.testing.render import item, table
from xnat_flows.testing.web import Request, Response, text

NEED_PUT_CONTENTS = "Need PUT Contents"

# xnat-web XMLPathShortcuts (EXPERIMENT_DATA): the xpaths a listing column may be asked by, and the
# shortcut name the column then carries (QueryOrganizerResource.formatHeaders).
_EXPERIMENT_SHORTCUTS = {
    "xnat:experimentdata/id": "ID",
    "xnat:experimentdata/visit_id": "visit_id",
    "xnat:experimentdata/date": "date",
    "xnat:experimentdata/time": "time",
    "xnat:experimentdata/note": "note",
    "xnat:experimentdata/project": "project",
    "xnat:experimentdata/label": "label",
    "xnat:imagesessiondata/scanner": "scanner",
    "xnat:imagesessiondata/operator": "operator",
    "xnat:imagesessiondata/session_type": "session_type",
    "xnat:imagesessiondata/modality": "modality",
    "xnat:imagesessiondata/uid": "UID",
    "xnat:subjectassessordata/subject_id": "subject_ID",
    "xnat:subjectdata/label": "subject_label",
    "xnat:imagesessiondata/id": "session_ID",
    "xnat:imagesessiondata/label": "session_label",
    "xnat:experimentdata/meta/insert_date": "insert_date",
    "xnat:experimentdata/meta/insert_user/login": "insert_user",
    "xnat:experimentdata/extension_item/element_name": "xsiType",
}
# Types a listing may be rooted at that are no data type of their own (not secured elements): XNAT
# adds the xsiType and project columns to such a listing (ExperimentListResource).
_ABSTRACT_ROOTS = {
    "xnat:experimentdata",
    "xnat:subjectassessordata",
    "xnat:imagesessiondata",
    "xnat:imageassessordata",
    "xnat:deriveddata",
}


class ExperimentHandlers(ArchiveBase):
    # -- listings ------------------------------------------------------------------------------------
    def list_experiments(self, req: Request, parent: Obj | None) -> Response:
        """Site-wide, a project's (its own and shared into it) or a subject's experiments."""
        store = self.store
        if parent is None:
            return self._experiments(req, store.query("SELECT * FROM experiments ORDER BY id"), "", site=True)
        if parent.kind == "project":
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

    def list_assessors(self, req: Request, session: Obj) -> Response:
        rows = self.store.query("SELECT * FROM experiments WHERE session_id = ? ORDER BY id", (session.id,))
        return self._experiments(req, rows, session.project, assessors=True)

    def _experiments(
        self, req: Request, rows: list[Any], project: str, assessors: bool = False, site: bool = False
    ) -> Response:
        columns = [c.strip() for c in req.param("columns").split(",") if c.strip()]
        wanted = req.param("xsiType")
        if site and not wanted:  # a column or filter naming a type roots the listing there
            root = _root_of(req, columns)
            wanted = "" if root == "xnat:experimentData" else root
        chosen = []
        for row in rows:
            if wanted:
                if not is_a(row["xsi_type"], wanted):
                    continue
            elif bool(row["session_id"]) != assessors:
                continue  # listings of experiments show sessions; assessors are listed under their session
            chosen.append(row)
        title = "Assessors" if assessors else "Experiments"
        if columns and [c.upper() for c in columns] != ["DEFAULT"]:
            picked = [self._picked(req, row, project, columns, site) for row in chosen]
            return table(req, picked, title, fixed_columns=True)
        if site:  # xnat-web ExperimentListResource.getDefaultFields for the listing's root type
            root = _root_of(req, [])
            return table(req, [self._default_fields(row, root) for row in chosen], title, fixed_columns=True)
        return table(req, [self.experiment_row(row, project) for row in chosen], title)

    def _default_fields(self, experiment: Any, root: str) -> dict[str, Any]:
        full = self.experiment_row(experiment, "")
        names = ["ID", "project", "date", "xsiType", "label", "insert_date"]
        if is_a(root, "xnat:subjectAssessorData"):
            names += ["subject_ID", "subject_label"]
        if is_a(root, "xnat:imageAssessorData"):
            names += ["session_ID", "session_label"]
        return {**{name: full.get(name, "") for name in names}, "URI": full["URI"]}

    def _picked(self, req: Request, experiment: Any, project: str, columns: list[str], site: bool) -> dict[str, Any]:
        """The columns asked for, xpaths named by their shortcut (xnat-web
        ``QueryOrganizerResource.formatHeaders``); a site-wide listing rooted at an abstract type
        also carries xsiType and project (``ExperimentListResource``)."""
        full = self.experiment_row(experiment, project)
        attrs = self.archive.attrs(experiment["id"])
        picked: dict[str, Any] = {}
        for column in columns:
            name = _EXPERIMENT_SHORTCUTS.get(column.lower(), column) if "/" in column else column
            picked[name] = self._column_value(full, attrs, column, name)
        if site and _root_of(req, columns).lower() in _ABSTRACT_ROOTS:
            picked.setdefault("xsiType", full["xsiType"])
            picked.setdefault("project", full["project"])
        picked["URI"] = full["URI"]
        return picked

    @staticmethod
    def _column_value(full: dict[str, Any], attrs: dict[str, str], column: str, name: str) -> Any:
        if name in full:
            return full[name]
        path = column.split("/", 1)[1] if "/" in column and ":" in column.split("/", 1)[0] else column
        custom = re.fullmatch(r"fields/field\[name=([^\]]+)\]/field", path)
        if custom:
            return attrs.get(f"fields/{custom[1]}", "")
        return attrs.get(path, attrs.get(name, ""))

    def list_scans(self, req: Request, session: Obj, only: list[Any] | None = None) -> Response:
        scans = (
            only
            if only is not None
            else self.store.query("SELECT * FROM scans WHERE experiment_id = ? ORDER BY rowid", (session.id,))
        )
        return table(req, [readback.scan_row(session.id, s) for s in scans], "Scans")

    def list_reconstructions(self, req: Request, session: Obj) -> Response:
        recons = self.store.query("SELECT * FROM reconstructions WHERE experiment_id = ? ORDER BY rowid", (session.id,))
        rows = [
            {
                "ID": r["recon_id"],
                "type": r["type"] or "",
                "xsiType": "xnat:reconstructedImageData",
                "URI": f"{self.uri(session)}/reconstructions/{r['recon_id']}",
            }
            for r in recons
        ]
        return table(req, rows, "Reconstructions")

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
            "label": self.label_in(obj),
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

    # -- creation ------------------------------------------------------------------------------------
    def create_experiment(self, req: Request, parent: Obj, name: str) -> Response:
        """xnat-web ``SubjAssessmentResource.handlePut``: the type from ``xsiType=`` or the XML
        document in the body; with neither, 417 "Need PUT Contents"."""
        document = self.body_document(req)
        xsi_type = req.param("xsiType") or (document[0] if document else "")
        if not xsi_type:
            return text(417, NEED_PUT_CONTENTS)
        fields = self.fields_of(req, "experiment")
        label = self._new_label(req, xsi_type, name)
        if self.store.query_one("SELECT 1 FROM experiments WHERE project = ? AND label = ?", (parent.project, label)):
            return text(409, f"An experiment labelled {label} already exists in project {parent.project}.")
        subject = parent.row if parent.kind == "subject" else self._subject_for(req, parent, xsi_type)
        row = self.archive.create_experiment(parent.project, subject, label, xsi_type)
        self.store_fields(Obj("experiment", row, parent, parent.project), fields)
        return text(201, row["id"])

    def create_assessor(self, req: Request, session: Obj, name: str) -> Response:
        xsi_type = req.param("xsiType")
        if not xsi_type:
            return text(400, "A new assessor needs its data type: add ?xsiType=xnat:qcAssessmentData (or another).")
        fields = self.fields_of(req, "assessor")
        label = self._new_label(req, xsi_type, name)
        subject = self.archive.subject_row(session.row["subject_id"])
        row = self.archive.create_experiment(session.row["project"], subject, label, xsi_type, session_id=session.id)
        self.store_fields(Obj("assessor", row, session, session.project), fields)
        return text(201, row["id"])

    def create_scan(self, req: Request, session: Obj, name: str) -> Response:
        """xnat-web ``ScanResource.handlePut``."""
        document = self.body_document(req)
        xsi_type = req.param("xsiType") or (document[0] if document else "")
        if not xsi_type:
            return text(417, NEED_PUT_CONTENTS)
        if xsi_type.lower() == "xnat:imagescandata" or not is_a(xsi_type, "xnat:imageScanData"):
            return text(
                400,
                "Multiple scan modalities can be associated here.  Please retry with the "
                "specification of a particular modality (i.e. ?xsiType=xnat:mrScanData).",
            )
        fields = self.fields_of(req, "scan")
        row = self.archive.create_scan(session, name, xsi_type)
        self.store_fields(Obj("scan", row, session, session.project), fields)
        return text(200, "")

    def post_scan(self, req: Request, session: Obj) -> Response:
        """``POST …/scans``: xnat-web ``ScanList.handlePost`` — the scan type from the session's
        modality (or ``xsiType=``, or the XML body), its ID from the request or the first free
        number; 409 when it exists, 201 + ID."""
        document = self.body_document(req)
        modality_type = session.row["xsi_type"].replace("SessionData", "ScanData")
        known = modality_type if is_a(modality_type, "xnat:imageScanData") and "otherDicom" not in modality_type else ""
        xsi_type = (document[0] if document else "") or req.param("xsiType") or known
        if not xsi_type:
            return text(417, "Need POST Contents")
        scan_id = (
            (document[2].get("ID", "") if document else "")
            or req.param(f"{xsi_type}/ID")
            or req.param("xnat:imageScanData/ID")
            or req.param("ID")
        )
        taken = {
            str(s["scan_id"])
            for s in self.store.query("SELECT scan_id FROM scans WHERE experiment_id = ?", (session.id,))
        }
        if scan_id in taken:
            return text(409, "Specified scan already exists.")
        if not scan_id:
            scan_id = str(next(i for i in range(1, len(taken) + 2) if str(i) not in taken))
        fields = self.fields_of(req, "scan")
        row = self.archive.create_scan(session, scan_id, xsi_type)
        self.store_fields(Obj("scan", row, session, session.project), fields)
        return text(201, scan_id)

    def create_reconstruction(self, req: Request, session: Obj, name: str) -> Response:
        fields = self.fields_of(req, "reconstruction")
        row = self.archive.create_reconstruction(session, name, req.param("type"))
        self.store_fields(Obj("reconstruction", row, session, session.project), fields)
        return text(201, name)

    def _subject_for(self, req: Request, project: Obj, xsi_type: str):
        document = self.body_document(req)
        ref = (
            req.param(f"{xsi_type}/subject_ID")
            or req.param("subject_ID")
            or req.param("xnat:subjectAssessorData/subject_ID")
            or (document[2].get("subject_ID", "") if document else "")
        )
        if not ref:
            raise XnatRefusal(
                400,
                "A new experiment needs a subject: create it under /subjects/{subject}/experiments or pass subject_ID.",
            )
        row, _ = self.archive.create_subject(project.id, ref)
        return row

    def _new_label(self, req: Request, xsi_type: str, name: str) -> str:
        document = self.body_document(req)
        return req.param(f"{xsi_type}/label") or req.param("label") or (document and document[1].get("label")) or name

    # -- documents -----------------------------------------------------------------------------------
    def experiment_document(self, obj: Obj, fields: dict[str, str], children: list[dict[str, Any]]) -> dict[str, Any]:
        row = obj.row
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
                children + self.resource_children(obj, "out/file") + self.sharing(obj),
                {"start_date": row["insert_date"]},
            )
        base = {
            "ID": obj.id,
            "label": self.label_in(obj),
            "project": row["project"],
            "subject_ID": row["subject_id"],
            "UID": row["uid"],
            "date": row["date"],
            "time": row["time"],
            "modality": row["modality"],
            "id": obj.id,
        }
        store = self.store
        scans = [
            Obj("scan", s, obj, obj.project)
            for s in store.query("SELECT * FROM scans WHERE experiment_id = ? ORDER BY rowid", (obj.id,))
        ]
        if scans:
            children.append({"field": "scans/scan", "items": [self.document(s) for s in scans]})
        recons = [
            Obj("reconstruction", r, obj, obj.project)
            for r in store.query("SELECT * FROM reconstructions WHERE experiment_id = ? ORDER BY rowid", (obj.id,))
        ]
        if recons:
            children.append(
                {"field": "reconstructions/reconstructedImage", "items": [self.document(r) for r in recons]}
            )
        assessors = [
            Obj("assessor", a, obj, obj.project)
            for a in store.query("SELECT * FROM experiments WHERE session_id = ? ORDER BY id", (obj.id,))
        ]
        if assessors:
            children.append({"field": "assessors/assessor", "items": [self.document(a) for a in assessors]})
        children += self.resource_children(obj, "resources/resource") + self.sharing(obj)
        return item(row["xsi_type"], {**base, **fields}, children, {"start_date": row["insert_date"]})

    def scan_document(self, obj: Obj, fields: dict[str, str], children: list[dict[str, Any]]) -> dict[str, Any]:
        row = obj.row
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
        return item(row["xsi_type"], {**base, **fields}, children + self.resource_children(obj, "file"))

    def reconstruction_document(
        self, obj: Obj, fields: dict[str, str], children: list[dict[str, Any]]
    ) -> dict[str, Any]:
        base = {"ID": obj.id, "type": obj.row["type"] or ""}
        return item(
            "xnat:reconstructedImageData", {**base, **fields}, children + self.resource_children(obj, "out/file")
        )


def _root_of(req: Request, columns: list[str]) -> str:
    """The type a site-wide experiment listing is rooted at (xnat-web
    ``QueryOrganizerResource.getRootElementName``): ``xsiType=`` when it names one type, else
    xnat:experimentData, narrowed to an experiment type an xpath column or filter names."""
    asked = req.param("xsiType")
    if asked and "," not in asked:
        return asked
    root = "xnat:experimentData"
    for path in [*columns, *req.multi]:
        head = path.split("/", 1)[0] if "/" in path else ""
        other = head.lower() in ("xnat:subjectdata", "xnat:projectdata", root.lower())
        if ":" in head and not other and is_a(head, root):
            root = head
    return root
