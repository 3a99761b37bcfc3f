"""Handlers for projects, subjects, experiments, scans, resources and files (spec §5, §6)."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from xnat_flows.testing import readback
from xnat_flows.testing.importer import archive_format, iter_members
from xnat_flows.testing.prearchive import XnatRefusal, is_true
from xnat_flows.testing.state import write_stream_to
from xnat_flows.testing.web import STREAM_CHUNK, HandlerBase, Request, Response, json_response, request_uploads, text


class ArchiveHandlers(HandlerBase):
    def list_projects(self, req: Request, m: re.Match[str]) -> Response:
        rows = [readback.project_row(p) for p in self.store.query("SELECT * FROM projects ORDER BY id")]
        return json_response(readback.result_set(rows, "Projects"))

    def project(self, req: Request, m: re.Match[str]) -> Response:
        project_id = m["project"]
        if req.method == "PUT":
            created = self.store.ensure_project(project_id)
            return text(201 if created else 200, "")
        project = self.store.project(project_id)
        if project is None:
            return text(404, f"Project {project_id} not found")
        if req.param("format") == "xml":
            xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<xnat:Project ID="{project_id}" '
                   'xmlns:xnat="http://nrg.wustl.edu/xnat" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
                   'xsi:schemaLocation="http://nrg.wustl.edu/xnat /xapi/schemas/xnat"><xnat:name>'
                   f"{project['name']}</xnat:name></xnat:Project>")
            return Response(200, xml.encode(), "text/xml")
        fields = {"ID": project_id, "secondary_ID": project_id, "name": project["name"] or project_id,
                  "description": project["description"] or "", "id": project_id}
        return json_response(readback.simple_items("xnat:projectData", fields))

    def _require_project(self, project_id: str) -> None:
        if self.store.project(project_id) is None:
            raise XnatRefusal(404, f"Project {project_id} not found")

    def get_prearchive_code(self, req: Request, m: re.Match[str]) -> Response:
        project = self.store.project(m["project"])
        if project is None:
            return text(404, f"Project {m['project']} not found")
        return text(200, str(project["prearchive_code"]))

    def put_prearchive_code(self, req: Request, m: re.Match[str]) -> Response:
        self._require_project(m["project"])
        try:
            code = int(m["code"])
        except ValueError:
            return text(400, f"Invalid prearchive code {m['code']}")
        self.store.set_prearchive_code(m["project"], code)
        return text(200, "")

    def list_subjects(self, req: Request, m: re.Match[str]) -> Response:
        self._require_project(m["project"])
        rows = self.store.query("SELECT * FROM subjects WHERE project = ? ORDER BY id", (m["project"],))
        return json_response(readback.result_set([readback.subject_row(s) for s in rows], "Subjects"))

    def subject(self, req: Request, m: re.Match[str]) -> Response:
        project = m.groupdict().get("project")  # None on /data/subjects/{ID}
        if project is not None:
            self._require_project(project)
        if req.method == "PUT" and project is not None:  # 201 even when it already existed (spec §5)
            self.store.ensure_subject(project, m["subject"])
            return text(201, "")
        subject = self.store.subject(m["subject"], project)
        if subject is None:
            return text(404, f"Subject {m['subject']} not found")
        fields = {"ID": subject["id"], "label": subject["label"], "project": subject["project"], "id": subject["id"]}
        return json_response(readback.simple_items("xnat:subjectData", fields))

    # -- experiments -------------------------------------------------------------------------------
    def list_experiments(self, req: Request, m: re.Match[str]) -> Response:
        sql, args = "SELECT * FROM experiments", []
        clauses = []
        if m["project"]:
            self._require_project(m["project"])
            clauses.append("project = ?")
            args.append(m["project"])
        if m["subject"]:
            subject = self.store.subject(m["subject"], m["project"])
            if subject is None:
                return text(404, f"Subject {m['subject']} not found")
            clauses.append("subject_id = ?")
            args.append(subject["id"])
        xsi = req.param("xsiType")
        if xsi:
            clauses.append("lower(xsi_type) = lower(?)")
            args.append(xsi)
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        rows = [readback.experiment_row(self.store, e) for e in self.store.query(sql + " ORDER BY id", tuple(args))]
        columns = [c.strip() for c in req.param("columns").split(",") if c.strip()]
        if columns:
            rows = [{k: v for k, v in r.items() if k in columns or k == "URI"} for r in rows]
        return json_response(readback.result_set(rows, "Experiments"))

    def _experiment(self, m: re.Match[str]):
        if m["project"]:
            experiment = self.store.experiment(m["expt"], m["project"])
        else:
            experiment = self.store.experiment(m["expt"])
        if experiment is not None and m["subject"]:
            subject = self.store.subject(m["subject"], m["project"])
            if subject is None or subject["id"] != experiment["subject_id"]:
                experiment = None
        if experiment is None:
            raise XnatRefusal(404, f"Experiment {m['expt']} not found")
        return experiment

    def experiment_tree(self, req: Request, m: re.Match[str]) -> Response:
        experiment = self._experiment(m)
        parts = [p for p in (m["rest"] or "").split("/") if p]
        if not parts:
            if req.method == "GET":
                return json_response(readback.experiment_items(self.store, experiment))
            if req.method == "PUT":  # pullDataFromHeaders / fixScanTypes / triggerPipelines: accepted no-ops
                return text(200, "")
            if req.method == "DELETE":
                for resource in self.store.query("SELECT * FROM resources WHERE experiment_id = ?", (experiment["id"],)):
                    self._delete_resource(resource)
                with self.store.transaction() as db:
                    db.execute("DELETE FROM scans WHERE experiment_id = ?", (experiment["id"],))
                    db.execute("DELETE FROM experiments WHERE id = ?", (experiment["id"],))
                return text(200, "")
            return text(405, f"Method {req.method} not allowed")
        scan_id = ""
        if parts[0] == "scans":
            if len(parts) == 1:
                return self._list_scans(experiment)
            scan_id = parts[1]
            parts = parts[2:]
            if scan_id == "ALL" and parts[:1] == ["files"]:
                return self._zip_response(self._all_scan_files(experiment), f"{experiment['label']}.zip")
            scan = self.store.query_one("SELECT * FROM scans WHERE experiment_id = ? AND scan_id = ?",
                                        (experiment["id"], scan_id))
            if scan is None:
                return text(404, f"Scan {scan_id} not found")
            if not parts:
                fields = {"ID": scan_id, "type": scan["type"], "UID": scan["series_uid"],
                          "series_description": scan["series_description"], "image_session_ID": experiment["id"]}
                return json_response(readback.simple_items(scan["xsi_type"], fields))
        if parts == ["files"] and req.method == "GET":  # every file of every resource of this parent
            rows = []
            for resource in self.store.query("SELECT * FROM resources WHERE experiment_id = ? AND scan_id = ? "
                                             "ORDER BY id", (experiment["id"], scan_id)):
                rows += readback.file_rows(self.store, resource)
            return json_response(readback.result_set(rows, "Files", readback.FILE_COLUMNS))
        if parts[0] != "resources":
            return text(404, f"The requested resource {req.path} was not found.")
        return self._resource_tree(req, experiment, scan_id, parts[1:])

    def _list_scans(self, experiment) -> Response:
        scans = self.store.query("SELECT * FROM scans WHERE experiment_id = ? ORDER BY rowid", (experiment["id"],))
        return json_response(readback.result_set([readback.scan_row(experiment["id"], s) for s in scans], "Scans"))

    def _all_scan_files(self, experiment) -> list[tuple[str, Path]]:
        entries = []
        for resource in self.store.query(
            "SELECT * FROM resources WHERE experiment_id = ? AND scan_id != '' ORDER BY id", (experiment["id"],)
        ):
            for f in self.store.files(resource["id"]):
                arcname = f"{experiment['label']}/scans/{resource['scan_id']}/resources/{resource['label']}/files/{f['path']}"
                entries.append((arcname, self.store.resource_dir(resource["id"]) / f["path"]))
        return entries

    # -- resources (spec §6) -----------------------------------------------------------------------
    def _resource_tree(self, req: Request, experiment, scan_id: str, parts: list[str]) -> Response:
        store = self.store
        if not parts:
            resources = store.query("SELECT * FROM resources WHERE experiment_id = ? AND scan_id = ? ORDER BY id",
                                    (experiment["id"], scan_id))
            return json_response(readback.result_set([readback.resource_row(store, r) for r in resources], "Resources"))
        label = parts[0]
        resource = store.resource(experiment["id"], scan_id, label)
        if len(parts) == 1:
            if req.method == "PUT":
                if resource is not None:
                    return text(409, f"Resource {label} already exists.")
                store.ensure_resource(experiment["id"], scan_id, label, req.param("format"), req.param("content"),
                                      req.param("tags"))
                return text(200, "")
            if resource is None:
                return text(404, f"Resource {label} not found")
            if req.method == "DELETE":
                self._delete_resource(resource)
                return text(200, "")
            if req.method == "GET":
                return json_response(readback.resource_items(store, resource))
            return text(405, f"Method {req.method} not allowed")
        if parts[1] != "files":
            return text(404, f"The requested resource {req.path} was not found.")
        file_path = "/".join(parts[2:])
        if req.method in ("PUT", "POST"):
            return self._upload_resource_files(req, experiment, scan_id, label, file_path)
        if resource is None:
            return text(404, f"Resource {label} not found")
        if req.method == "DELETE":
            return self._delete_file(resource, file_path)
        if not file_path:
            if req.param("format") == "zip":
                entries = [(f["path"], store.resource_dir(resource["id"]) / f["path"]) for f in store.files(resource["id"])]
                return self._zip_response(entries, f"{label}.zip")
            return json_response(readback.result_set(readback.file_rows(store, resource), "Files", readback.FILE_COLUMNS))
        if store.query_one("SELECT 1 FROM files WHERE resource_id = ? AND path = ?", (resource["id"], file_path)) is None:
            return text(404, f"File {file_path} not found")
        return Response(200, content_type="application/octet-stream",
                        file=store.resource_dir(resource["id"]) / file_path)

    def _delete_resource(self, resource) -> None:
        with self.store.transaction() as db:
            db.execute("DELETE FROM files WHERE resource_id = ?", (resource["id"],))
            db.execute("DELETE FROM resources WHERE id = ?", (resource["id"],))
        shutil.rmtree(self.store.resource_dir(resource["id"]), ignore_errors=True)

    def _delete_file(self, resource, file_path: str) -> Response:
        with self.store.transaction() as db:
            gone = db.execute("DELETE FROM files WHERE resource_id = ? AND path = ?", (resource["id"], file_path)).rowcount
        if not gone:
            return text(404, f"File {file_path} not found")
        (self.store.resource_dir(resource["id"]) / file_path).unlink(missing_ok=True)
        return text(200, "")

    def _upload_resource_files(self, req: Request, experiment, scan_id: str, label: str, file_path: str) -> Response:
        uploads = request_uploads(req, PurePosixPath(file_path).name if file_path else None, self.store.tmp_dir)
        if not uploads:
            size = req.body.bytes_read + len(req.body.read())
            if size == 0:
                return text(400, f"You tried to {req.method} to this service, but didn't provide any data (found "
                                 "request entity size of 0). If you think you sent data to upload, you can try to "
                                 f"{req.method} with the query-string parameter inbody=true or use "
                                 "multipart/form-data encoding.")
            return text(400, f"You tried to {req.method} a payload of {size} bytes to this service, but didn't "
                             "provide any data. If you think you sent data to upload, you can try to "
                             f"{req.method} with the query-string parameter inbody=true or use multipart/form-data "
                             "encoding.")
        store = self.store
        resource, _ = store.ensure_resource(experiment["id"], scan_id, label, req.param("format"),
                                            req.param("content"), req.param("tags"))
        overwrite = is_true(req.param("overwrite"))
        extract = is_true(req.param("extract"))
        base_dir = PurePosixPath(file_path).parent.as_posix() if file_path else ""
        duplicates: list[str] = []

        def save(target: str, chunks: Iterator[bytes] | bytes) -> None:
            clean = PurePosixPath(target)
            if clean.is_absolute() or ".." in clean.parts:
                raise XnatRefusal(400, f"Invalid file path {target}")
            exists = store.query_one("SELECT 1 FROM files WHERE resource_id = ? AND path = ?",
                                     (resource["id"], clean.as_posix()))
            if exists and not overwrite:
                duplicates.append(clean.as_posix())
                return
            size, md5 = write_stream_to(store.resource_dir(resource["id"]) / clean, chunks, store.tmp_dir, store.check_space)
            store.record_file(resource["id"], clean.as_posix(), size, md5)

        try:
            for upload in uploads:
                if extract and _is_archive_name(upload.name):
                    for member, data in iter_members(upload, store.tmp_dir):
                        save(f"{base_dir}/{member}" if base_dir and base_dir != "." else member, data)
                else:
                    target = file_path if (file_path and len(uploads) == 1) else upload.name
                    save(target, iter(lambda s=upload.stream: s.read(STREAM_CHUNK), b""))
        finally:
            if req.form is not None:
                req.form.cleanup()
        if duplicates:
            return Response(200, json.dumps({"duplicates": duplicates}).encode(), "text/html")
        return text(200, "")


def _is_archive_name(name: str) -> bool:
    try:
        archive_format(name)
    except XnatRefusal:
        return False
    return True
