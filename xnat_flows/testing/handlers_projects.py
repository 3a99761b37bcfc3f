"""Projects and subjects: listings, creation, documents, the prearchive code, and sharing into
other projects.

As XNAT's REST API documentation (Project and Subject API pages) and xnat-web's
``ProjectResource``, ``SubjectResource``, ``ProjectListResource`` and ``SubjectListResource`` answer.
"""

from __future__ import annotations

import re
from typing import Any

from xnat_flows.testing import readback
from xnat_flows.testing.archive_base import ArchiveBase
from xnat_flows.testing.model import Obj
from xnat_flows.testing.render import item, table
from xnat_flows.testing.web import Request, Response, text


class ProjectHandlers(ArchiveBase):
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

    def project_users(self, req: Request, m: re.Match[str]) -> Response:
        """xnat-web ``ProjectUserListResource``: the project's members with their group (the one
        user is the owner of every project, as XNAT makes a project's creator)."""
        project = m["project"]
        if self.store.project(project) is None:
            return text(
                404,
                f"The project ID {project} does not appear to be a valid project ID. Please verify your information.",
            )
        rows = [
            {
                "GROUP_ID": f"{project}_owner",
                "displayname": "Owners",
                "login": u["username"],
                "firstname": u["username"],
                "lastname": "",
                "email": f"{u['username']}@example.org",
            }
            for u in self.store.query("SELECT username FROM users ORDER BY username")
        ]
        return table(req, rows, "Projects")

    def project_accessibility(self, req: Request, m: re.Match[str]) -> Response:
        """xnat-web ``ProjectAccessibilityResource``: the level as text; PUT …/accessibility/{level}."""
        project = self.store.project(m["project"])
        if project is None:
            return text(404, f"Project {m['project']} not found")
        level = m["level"]
        if req.method == "PUT" and level:
            if level not in ("public", "protected", "private"):
                return text(400, f"Invalid accessibility {level}: public, protected or private")
            self.archive.set_attrs(f"accessibility:{project['id']}", {"accessibility": level})
        current = self.archive.attrs(f"accessibility:{project['id']}").get("accessibility", "private")
        return text(200, current)

    # -- listings ------------------------------------------------------------------------------------
    def list_projects(self, req: Request, parent: Obj | None) -> Response:
        """Every project, or the projects a subject/experiment belongs to (its own and its shares)."""
        if parent is None:
            rows = [readback.project_row(p) for p in self.store.query("SELECT * FROM projects ORDER BY id")]
            return table(req, rows, "Projects")
        projects = [
            {"ID": parent.row["project"], "label": parent.label, "URI": f"/data/projects/{parent.row['project']}"}
        ]
        projects += [
            {"ID": s["project"], "label": s["label"], "URI": f"/data/projects/{s['project']}"}
            for s in self.archive.shares(parent.owner)
        ]
        return table(req, projects, "Projects")

    def list_subjects(self, req: Request, parent: Obj | None) -> Response:
        store = self.store
        if parent is None:
            subjects = store.query("SELECT * FROM subjects ORDER BY id")
            return table(req, [self.subject_row(s, s["project"]) for s in subjects], "Subjects")
        own = store.query("SELECT * FROM subjects WHERE project = ? ORDER BY id", (parent.id,))
        shared = store.query(
            "SELECT t.* FROM subjects t JOIN shares s ON s.owner = t.id WHERE s.project = ? ORDER BY t.id",
            (parent.id,),
        )
        return table(req, [self.subject_row(s, parent.id) for s in [*own, *shared]], "Subjects")

    def subject_row(self, subject: Any, project: str) -> dict[str, Any]:
        obj = Obj("subject", subject, None, project)
        attrs = self.archive.attrs(subject["id"])
        return {
            "ID": subject["id"],
            "label": self.label_in(obj),
            "project": subject["project"],
            "URI": f"/data/subjects/{subject['id']}",
            "insert_date": subject["insert_date"],
            "insert_user": "admin",
            "xsiType": "xnat:subjectData",
            **{k.rsplit("/", 1)[-1]: v for k, v in attrs.items() if k.startswith("demographics/")},
        }

    # -- creation ------------------------------------------------------------------------------------
    def create_project(self, req: Request, name: str) -> Response:
        fields = self.fields_of(req, "project")
        self.store.ensure_project(name)
        project = self.archive.child(None, "projects", name)
        assert isinstance(project, Obj)
        self.store_fields(project, fields)
        return text(201, name)

    def create_subject(self, req: Request, project: Obj, name: str) -> Response:
        """201 + ID when new, 200 + ID when it exists (xnat-web ``SubjectResource.handlePut``)."""
        fields = self.fields_of(req, "subject")
        label = req.param("xnat:subjectData/label") or req.param("label") or name
        row, created = self.archive.create_subject(project.id, label)
        self.store_fields(Obj("subject", row, project, project.id), fields)
        return text(201 if created else 200, row["id"])

    def post_subject(self, req: Request, project: Obj) -> Response:
        """``POST /data/projects/P/subjects``: xnat-web ``ProjectSubjectList.handlePost`` — a new
        subject from the XML body or the query; 409 "Subject already exists.", else 201 + ID."""
        document = self.body_document(req)
        label = (
            req.param("xnat:subjectData/label")
            or req.param("label")
            or (document[1].get("label", "") if document else "")
        )
        if label and self.store.subject(label, project.id) is not None:
            return text(409, "Subject already exists.")
        fields = self.fields_of(req, "subject")
        if not label:
            label = self.store.next_accession("S")  # XNAT labels a subject without one by its ID
        row, _ = self.archive.create_subject(project.id, label)
        self.store_fields(Obj("subject", row, project, project.id), fields)
        return text(201, row["id"])

    def share_into(self, req: Request, obj: Obj, project: str) -> Response:
        """``PUT …/subjects/S/projects/Q[?label=L]`` (and experiments): show the object in Q, as
        xnat-web ``SubjectResource``/``SubjAssessmentResource.handlePut`` do: 404 for an unknown
        project, 409 when it is the object's own project or already shared there ("Already
        assigned to project:Q"; a new label is applied first), 409 "Label already in use:L"."""
        if self.store.project(project) is None:
            return text(404, f"Unable to identify project: {project}")
        already = f"Already assigned to project:{project}"
        if project == obj.row["project"]:
            return text(409, already)
        label = req.param("label")
        share = self.store.query_one("SELECT label FROM shares WHERE owner = ? AND project = ?", (obj.owner, project))
        if label and (share is None or share["label"] != label) and self._label_taken(obj, project, label):
            return text(409, f"Label already in use:{label}")
        if share is not None:
            if label and label != share["label"]:
                self.archive.share(obj, project, label)
                if obj.kind == "subject":
                    return text(200, "")
            return text(409, already)
        self.archive.share(obj, project, label or obj.label)
        return text(200, "")

    def _label_taken(self, obj: Obj, project: str, label: str) -> bool:
        table = "subjects" if obj.kind == "subject" else "experiments"
        own = self.store.query_one(f"SELECT 1 FROM {table} WHERE project = ? AND label = ?", (project, label))
        shared = self.store.query_one(
            f"SELECT 1 FROM shares s JOIN {table} t ON t.id = s.owner WHERE s.project = ? AND s.label = ?",
            (project, label),
        )
        return own is not None or shared is not None

    # -- documents -----------------------------------------------------------------------------------
    def project_document(self, obj: Obj, fields: dict[str, str], children: list[dict[str, Any]]) -> dict[str, Any]:
        row = obj.row
        base = {
            "ID": obj.id,
            "secondary_ID": obj.id,
            "name": row["name"] or obj.id,
            "description": row["description"] or "",
            "active": "true",
        }
        return item(
            "xnat:projectData", {**base, **fields}, children + self.resource_children(obj, "resources/resource")
        )

    def subject_document(self, obj: Obj, fields: dict[str, str], children: list[dict[str, Any]]) -> dict[str, Any]:
        base = {"ID": obj.id, "project": obj.row["project"], "label": self.label_in(obj), "id": obj.id}
        return item(
            "xnat:subjectData",
            {**base, **fields},
            children + self.resource_children(obj, "resources/resource") + self.sharing(obj),
            {"start_date": obj.row["insert_date"]},
        )
