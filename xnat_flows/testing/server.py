"""The emulator's HTTP server: stdlib ThreadingHTTPServer, HTTP/1.1 keep-alive, XNAT routes."""

from __future__ import annotations

import json
import re
import shutil
import socket
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from xnat_flows.testing import readback
from xnat_flows.testing.auth import parse_basic
from xnat_flows.testing.httpbody import BodyError, MultipartForm, RequestBody, parse_multipart
from xnat_flows.testing.importer import Upload, archive_format, iter_members
from xnat_flows.testing.prearchive import UNASSIGNED, XnatRefusal, is_true
from xnat_flows.testing.state import READY, RECEIVING, scan_xsi_type, session_xsi_type, write_stream_to

if TYPE_CHECKING:
    from xnat_flows.testing.emulator import XnatEmulator

_STREAM_CHUNK = 1024 * 1024
# Content types XNAT treats as a raw in-body file, and the file-name suffix it derives (spec §3.1).
_RAW_TYPES = {
    "application/octet-stream": "", "application/zip": ".zip", "application/x-tar": ".tar",
    "application/x-gtar": ".tar.gz", "application/x-gzip": ".gz", "application/dicom": ".dcm",
    "application/xar": ".xar", "text/plain": ".txt", "text/xml": ".xml", "text/csv": ".csv",
    "application/pdf": ".pdf",
}
_INBODY_MULTIPART = ("In-body File posts must include the file directly as the body of the message "
                     "(not as part of multi-part form data).")
_INBODY_EMPTY = ("In-body File posts must include the file directly as the body of the message. "
                 "If you think you sent data, check that the request body is not empty.")


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain;charset=UTF-8"
    headers: dict[str, str] = field(default_factory=dict)
    file: Path | None = None  # streamed from disk instead of body
    delete_file: bool = False


def text(status: int, message: str, **headers: str) -> Response:
    return Response(status, message.encode(), headers=dict(headers))


def json_response(body: bytes, status: int = 200) -> Response:
    return Response(status, body, "application/json")


class Request:
    """One parsed request: path, merged params (query + form fields), body, caller."""

    def __init__(self, method: str, raw_path: str, headers: Any, body: RequestBody) -> None:
        self.method = method
        split = urlsplit(raw_path)
        path = unquote(split.path)
        if path == "/REST" or path.startswith("/REST/"):  # old clients (GiftCloud) use /REST
            path = "/data" + path[5:]
        self.path = path.rstrip("/") or "/"
        self.multi: dict[str, list[str]] = parse_qs(split.query, keep_blank_values=True)
        self.headers = headers
        self.body = body
        self.user: str | None = None
        self.token: str | None = None
        self.form: MultipartForm | None = None

    @property
    def params(self) -> dict[str, str]:
        return {k: v[0] for k, v in self.multi.items()}

    def param(self, name: str, default: str = "") -> str:
        values = self.multi.get(name)
        return values[0] if values else default

    @property
    def content_type(self) -> str:
        return (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()

    def add_fields(self, fields: dict[str, list[str]]) -> None:
        for key, values in fields.items():
            self.multi.setdefault(key, []).extend(values)

    def cookie(self, name: str) -> str | None:
        for part in (self.headers.get("Cookie") or "").split(";"):
            if "=" in part:
                key, value = part.split("=", 1)
                if key.strip() == name:
                    return value.strip()
        return None


Handler = Callable[[Request, "re.Match[str]"], Response]


class Api:
    """Routes and handlers; all state lives in the emulator's store."""

    def __init__(self, emulator: XnatEmulator) -> None:
        self.emu = emulator
        self.store = emulator.store
        self._counter_lock = threading.Lock()
        self.active_imports = 0
        self.peak_concurrent_uploads = 0
        self.request_count = 0
        self.import_count = 0
        expt = r"/data(?:/archive)?(?:/projects/(?P<project>[^/]+)(?:/subjects/(?P<subject>[^/]+))?)?/experiments/(?P<expt>[^/]+)"
        self.routes: list[tuple[str, re.Pattern[str], Handler, bool]] = [
            # (methods, path, handler, needs authentication)
            ("GET", re.compile(r"/"), self.root, False),
            ("GET POST DELETE", re.compile(r"/data/JSESSION"), self.jsession, False),
            ("PUT POST", re.compile(r"/data/services/auth"), self.services_auth, False),
            ("GET", re.compile(r"/data/auth"), self.auth_check, True),
            ("GET", re.compile(r"/xapi/siteConfig/buildInfo/version"), self.version, False),
            ("GET", re.compile(r"/xapi/siteConfig/buildInfo"), self.build_info, False),
            ("GET", re.compile(r"/xapi/users/username"), self.username, True),
            ("GET", re.compile(r"/xapi/users/(?P<user>[^/]+)"), self.user_info, True),
            ("DELETE", re.compile(r"/xapi/users/active/(?P<user>[^/]+)"), self.kill_sessions, True),
            ("GET", re.compile(r"/xapi/schemas"), self.schema_list, True),
            ("GET", re.compile(r"/xapi/schemas/(?P<schema>.+)"), self.schema, True),
            ("GET", re.compile(r"/data/services/tokens/issue(?:/user/(?P<user>[^/]+))?"), self.issue_token, True),
            ("GET", re.compile(r"/data/services/tokens/validate/(?P<alias>[^/]+)/(?P<secret>[^/]+)"),
             self.validate_token, True),
            ("GET", re.compile(r"/data/services/tokens/invalidate/(?P<alias>[^/]+)(?:/(?P<secret>[^/]+))?"),
             self.invalidate_token, True),
            ("GET POST", re.compile(r"/xapi/siteConfig"), self.site_config, True),
            ("GET", re.compile(r"/xapi/dicomscp"), self.dicom_receivers, True),
            ("GET", re.compile(r"/data/search/elements(?:/[^/]+)?"), self.search_elements, True),
            ("GET", re.compile(r"/data(?:/archive)?/projects"), self.list_projects, True),
            ("GET PUT", re.compile(r"/data(?:/archive)?/projects/(?P<project>[^/]+)"), self.project, True),
            ("GET", re.compile(r"/data/projects/(?P<project>[^/]+)/prearchive_code"), self.get_prearchive_code, True),
            ("PUT POST", re.compile(r"/data/projects/(?P<project>[^/]+)/prearchive_code/(?P<code>[^/]+)"),
             self.put_prearchive_code, True),
            ("GET", re.compile(r"/data(?:/archive)?/projects/(?P<project>[^/]+)/subjects"), self.list_subjects, True),
            ("GET PUT", re.compile(r"/data(?:/archive)?/projects/(?P<project>[^/]+)/subjects/(?P<subject>[^/]+)"),
             self.subject, True),
            ("GET", re.compile(r"/data(?:/archive)?(?:/projects/(?P<project>[^/]+)(?:/subjects/(?P<subject>[^/]+))?)?/experiments"),
             self.list_experiments, True),
            ("GET PUT POST DELETE", re.compile(expt + r"(?P<rest>/.*)?"), self.experiment_tree, True),
            ("POST", re.compile(r"/data/services/import"), self.services_import, True),
            ("POST", re.compile(r"/data/services/archive"), self.services_archive, True),
            ("POST", re.compile(r"/data/services/prearchive/(?P<action>delete|move|rebuild)"),
             self.services_prearchive, True),
            ("GET", re.compile(r"/data/prearchive(?:/projects)?"), self.list_prearchive, True),
            ("GET", re.compile(r"/data/prearchive/projects/(?P<projects>[^/]+)"), self.list_prearchive, True),
            ("GET POST DELETE", re.compile(r"/data/prearchive/projects/(?P<project>[^/]+)/(?P<ts>[^/]+)/(?P<folder>[^/]+)(?P<rest>/.*)?"),
             self.prearchive_session, True),
            ("POST", re.compile(r"/xapi/direct-archive/(?P<project>[^/]+)/(?P<uid>[^/]+)/(?P<label>[^/]+)"),
             self.direct_archive_commit, True),
            ("GET", re.compile(r"/_emulator/stats"), self.control_stats, False),
            ("GET POST DELETE", re.compile(r"/_emulator/faults"), self.control_faults, False),
            ("POST", re.compile(r"/_emulator/rebuild"), self.control_rebuild, False),
        ]

    # -- dispatch ----------------------------------------------------------------------------------
    def find_route(self, req: Request) -> tuple[Handler, re.Match[str], bool] | Response:
        path_matched = False
        for methods, pattern, handler, needs_auth in self.routes:
            match = pattern.fullmatch(req.path)
            if match is None:
                continue
            path_matched = True
            if req.method in methods.split():
                return handler, match, needs_auth
        if path_matched:
            return text(405, f"Method {req.method} not allowed")
        return text(404, f"The requested resource {req.path} was not found.")

    def authenticate(self, req: Request) -> bool:
        sessions = self.emu.sessions
        token = req.cookie("JSESSIONID")
        if token:
            user = sessions.user_for(token)
            if user is not None:
                req.user, req.token = user, token
                return True
        basic = parse_basic(req.headers.get("Authorization"))
        user = self.store.user_for_credentials(*basic) if basic else None
        if user is not None:
            req.user = user
            return True
        return False

    def count_request(self) -> None:
        with self._counter_lock:
            self.request_count += 1

    # -- auth endpoints ----------------------------------------------------------------------------
    def root(self, req: Request, m: re.Match[str]) -> Response:
        return Response(200, b"<html><head><title>XNAT emulator</title></head><body>XNAT emulator</body></html>",
                        "text/html")

    def _login_failed(self) -> Response:
        if self.emu.login_failure_mode == "html200":
            return Response(200, b"<html><body><form name=\"form1\" method=\"post\" action=\"/xnat/login\">"
                                 b"Login attempt failed. Please try again.</form></body></html>", "text/html")
        return text(401, "Login attempt failed. Please try again.")

    def _new_session_response(self, user: str) -> Response:
        token = self.emu.sessions.login(user)
        return text(200, token, **{"Set-Cookie": f"JSESSIONID={token}; Path=/; HttpOnly"})

    def jsession(self, req: Request, m: re.Match[str]) -> Response:
        if req.method == "DELETE":
            token = req.cookie("JSESSIONID")
            if token:
                self.emu.sessions.invalidate(token)
            return text(200, "")
        if req.method == "GET":
            token = req.cookie("JSESSIONID")
            if token and self.emu.sessions.user_for(token):
                return text(200, token)
        basic = parse_basic(req.headers.get("Authorization"))
        user = self.store.user_for_credentials(*basic) if basic else None
        if user is None:
            return self._login_failed()
        return self._new_session_response(user)

    def services_auth(self, req: Request, m: re.Match[str]) -> Response:
        user = self.store.user_for_credentials(req.param("username"), req.param("password"))
        if user is None:
            return self._login_failed()
        return self._new_session_response(user)

    def auth_check(self, req: Request, m: re.Match[str]) -> Response:
        return text(200, f"User '{req.user}' is logged in")

    def version(self, req: Request, m: re.Match[str]) -> Response:
        return text(200, self.emu.version)

    def build_info(self, req: Request, m: re.Match[str]) -> Response:
        info = {"version": self.emu.version, "buildNumber": "emulator", "commit": "emulator",
                "buildDate": "2026-01-01", "sha": "emulator"}
        return json_response(json.dumps(info).encode())

    def username(self, req: Request, m: re.Match[str]) -> Response:
        return text(200, req.user or "")

    def user_info(self, req: Request, m: re.Match[str]) -> Response:
        name = m["user"]
        if self.store.query_one("SELECT 1 FROM users WHERE username = ?", (name,)) is None:
            return text(404, f"User {name} not found")
        user = {"username": name, "firstName": name, "lastName": "", "email": f"{name}@example.org",
                "enabled": True, "verified": True}
        return json_response(json.dumps(user).encode())

    def kill_sessions(self, req: Request, m: re.Match[str]) -> Response:
        self.emu.sessions.invalidate_user(m["user"])
        return text(200, "")

    def schema_list(self, req: Request, m: re.Match[str]) -> Response:
        return json_response(json.dumps(["xnat"]).encode())

    def schema(self, req: Request, m: re.Match[str]) -> Response:
        path = Path(__file__).with_name("schemas") / f"{m['schema']}.xsd"
        if m["schema"] != "xnat" or not path.is_file():
            return text(404, f"Schema {m['schema']} not found")
        return Response(200, path.read_bytes(), "application/xml")

    def issue_token(self, req: Request, m: re.Match[str]) -> Response:
        username = m["user"] or req.user or ""
        if self.store.query_one("SELECT 1 FROM users WHERE username = ?", (username,)) is None:
            return text(404, f"User {username} not found")
        token = self.store.issue_alias_token(username)
        body = {"alias": token["alias"], "secret": token["secret"], "xdatUserId": username, "singleUse": False,
                "estimatedExpirationTime": int(token["expires"] * 1000), "timestamp": int(token["created"] * 1000),
                "enabled": True, "created": int(token["created"] * 1000), "id": token["alias"], "disabled": 0}
        return json_response(json.dumps(body).encode())

    def validate_token(self, req: Request, m: re.Match[str]) -> Response:
        user = self.store.user_for_credentials(m["alias"], m["secret"])
        if user is None or user == m["alias"]:
            return text(404, "Invalid alias token")
        return json_response(json.dumps({"valid": user}).encode())

    def invalidate_token(self, req: Request, m: re.Match[str]) -> Response:
        self.store.invalidate_alias_token(m["alias"])
        return text(200, "")

    def site_config(self, req: Request, m: re.Match[str]) -> Response:
        """Accepted so set-up code that tunes a real XNAT runs unchanged; only the rebuilder interval is used."""
        if req.method == "POST":
            settings = json.loads(req.body.read() or b"{}")
            if "sessionXmlRebuilderInterval" in settings:  # minutes on XNAT; kept as seconds here for speed
                self.emu.prearchive.rebuild_idle_seconds = float(settings["sessionXmlRebuilderInterval"])
            return text(200, "")
        config = {"siteId": self.emu.site_id, "initialized": True, "enableCsrfToken": False,
                  "sessionXmlRebuilderInterval": self.emu.prearchive.rebuild_idle_seconds,
                  "sessionXmlRebuilderRepeat": 60000}
        return json_response(json.dumps(config).encode())

    def dicom_receivers(self, req: Request, m: re.Match[str]) -> Response:
        """The one receiver (when the emulator runs its DICOM receiver), shaped like XNAT's (spec §7.1)."""
        port = self.emu.scp_port
        if port is None:
            return json_response(b"[]")
        receiver = {"id": 1, "identifier": "dicomObjectIdentifier", "label": "XNAT emulator", "port": port,
                    "aeTitle": self.emu.scp_aet, "enabled": True, "disabled": False, "customProcessing": False,
                    "directArchive": False, "anonymizationEnabled": self.emu.anonymize, "whitelistEnabled": False,
                    "routingExpressionsEnabled": False, "whitelist": [], "created": 0, "timestamp": 0}
        return json_response(json.dumps([receiver]).encode())

    def search_elements(self, req: Request, m: re.Match[str]) -> Response:
        """The search-element catalogue xnatpy reads at connect; the emulator offers no search fields."""
        return json_response(readback.result_set([], "Elements"))

    # -- projects and subjects ---------------------------------------------------------------------
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
        self._require_project(m["project"])
        if req.method == "PUT":  # 201 even when it already existed (spec §5)
            self.store.ensure_subject(m["project"], m["subject"])
            return text(201, "")
        subject = self.store.subject(m["subject"], m["project"])
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
        uploads = self.uploads_of(req, PurePosixPath(file_path).name if file_path else None)
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
            size, md5 = write_stream_to(store.resource_dir(resource["id"]) / clean, chunks, store.tmp_dir)
            store.record_file(resource["id"], clean.as_posix(), size, md5)

        try:
            for upload in uploads:
                if extract and _is_archive_name(upload.name):
                    for member, data in iter_members(upload, store.tmp_dir):
                        save(f"{base_dir}/{member}" if base_dir and base_dir != "." else member, data)
                else:
                    target = file_path if (file_path and len(uploads) == 1) else upload.name
                    save(target, iter(lambda s=upload.stream: s.read(_STREAM_CHUNK), b""))
        finally:
            if req.form is not None:
                req.form.cleanup()
        if duplicates:
            return Response(200, json.dumps({"duplicates": duplicates}).encode(), "text/html")
        return text(200, "")

    def _zip_response(self, entries: list[tuple[str, Path]], name: str) -> Response:
        handle, tmp_name = tempfile.mkstemp(dir=self.store.tmp_dir, prefix="dl-", suffix=".zip")
        with open(handle, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for arcname, path in entries:
                archive.write(path, arcname)
        return Response(200, content_type="application/zip", file=Path(tmp_name), delete_file=True,
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    # -- uploads (spec §3.1) -----------------------------------------------------------------------
    def uploads_of(self, req: Request, path_name: str | None) -> list[Upload]:
        """The files a request carries: the raw body or multipart file parts (form fields become params)."""
        ctype = req.content_type
        inbody = is_true(req.param("inbody"))
        if ctype == "multipart/form-data":
            if inbody:
                raise XnatRefusal(406, _INBODY_MULTIPART)
            boundary = re.search(r'boundary="?([^";]+)"?', req.headers.get("Content-Type") or "")
            if boundary is None:
                raise XnatRefusal(400, "Malformed multipart/form-data request: no boundary")
            req.form = parse_multipart(req.body, boundary.group(1), self.store.tmp_dir)
            req.add_fields(req.form.fields)
            return [Upload(p.filename, p.path.open("rb")) for p in req.form.files]
        raw = inbody or ctype in _RAW_TYPES or ctype.startswith(("image/", "video/"))
        if not raw:
            return []
        if req.body.is_empty() and ctype != "application/zip":
            raise XnatRefusal(400, _INBODY_EMPTY)
        suffix = _RAW_TYPES.get(ctype, ".unsupported")
        return [Upload(path_name or f"upload{suffix}", req.body)]

    # -- import service ----------------------------------------------------------------------------
    @contextmanager
    def counting_import(self) -> Iterator[None]:
        """Track import requests in flight, from request line to answer (body upload included)."""
        with self._counter_lock:
            self.active_imports += 1
            self.import_count += 1
            self.peak_concurrent_uploads = max(self.peak_concurrent_uploads, self.active_imports)
        try:
            yield
        finally:
            with self._counter_lock:
                self.active_imports -= 1

    def services_import(self, req: Request, m: re.Match[str]) -> Response:
        try:
            uploads = self.uploads_of(req, None)
            if len(uploads) > 1:
                raise XnatRefusal(400, "Importer is limited to one uploaded resource at a time.")
            uris = self.emu.importer.handle(req.params, uploads[0] if uploads else None,
                                            req.headers.get("Content-Type") or "")
        finally:
            if req.form is not None:
                req.form.cleanup()
        if req.param("format") in ("txt", "text") or "text/plain" == (req.headers.get("Accept") or "").strip():
            return text(200, uris[0] if uris else "")
        return Response(200, "".join(f"{u}\r\n" for u in uris).encode(), "text/uri-list")

    # -- prearchive (spec §4) ----------------------------------------------------------------------
    def list_prearchive(self, req: Request, m: re.Match[str]) -> Response:
        projects = m["projects"].split(",") if m.groupdict().get("projects") else None
        rows = self.store.prearc_rows(projects)
        return json_response(readback.result_set([readback.prearchive_row(self.store, r) for r in rows], "Prearchive"))

    def _row_from_src(self, src: str):
        path = src.strip()
        if path.startswith("/data/"):
            path = path[len("/data"):]
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
        if not sources and req.param("project") and req.param("PREARC_TIMESTAMP") and req.param("PREARC_SESSION_FOLDER"):
            sources = [f"/prearchive/projects/{req.param('project')}/{req.param('PREARC_TIMESTAMP')}/"
                       f"{req.param('PREARC_SESSION_FOLDER')}"]
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
            uris.append(self.emu.prearchive.archive(
                row.id, overwrite=req.param("overwrite") or None, overwrite_files=is_true(req.param("overwrite_files")),
                project=dest_project, subject=dest_subject, label=dest_label,
            ))
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
                payload = json.loads(req.body.read() or b"{}")
                req.add_fields({k: [str(v)] for k, v in payload.items()})
            return self._prearchive_action(req, row)
        if not rest:
            fmt = req.param("format", "json")
            if fmt == "zip":
                entries = [(f"{f['scan_id']}/{f['resource']}/{f['name']}",
                            self.store.prearc_file_path(row.id, f["scan_id"], f["resource"], f["name"]))
                           for f in self.store.prearc_files(row.id)]
                return self._zip_response(entries, f"{row.folder}.zip")
            if fmt == "xml":
                if row.status == RECEIVING:
                    return text(404, "The XNAT session document is not available for this prearchive session yet.")
                xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<xnat:{_xml_name(row.modality)} '
                       f'xmlns:xnat="http://nrg.wustl.edu/xnat" label="{row.name}" project="{row.project}" '
                       f'UID="{row.tag}"><xnat:subject_ID>{row.subject}</xnat:subject_ID></xnat:{_xml_name(row.modality)}>')
                return Response(200, xml.encode(), "text/xml")
            return json_response(readback.result_set([readback.prearchive_row(self.store, row)], "Prearchive"))
        return self._prearchive_contents(row, rest)

    def _prearchive_contents(self, row, rest: list[str]) -> Response:
        if rest[0] == "logs":
            entries = [{"id": str(i), "date": e[:23], "entry": e[24:]} for i, e in enumerate(row.log)]
            if len(rest) > 1:
                pick = entries[-1:] if rest[1] == "last" else [e for e in entries if e["id"] == rest[1]]
                return text(200, pick[0]["entry"] if pick else "")
            return json_response(readback.result_set(entries, "Logs"))
        if rest[0] != "scans":
            return text(404, "Not found")
        scans = self.store.prearc_scans(row.id)
        if len(rest) == 1:
            rows = [{"ID": s["scan_id"], "series_description": s["series_description"] or "",
                     "xsiType": scan_xsi_type(s["modality"] or row.modality)} for s in scans]
            return json_response(readback.result_set(rows, "Scans"))
        scan_id = rest[1]
        files = self.store.prearc_files(row.id, scan_id)
        if len(rest) == 2 or rest[2] != "resources":
            return text(404, "Not found")
        if len(rest) == 3:
            labels = sorted({f["resource"] for f in files})
            rows = [{"label": lab, "file_count": sum(1 for f in files if f["resource"] == lab),
                     "file_size": sum(f["size"] for f in files if f["resource"] == lab)} for lab in labels]
            return json_response(readback.result_set(rows, "Resources"))
        label = rest[3]
        base = f"/data{row.url}/scans/{scan_id}/resources/{label}/files"
        chosen = [f for f in files if f["resource"] == label]
        if len(rest) == 4 or (len(rest) == 5 and rest[4] == "files"):
            rows = [{"Name": f["name"], "Size": f["size"], "URI": f"{base}/{f['name']}", "digest": f["md5"]} for f in chosen]
            return json_response(readback.result_set(rows, "Files"))
        name = "/".join(rest[5:])
        if not any(f["name"] == name for f in chosen):
            return text(404, f"File {name} not found")
        return Response(200, content_type="application/octet-stream",
                        file=self.store.prearc_file_path(row.id, scan_id, label, name))

    def _prearchive_action(self, req: Request, row) -> Response:
        action = req.param("action")
        prearchive = self.emu.prearchive
        if not action:
            return text(400, "No action parameter was specified. Supported actions: build, commit, move, "
                             "reset-status, set-status.")
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
            return Response(301, f"/data/prearchive/projects/{new_project}/{row.timestamp}/{row.folder}".encode(),
                            "text/plain")
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
        return json_response(readback.result_set(rows, "Prearchive"))

    def direct_archive_commit(self, req: Request, m: re.Match[str]) -> Response:
        for row in self.store.prearc_rows([m["project"]], include_direct=True):
            if row.direct_archive and row.tag == m["uid"] and row.name == m["label"]:
                uri = self.emu.prearchive.archive_with_fallback(row, row.params.get("overwrite") or None)
                return text(200, uri or "")
        return text(404, "No direct-archive session matches")

    # -- control endpoints (unauthenticated; tests drive faults from another process) --------------
    def control_stats(self, req: Request, m: re.Match[str]) -> Response:
        return json_response(json.dumps(self.emu.stats()).encode())

    def control_faults(self, req: Request, m: re.Match[str]) -> Response:
        faults = self.emu.faults
        if req.method == "DELETE":
            faults.clear()
            return text(200, "")
        if req.method == "POST":
            spec = json.loads(req.body.read() or b"{}")
            specs = spec if isinstance(spec, list) else [spec]
            try:
                added = [faults.add_from_json(s).id for s in specs]
            except (TypeError, ValueError) as exc:
                return text(400, str(exc))
            return json_response(json.dumps({"ids": added}).encode())
        return json_response(json.dumps(faults.rules()).encode())

    def control_rebuild(self, req: Request, m: re.Match[str]) -> Response:
        self.emu.prearchive.tick()
        return text(200, "")


def _xml_name(modality: str) -> str:
    local = session_xsi_type(modality).split(":")[1]
    return local[0].upper() + local[1:]


def _is_archive_name(name: str) -> bool:
    try:
        archive_format(name)
    except XnatRefusal:
        return False
    return True


class EmulatorRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "XNAT-emulator"
    sys_version = ""
    disable_nagle_algorithm = True  # one file per request: 23 -> ~1000 requests/s (field notes)
    api: Api  # set on the subclass made per server

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests run many requests
        return

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_GET

    def _dispatch(self) -> None:
        api = self.api
        api.count_request()
        length_header = self.headers.get("Content-Length")
        chunked = "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()
        try:
            content_length = int(length_header) if length_header and not chunked else 0
        except ValueError:
            content_length = 0
        body = RequestBody(self.rfile, content_length, chunked)
        req = Request(self.command, self.path, self.headers, body)
        try:
            response = self._handle(req)
        except XnatRefusal as exc:
            response = text(exc.status, exc.message)
        except BodyError:
            self.close_connection = True
            return
        except (ConnectionError, socket.timeout):
            self.close_connection = True
            return
        except Exception as exc:  # an emulator bug: answer like Tomcat's 500 page
            import traceback

            traceback.print_exc()
            response = text(500, f"Internal Server Error: {exc}")
        if response is None:  # a dropped connection fault
            self.close_connection = True
            return
        try:
            if not body.exhausted:
                body.drain()  # keep the connection reusable
        except (BodyError, ConnectionError, socket.timeout):
            self.close_connection = True
        self._send(response)

    def _handle(self, req: Request) -> Response | None:
        api = self.api
        routed = api.find_route(req)
        if isinstance(routed, Response):
            return routed
        handler, match, needs_auth = routed
        if req.path.startswith("/_emulator/"):
            return handler(req, match)
        if handler == api.services_import:
            with api.counting_import():
                return self._handle_routed(req, handler, match, needs_auth)
        return self._handle_routed(req, handler, match, needs_auth)

    def _handle_routed(self, req: Request, handler: Handler, match: re.Match[str], needs_auth: bool) -> Response | None:
        api = self.api
        if req.content_type == "application/x-www-form-urlencoded" and not is_true(req.param("inbody")):
            req.add_fields(parse_qs(req.body.read(10 * 1024 * 1024).decode("utf-8", "replace"), keep_blank_values=True))
        rule = api.emu.faults.match(req.method, req.path, req.param("import-handler") or None)
        if rule is not None:
            faulted = self._apply_fault(req, rule)
            if faulted is not False:
                return faulted  # type: ignore[return-value]
        if api.emu.latency_ms:
            time.sleep(api.emu.latency_ms / 1000)
        if needs_auth and not api.authenticate(req):
            return text(401, "Unauthorized: login required")
        return handler(req, match)

    def _apply_fault(self, req: Request, rule) -> Response | None | bool:
        """Apply a fault rule; False means "carry on normally" (a pure delay)."""
        if rule.delay_ms:
            time.sleep(rule.delay_ms / 1000)
        if rule.drop:
            req.body.read(64 * 1024)  # take part of the body, then vanish without an answer
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return None
        if rule.evict_token:
            token = req.cookie("JSESSIONID")
            if token:
                self.api.emu.sessions.invalidate(token)
            return text(401, "Unauthorized: session expired")
        if rule.error_body is not None:
            return text(200, rule.error_body)
        if rule.status is not None:
            headers = dict(rule.headers)
            if rule.retry_after is not None:
                headers["Retry-After"] = str(int(rule.retry_after) if float(rule.retry_after).is_integer() else rule.retry_after)
            return Response(rule.status, (rule.message or f"Injected HTTP {rule.status}").encode(), headers=headers)
        return False

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        size = response.file.stat().st_size if response.file is not None else len(response.body)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(size))
        for key, value in response.headers.items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        try:
            if self.command == "HEAD":
                return
            if response.file is None:
                self.wfile.write(response.body)
                return
            with response.file.open("rb") as source:
                shutil.copyfileobj(source, self.wfile, _STREAM_CHUNK)
        except (ConnectionError, socket.timeout):
            self.close_connection = True
        finally:
            if response.delete_file and response.file is not None:
                response.file.unlink(missing_ok=True)


class EmulatorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Cut keep-alive connections too, so a stopped emulator looks like a stopped XNAT to clients."""
        with self._connections_lock:
            connections = list(self._connections)
            self._connections.clear()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def make_server(api: Api, host: str, port: int) -> EmulatorHTTPServer:
    handler = type("BoundEmulatorRequestHandler", (EmulatorRequestHandler,), {"api": api})
    return EmulatorHTTPServer((host, port), handler)

