"""What the archive's handler groups share: the object model, metadata writes, labels as seen
through a project, sharing children, and the per-kind hooks each group implements for the others.

The groups (``handlers_projects``, ``handlers_experiments``, ``handlers_resources``,
``handlers_search``) are combined into one class by ``handlers_archive.ArchiveHandlers``.
"""

from __future__ import annotations

from typing import Any

from xnat_flows.testing.fields import Fields, document_fields, is_xml_body, parse_fields, split_values
from xnat_flows.testing.model import Archive, Obj, ResourceSet, ScanSet
from xnat_flows.testing.prearchive import XnatRefusal
from xnat_flows.testing.render import item, schema_types
from xnat_flows.testing.web import HandlerBase, Request


class ArchiveBase(HandlerBase):
    @property
    def archive(self) -> Archive:
        return Archive(self.store)

    # -- hooks, implemented by the handler groups ------------------------------------------------------
    def document(self, obj: Obj) -> dict[str, Any]:
        """The ``items`` entry of an object with its children (``handlers_archive``)."""
        raise NotImplementedError

    def uri(self, obj: Obj) -> str:
        raise NotImplementedError

    def resource_children(self, obj: Obj, field: str) -> list[dict[str, Any]]:
        raise NotImplementedError

    def resource_row(self, resource: Obj) -> dict[str, Any]:
        raise NotImplementedError

    def subject_row(self, subject: Any, project: str) -> dict[str, Any]:
        raise NotImplementedError

    def experiment_row(self, experiment: Any, project: str) -> dict[str, Any]:
        raise NotImplementedError

    def files_below(self, parent: Obj | ScanSet | ResourceSet | None) -> list[tuple[Obj, Any]]:
        raise NotImplementedError

    # -- metadata ------------------------------------------------------------------------------------
    def fields_of(self, req: Request, kind: str) -> Fields:
        """The fields a PUT sets: an XML document in the body (xnat-web ``loadItem``), then the
        query string's xpaths and shortcuts over it."""
        body = self.body_document(req)
        if body is None:
            return parse_fields(req.params, kind)
        _, values, _ = body
        columns, attrs = split_values(values, kind)
        query_columns, query_attrs = parse_fields(req.params, kind)
        return {**columns, **query_columns}, {**attrs, **query_attrs}

    def body_document(self, req: Request) -> tuple[str, dict[str, str], dict[str, str]] | None:
        """(xsiType, fields, identity) of an XML document sent as the body, or None; read once."""
        if not hasattr(req, "xml_document"):
            document = None
            if not req.body.is_empty() and req.content_type not in ("multipart/form-data",):
                raw = req.body.read_up_to(5 * 1024 * 1024)
                if raw.strip() and is_xml_body(req.content_type, raw[:64]):
                    types = {name.lower(): xsi for xsi, name in schema_types().items()}
                    document = document_fields(raw, types)
            req.xml_document = document  # type: ignore[attr-defined]
        return req.xml_document  # type: ignore[attr-defined]

    def apply_fields(self, req: Request, obj: Obj) -> None:
        self.store_fields(obj, self.fields_of(req, obj.kind))

    def store_fields(self, obj: Obj, fields: Fields) -> None:
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

    # -- how an object looks from the project it was addressed through ------------------------------
    def label_in(self, obj: Obj) -> str:
        """An object's label as seen from the project it was addressed through (a share may rename it)."""
        if obj.project and obj.project != obj.row["project"]:
            share = self.store.query_one(
                "SELECT label FROM shares WHERE owner = ? AND project = ?", (obj.owner, obj.project)
            )
            if share is not None:
                return share["label"]
        return obj.row["label"]

    def sharing(self, obj: Obj) -> list[dict[str, Any]]:
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
