"""Handlers for the import service, the prearchive, the archive service and Direct-Archive.

As xnat-web's `Importer`, `PrearcSessionResource` and `Archiver` answer them.
"""

from __future__ import annotations

import json
import re
from urllib.parse import unquote

from xnat_flows.testing import readback
from xnat_flows.testing.prearchive import UNASSIGNED, XnatRefusal, is_true
from xnat_flows.testing.render import table
from xnat_flows.testing.state import READY, RECEIVING, scan_xsi_type, session_xsi_type
from xnat_flows.testing.web import HandlerBase, Request, Response, json_body, json_response, request_uploads, text


class PrearchiveHandlers(HandlerBase):
    def services_import(self, req: Request, m: re.Match[str]) -> Response:
        try:
            uploads = request_uploads(req, None, self.store.tmp_dir)
            if len(uploads) > 1:
                raise XnatRefusal(400, "Importer is limited to one uploaded resource at a time.")
            uris = self.emu.importer.handle(
                req.params, uploads[0] if uploads else None, req.headers.get("Content-Type") or ""
            )
        finally:
            if req.form is not None:
                req.form.cleanup()
        if req.param("format") in ("txt", "text") or (req.headers.get("Accept") or "").strip() == "text/plain":
            return text(200, uris[0] if uris else "")
        return Response(200, "".join(f"{u}\r\n" for u in uris).encode(), "text/uri-list")

    # -- prearchive (XNAT wiki) --------------------------------------------------------------------
    def list_prearchive(self, req: Request, m: re.Match[str]) -> Response:
        projects = m["projects"].split(",") if m.groupdict().get("projects") else None
        rows = self.store.prearc_rows(projects)
        return table(req, [readback.prearchive_row(self.store, r) for r in rows], "Prearchive")

    def _row_from_src(self, src: str):
        path = src.strip()
        if path.startswith("/data/"):
            path = path[len("/data") :]
        parts = [unquote(p) for p in path.split("/") if p]
        if len(parts) != 5 or parts[:2] != ["prearchive", "projects"]:
            raise XnatRefusal(400, f"Invalid src URI ({src})")
        if parts[2] == UNASSIGNED:
            raise XnatRefusal(400, "Cannot archive sessions from the Unassigned folder.")
        row = self.store.prearc_by_url(parts[2], parts[3], parts[4])
        if row is None or row.direct_archive:
            raise XnatRefusal(404, f"{src} not found.")
        return row

    def services_archive(self, req: Request, m: re.Match[str]) -> Response:
        sources = req.multi.get("src", [])
        if (
            not sources
            and req.param("project")
            and req.param("PREARC_TIMESTAMP")
            and req.param("PREARC_SESSION_FOLDER")
        ):
            sources = [
                f"/prearchive/projects/{req.param('project')}/{req.param('PREARC_TIMESTAMP')}/"
                f"{req.param('PREARC_SESSION_FOLDER')}"
            ]
        if not sources:
            return text(404, "Unknown prearchive session.")
        dest_project = dest_subject = dest_label = None
        dest = req.param("dest")
        if dest:
            parts = [p for p in (dest[5:] if dest.startswith("/data/") else dest).split("/") if p]
            if parts[:1] == ["prearchive"]:
                return text(400, f"Invalid _destination URI {dest}")
            if parts[:2] != ["archive", "projects"] or len(parts) not in (3, 5, 7):
                return text(400, "Invalid _destination URI")
            dest_project = parts[2]
            dest_subject = parts[4] if len(parts) >= 5 else None
            dest_label = parts[6] if len(parts) >= 7 else None
        dest_subject = req.param("subject") or dest_subject
        dest_label = req.param("session") or req.param("label") or dest_label
        uris = []
        for src in sources:
            row = self._row_from_src(src)
            uris.append(
                self.emu.prearchive.archive(
                    row.id,
                    overwrite=req.param("overwrite") or None,
                    overwrite_files=is_true(req.param("overwrite_files")),
                    project=dest_project,
                    subject=dest_subject,
                    label=dest_label,
                )
            )
        if is_true(req.param("redirect")) and len(uris) == 1:
            return Response(303, uris[0].encode(), "text/plain", {"Location": uris[0]})
        return Response(200, "".join(f"{u}\r\n" for u in uris).encode(), "text/uri-list")

    def prearchive_session(self, req: Request, m: re.Match[str]) -> Response:
        row = self.store.prearc_by_url(m["project"], m["ts"], m["folder"])
        if row is None or row.direct_archive:
            return text(404, f"Unknown prearchive session /prearchive/projects/{m['project']}/{m['ts']}/{m['folder']}")
        rest = [p for p in (m["rest"] or "").split("/") if p]
        if req.method == "DELETE":
            if rest:
                return text(400, "DELETE is only supported on a prearchive session, not on its contents.")
            self.store.delete_prearc_row(row.id)
            return text(200, "")
        if req.method == "POST":
            if req.content_type == "application/json":
                payload = json_body(req)
                req.add_fields({k: [str(v)] for k, v in payload.items()})
            return self._prearchive_action(req, row)
        if not rest:
            fmt = req.param("format", "json")
            if fmt == "zip":
                entries = [
                    (
                        f"{f['scan_id']}/{f['resource']}/{f['name']}",
                        self.store.prearc_file_path(row.id, f["scan_id"], f["resource"], f["name"]),
                    )
                    for f in self.store.prearc_files(row.id)
                ]
                return self._zip_response(entries, f"{row.folder}.zip")
            if fmt == "xml":
                if row.status == RECEIVING:
                    return text(404, "The XNAT session document is not available for this prearchive session yet.")
                xml = (
                    f'<?xml version="1.0" encoding="UTF-8"?>\n<xnat:{_xml_name(row.modality)} '
                    f'xmlns:xnat="http://nrg.wustl.edu/xnat" label="{row.name}" project="{row.project}" '
                    f'UID="{row.tag}"><xnat:subject_ID>{row.subject}</xnat:subject_ID></xnat:{_xml_name(row.modality)}>'
                )
                return Response(200, xml.encode(), "text/xml")
            return table(req, [readback.prearchive_row(self.store, row)], "Prearchive")
        return self._prearchive_contents(req, row, rest)

    def _prearchive_contents(self, req: Request, row, rest: list[str]) -> Response:
        if rest[0] == "logs":
            entries = [{"id": str(i), "date": e[:23], "entry": e[24:]} for i, e in enumerate(row.log)]
            if len(rest) > 1:
                pick = entries[-1:] if rest[1] == "last" else [e for e in entries if e["id"] == rest[1]]
                return text(200, pick[0]["entry"] if pick else "")
            return table(req, entries, "Logs")
        if rest[0] != "scans":
            return text(404, "Not found")
        scans = self.store.prearc_scans(row.id)
        if len(rest) == 1:
            rows = [
                {
                    "ID": s["scan_id"],
                    "series_description": s["series_description"] or "",
                    "xsiType": scan_xsi_type(s["modality"] or row.modality),
                }
                for s in scans
            ]
            return table(req, rows, "Scans")
        scan_id = rest[1]
        files = self.store.prearc_files(row.id, scan_id)
        if len(rest) == 2 or rest[2] != "resources":
            return text(404, "Not found")
        if len(rest) == 3:  # xnat-web PrearcScanResourceList: exactly these columns, columns= not applied
            labels = sorted({f["resource"] for f in files})
            rows = [
                {
                    "label": lab,
                    "file_count": sum(1 for f in files if f["resource"] == lab),
                    "file_size": sum(f["size"] for f in files if f["resource"] == lab),
                }
                for lab in labels
            ]
            return table(req, rows, "Resources", fixed_columns=True)
        label = rest[3]
        base = f"/data{row.url}/scans/{scan_id}/resources/{label}/files"
        chosen = [f for f in files if f["resource"] == label]
        if len(rest) == 4 or (len(rest) == 5 and rest[4] == "files"):  # xnat-web PrearcSessionResourceFiles
            rows = [{"Name": f["name"], "Size": f["size"], "URI": f"{base}/{f['name']}"} for f in chosen]
            return table(req, rows, "Files", fixed_columns=True)
        name = "/".join(rest[5:])
        if not any(f["name"] == name for f in chosen):
            return text(400, f"Unable to access the file at: {name}")
        return Response(
            200, content_type="application/octet-stream", file=self.store.prearc_file_path(row.id, scan_id, label, name)
        )

    def _prearchive_action(self, req: Request, row) -> Response:
        action = req.param("action")
        prearchive = self.emu.prearchive
        if not action:
            return text(
                400,
                "No action parameter was specified. Supported actions: build, commit, move, reset-status, set-status.",
            )
        if action in ("build", "rebuild", "reset-status"):
            prearchive.build(row.id)
            return Response(200, f"/data{row.url}".encode(), "text/uri-list")
        if action == "commit":
            prearchive.build(row.id)
            project = self.store.project(row.project)
            if is_true(req.param("AA")) or (project is not None and project["prearchive_code"] in (4, 5)):
                uri = prearchive.archive(row.id, overwrite=prearchive.auto_archive_overwrite(row))
                return Response(301, uri.encode(), "text/plain")
            return Response(200, f"/data{row.url}".encode(), "text/uri-list")
        if action == "move":
            new_project = req.param("newProject")
            if not new_project or self.store.project(new_project) is None:
                return text(403, "Unable to modify session data for destination project.")
            self.store.update_prearc(row.id, project=new_project)
            return Response(
                301, f"/data/prearchive/projects/{new_project}/{row.timestamp}/{row.folder}".encode(), "text/plain"
            )
        if action == "set-status":
            self.store.update_prearc(row.id, status=req.param("status", READY))
            return text(200, f"/data{row.url}")
        return text(400, f"The action {action} is an unsupported action for this resource.")

    def services_prearchive(self, req: Request, m: re.Match[str]) -> Response:
        rows = []
        for src in req.multi.get("src", []):
            try:
                row = self._row_from_src(src)
            except XnatRefusal:
                return text(404, "One or more specified projects does not exist")
            if m["action"] == "delete":
                self.store.delete_prearc_row(row.id)
                continue
            if m["action"] == "move":
                new_project = req.param("newProject")
                if self.store.project(new_project) is None:
                    return text(403, "Unable to modify session data for destination project.")
                self.store.update_prearc(row.id, project=new_project)
            else:
                self.emu.prearchive.build(row.id)
            updated = self.store.prearc_row(row.id)
            if updated is not None:
                rows.append(readback.prearchive_row(self.store, updated))
        # xnat-web BatchPrearchiveActionsA.updatedStatusRepresentation: the table in the format asked for.
        return table(req, rows, "Prearchive", filter_rows=False, fixed_columns=True)

    def direct_archive_list(self, req: Request, m: re.Match[str]) -> Response:
        """Direct-Archive sessions not yet built (XNAT's row shape is uncertain): a JSON array."""
        filters = json_body(req).get("filters") or {}
        project_filter = filters.get("project") if isinstance(filters, dict) else None
        if not isinstance(filters, dict) or not isinstance(project_filter or {}, dict):
            return text(
                400, 'Malformed paginated request: "filters" must be {"project": {"operator": "EQ", "value": "P"}}'
            )
        project = (project_filter or {}).get("value")
        rows = [
            r for r in self.store.prearc_rows([project] if project else None, include_direct=True) if r.direct_archive
        ]
        sessions = [
            {
                "project": r.project,
                "subject": r.subject,
                "label": r.name,
                "tag": r.tag,
                "status": r.status,
                "modality": r.modality,
                "scan_date": r.scan_date,
                "timestamp": r.timestamp,
                "uri": f"/xapi/direct-archive/{r.project}/{r.tag}/{r.name}",
            }
            for r in rows
        ]
        return json_response(json.dumps(sessions).encode())

    def direct_archive_commit(self, req: Request, m: re.Match[str]) -> Response:
        """``POST /xapi/direct-archive/{project}/{tag}/{name}``: 200 with an empty body once the
        session is queued; building and archiving follow asynchronously, as in XNAT."""
        self.emu.prearchive.trigger_direct_archive(m["project"], m["uid"], m["label"])
        return text(200, "")


def _xml_name(modality: str) -> str:
    local = session_xsi_type(modality).split(":")[1]
    return local[0].upper() + local[1:]
