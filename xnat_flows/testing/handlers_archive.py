"""The archive's REST API: one handler walks ``/data[/archive]/projects|subjects|experiments/...``
through the object model (``model.Archive``) and hands each object kind and method to its handler
group: projects/subjects (``handlers_projects``), experiments/scans (``handlers_experiments``),
resources/files (``handlers_resources``), search/users (``handlers_search``). Every listing and
object goes out through ``render`` (json/csv/xml/html).

Behaviour follows XNAT's REST API documentation (Project/Subject/Experiment/Image Scan/Image
Assessor Resource API pages, "How To Download Files via the XNAT REST API", "REST Enhanced
Listing Options", "XNAT REST XML Path Shortcuts") and xnat-web's restlet resources.
"""

from __future__ import annotations

import re
from typing import Any

from xnat_flows.testing.fields import split_attrs
from xnat_flows.testing.handlers_experiments import NEED_PUT_CONTENTS, ExperimentHandlers
from xnat_flows.testing.handlers_projects import ProjectHandlers
from xnat_flows.testing.handlers_resources import ResourceHandlers
from xnat_flows.testing.handlers_search import SearchHandlers
from xnat_flows.testing.model import Obj, ResourceSet, ScanSet, Target
from xnat_flows.testing.render import item, object_response
from xnat_flows.testing.web import Request, Response, text

_SINGULAR = {
    "projects": "Project",
    "subjects": "Subject",
    "experiments": "Experiment",
    "scans": "Scan",
    "assessors": "Assessor",
    "reconstructions": "Reconstruction",
    "resources": "Resource",
}


class ArchiveHandlers(ProjectHandlers, ExperimentHandlers, ResourceHandlers, SearchHandlers):
    # -- entry point -------------------------------------------------------------------------------
    def archive_tree(self, req: Request, m: re.Match[str]) -> Response:
        return self._walk(req, [s for s in m["tree"].split("/") if s])

    def _walk(self, req: Request, segments: list[str]) -> Response:
        target = self.archive.resolve(segments)
        if target is None:
            return text(404, f"The requested resource {req.path} was not found.")
        if target.collection == "files" and target.name is not None:
            return self.file(req, target.obj, target.name)
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
            return self.list_resources(req, obj)
        if isinstance(obj, ScanSet):
            if req.method == "DELETE":
                for scan in obj.scans:
                    self.archive.delete(scan)
                return text(200, "")
            if req.method != "GET":
                return text(405, f"Method {req.method} not allowed")
            return self.list_scans(req, obj.experiment, [s.row for s in obj.scans])
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
                assert obj.parent is not None
                return self.share_into(req, obj.parent, obj.project)
            self.apply_fields(req, obj)
            return text(200, obj.id)
        return text(405, f"Method {req.method} not allowed")

    # -- collections -------------------------------------------------------------------------------
    def _collection(self, req: Request, parent: Obj | ScanSet | ResourceSet | None, collection: str) -> Response:
        if collection == "files":
            if req.method in ("PUT", "POST"):
                if isinstance(parent, Obj) and parent.kind == "resource":
                    return self.upload(req, parent, "")
                return text(405, f"Method {req.method} not allowed on {req.path}")
            if req.method != "GET":
                return text(405, f"Method {req.method} not allowed")
            return self.list_files(req, parent)
        if req.method == "POST" and isinstance(parent, Obj):
            # Creation through a listing: ProjectSubjectList.handlePost, ScanList.handlePost.
            if collection == "subjects" and parent.kind == "project":
                return self.post_subject(req, parent)
            if collection == "scans" and parent.kind == "experiment":
                return self.post_scan(req, parent)
        if req.method != "GET":
            return text(405, f"Method {req.method} not allowed on a listing")
        if isinstance(parent, ScanSet):
            return self.list_resources(req, parent)
        if isinstance(parent, ResourceSet):
            return text(404, f"The requested resource {req.path} was not found.")
        if collection == "projects":
            return self.list_projects(req, parent)
        if collection == "subjects":
            return self.list_subjects(req, parent)
        if collection == "experiments":
            return self.list_experiments(req, parent)
        if parent is not None:
            listings = {
                "scans": self.list_scans,
                "assessors": self.list_assessors,
                "reconstructions": self.list_reconstructions,
                "resources": self.list_resources,
            }
            if collection in listings:
                return listings[collection](req, parent)
        return text(404, f"The requested resource {req.path} was not found.")

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
                if len(rest) == 2 and req.method == "PUT" and not (req.param("xsiType") or self.body_document(req)):
                    return text(417, NEED_PUT_CONTENTS)  # refused before the subject is made
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
        if parent is None:
            if collection == "projects":
                return self.create_project(req, name)
            return text(404, f"{_SINGULAR[collection]} {name} not found")  # new subjects/experiments need a project
        kind = parent.kind
        if collection == "subjects" and kind == "project":
            return self.create_subject(req, parent, name)
        if collection == "experiments" and kind in ("project", "subject"):
            return self.create_experiment(req, parent, name)
        if kind == "experiment":
            creators = {
                "assessors": self.create_assessor,
                "scans": self.create_scan,
                "reconstructions": self.create_reconstruction,
            }
            if collection in creators:
                return creators[collection](req, parent, name)
        if collection == "resources" and kind != "resource":
            return self.create_resource(req, parent, name)
        if collection == "projects" and kind in ("subject", "experiment", "assessor"):
            return self.share_into(req, parent, name)
        return text(404, f"The requested resource {req.path} was not found.")

    # -- documents and URIs, per kind --------------------------------------------------------------
    def document(self, obj: Obj) -> dict[str, Any]:
        """The ``items`` entry of an object with its children, as XNAT's JSON/XML representation."""
        fields, children = split_attrs(self.archive.attrs(obj.owner))
        if obj.kind == "project":
            return self.project_document(obj, fields, children)
        if obj.kind == "subject":
            return self.subject_document(obj, fields, children)
        if obj.kind in ("experiment", "assessor"):
            return self.experiment_document(obj, fields, children)
        if obj.kind == "scan":
            return self.scan_document(obj, fields, children)
        if obj.kind == "reconstruction":
            return self.reconstruction_document(obj, fields, children)
        return self.resource_item(obj)

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
