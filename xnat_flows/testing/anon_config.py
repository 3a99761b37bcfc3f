"""XNAT's anonymization scripts in the emulator: stored at XNAT's configuration-service endpoints
and applied on import with the same DicomEdit engine the client uses (``xnat_flows.anon``).

Endpoints, as xnat-web's ``ConfigResource`` serves the tool ``anon`` (paths from
``DicomEdit.buildScriptPath``):

* ``GET|PUT|DELETE /data/config/anon/script`` — the site-wide script;
* ``GET|PUT|DELETE /data/projects/{P}/config/anon/projects/{P}`` — project P's script (the path
  ``projects/P`` is stored as ``/projects/P``: ``ConfigResource.fixAnonPath``);
* any other ``/data[/projects/{P}]/config/anon/{path}`` is stored too, and used by nothing.

``GET ?format=json`` answers one ResultSet row (``tool``, ``path``, ``project``, ``user``,
``create_date``, ``reason``, ``contents``, ``unversioned``, ``version``, ``status``) or 404
"Couldn't find config ..."; ``contents=true`` answers the text alone (404 when disabled). ``PUT``
takes the script as the request body (or JSON ``{"contents": ..., "status": ...}``)
and answers 201 for a new configuration, 200 otherwise; ``?status=enabled|disabled`` alone
changes only the status; ``DELETE`` disables. A new script is enabled.

On import (``deidentify_on_import``), as xnat-web does: the enabled site script is applied to every
instance unless the request said ``prevent_anon=true`` (``GradualDicomImporter``), then the
enabled project script (XNAT applies it when the session is archived, ``ProjectAnonymizer``; the
emulator applies it as the file arrives, with the same labels). The variables are XNAT's:
``project``, ``subject``, ``session``. A script that fails on a file refuses it with 500, as
XNAT's ``handleAnonymizationError`` does.
"""

from __future__ import annotations

import datetime
import json
import re
import threading
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from xnat_flows.testing.render import table
from xnat_flows.testing.web import Request, Response, text

if TYPE_CHECKING:
    from xnat_flows.anon import Anonymizer

TOOL = "anon"
SITE_PATH = "script"
_ENABLED, _DISABLED = "enabled", "disabled"
# XNAT's default site-wide script (xnat-web DefaultAnonUtils reads it from META-INF/xnat/defaults/**/id.das):
# the project, subject and session labels XNAT files the session under replace the identifiers.
DEFAULT_SITE_SCRIPT = """\
version "6.1"
project != "Unassigned" ? (0008,1030) := project
(0010,0010) := subject
(0010,0020) := session
"""
ROUTE = re.compile(r"/data(?:/projects/(?P<project>[^/]+))?/config/anon/(?P<path>.+)")


def project_path(project: str) -> str:
    return f"/projects/{project}"


@dataclass(frozen=True)
class AnonConfig:
    contents: str
    status: str
    version: int
    user: str
    created: str
    reason: str = ""


class AnonScripts:
    """The ``anon`` tool's configurations, keyed by (project or None, path); thread-safe."""

    def __init__(self) -> None:
        self._configs: dict[tuple[str | None, str], AnonConfig] = {}
        self._compiled: dict[tuple[str | None, str, int], Anonymizer] = {}
        self._lock = threading.Lock()

    def get(self, project: str | None, path: str) -> AnonConfig | None:
        with self._lock:
            return self._configs.get((project, path))

    def put(self, project: str | None, path: str, contents: str | None, status: str | None, user: str) -> bool:
        """Store ``contents`` and/or ``status``; True when the configuration is new."""
        with self._lock:
            old = self._configs.get((project, path))
            now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
            if contents is None:
                if old is not None and status is not None:
                    self._configs[(project, path)] = replace(old, status=status)
                return False
            version = (old.version + 1) if old is not None else 1
            self._configs[(project, path)] = AnonConfig(contents, status or _ENABLED, version, user, now)
            return old is None

    def set_site_script(self, contents: str, *, enabled: bool = True) -> None:
        self.put(None, SITE_PATH, contents, _ENABLED if enabled else _DISABLED, "admin")

    def _enabled(self, project: str | None, path: str) -> Anonymizer | None:
        from xnat_flows.anon import compile_script

        config = self.get(project, path)
        if config is None or config.status != _ENABLED or not config.contents.strip():
            return None
        key = (project, path, config.version)
        with self._lock:
            found = self._compiled.get(key)
        if found is None:
            found = compile_script(config.contents, source=f"{TOOL}/{path}")
            with self._lock:
                self._compiled[key] = found
        return found

    def deidentify_on_import(self, data: bytes, project: str, subject: str, session: str, prevent_anon: bool) -> bytes:
        """``data`` as XNAT stores it: the enabled site, then project, scripts applied (none with
        ``prevent_anon``). Raises ``XnatRefusal`` 500 when a script fails on the file."""
        if prevent_anon or not self._configs:
            return data
        from xnat_flows.anon import AnonError, ScriptError
        from xnat_flows.testing.prearchive import XnatRefusal

        variables = {"project": project, "subject": subject, "session": session}
        try:
            for anonymizer in (self._enabled(None, SITE_PATH), self._enabled(project, project_path(project))):
                if anonymizer is not None:
                    data = anonymizer.apply_bytes(data, variables)
        except (AnonError, ScriptError) as exc:
            raise XnatRefusal(500, f"Dicom anonymization failed: {exc}") from None
        return data

    # -- the configuration service's REST face -----------------------------------------------------
    def handle(self, req: Request, m: re.Match[str], known_project: Any) -> Response:
        project, path = m["project"], m["path"]
        if project is not None and not known_project(project):
            return text(404, f"The requested project {project} does not exist.")
        if project is not None and path == f"projects/{project}":
            path = project_path(project)  # ConfigResource.fixAnonPath
        if req.method == "GET":
            return self._get(req, project, path)
        if req.method == "DELETE":
            self.put(project, path, None, _DISABLED, req.user or "")
            return text(200, "")
        return self._put(req, project, path)

    def _get(self, req: Request, project: str | None, path: str) -> Response:
        config = self.get(project, path)
        where = f"project {project} on tool [{TOOL}] path [{path}]"
        if req.param("contents").lower() == "true" and req.param("meta").lower() != "true":
            if config is None or config.status == _DISABLED:
                return text(404, f"Config not found for user {req.user} and {where}")
            return Response(200, config.contents.encode(), "text/plain")
        if config is None:
            return text(404, f"Couldn't find config for user {req.user} and {where}")
        row = {
            "tool": TOOL,
            "path": path,
            "project": project or "",
            "user": config.user,
            "create_date": config.created,
            "reason": config.reason,
            "contents": config.contents,
            "unversioned": "false",
            "version": str(config.version),
            "status": config.status,
        }
        return table(req, [row], "Configurations")

    def _put(self, req: Request, project: str | None, path: str) -> Response:
        body = req.body.read(4 * 1024 * 1024)
        status = req.param("status") or None
        contents: str | None = None
        if req.content_type == "application/json" and body:
            try:
                fields = json.loads(body)
            except ValueError:
                return text(400, "The request body is not JSON")
            status = fields.get("status") or status
            contents = fields.get("contents")
        elif body:
            contents = body.decode("utf-8", "replace")
        if status is None and contents is None:
            return text(
                400,
                "You must specify either the status querystring parameter or a configuration object in the "
                "request body.",
            )
        if status is not None:
            if status.lower() not in ("enabled", "true", "disabled", "false"):
                return text(
                    400, f"Only valid values for the status flag are enabled or true and disabled or false: {status}"
                )
            status = _ENABLED if status.lower() in ("enabled", "true") else _DISABLED
        if contents is not None and not contents.strip():
            return text(500, "No contents provided")
        created = self.put(project, path, contents, status, req.user or "")
        return text(201 if created else 200, "")
