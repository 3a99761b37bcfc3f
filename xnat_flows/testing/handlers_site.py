"""Handlers for login/JSESSION, alias tokens, site information and the /_emulator control endpoints.

As XNAT wiki: User Session Management API and User Alias Token API describe them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from xnat_flows.testing.auth import parse_basic
from xnat_flows.testing.web import HandlerBase, Request, Response, json_body, json_response, text


class SiteHandlers(HandlerBase):
    def root(self, req: Request, m: re.Match[str]) -> Response:
        return Response(
            200, b"<html><head><title>XNAT emulator</title></head><body>XNAT emulator</body></html>", "text/html"
        )

    def _login_failed(self) -> Response:
        if self.emu.login_failure_mode == "html200":
            return Response(
                200,
                b'<html><body><form name="form1" method="post" action="/xnat/login">'
                b"Login attempt failed. Please try again.</form></body></html>",
                "text/html",
            )
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
        info = {
            "version": self.emu.version,
            "buildNumber": "emulator",
            "commit": "emulator",
            "buildDate": "2026-01-01",
            "sha": "emulator",
        }
        return json_response(json.dumps(info).encode())

    def username(self, req: Request, m: re.Match[str]) -> Response:
        return text(200, req.user or "")

    def user_info(self, req: Request, m: re.Match[str]) -> Response:
        name = m["user"]
        if self.store.query_one("SELECT 1 FROM users WHERE username = ?", (name,)) is None:
            return text(404, f"User {name} not found")
        return json_response(json.dumps(_user(name)).encode())

    def user_profiles(self, req: Request, m: re.Match[str]) -> Response:
        """``GET /xapi/users/profiles``: every user's profile, as ``/xapi/users/{user}`` shows one."""
        names = [r["username"] for r in self.store.query("SELECT username FROM users ORDER BY username")]
        return json_response(json.dumps([{"id": i, **_user(n)} for i, n in enumerate(names, start=1)]).encode())

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
        body = {
            "alias": token["alias"],
            "secret": token["secret"],
            "xdatUserId": username,
            "singleUse": False,
            "estimatedExpirationTime": int(token["expires"] * 1000),
            "timestamp": int(token["created"] * 1000),
            "enabled": True,
            "created": int(token["created"] * 1000),
            "id": token["alias"],
            "disabled": 0,
        }
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
        """Accepted so set-up code that tunes a real XNAT runs unchanged; the rebuilder interval and
        ``checksums`` are used."""
        if req.method == "POST":
            settings = json_body(req)
            if "sessionXmlRebuilderInterval" in settings:  # minutes on XNAT; kept as seconds here for speed
                interval = settings["sessionXmlRebuilderInterval"]
                if isinstance(interval, bool) or not isinstance(interval, (int, float, str)):
                    return text(400, "sessionXmlRebuilderInterval must be a number")
                try:
                    self.emu.prearchive.rebuild_idle_seconds = float(interval)
                except ValueError:
                    return text(400, f"sessionXmlRebuilderInterval must be a number, not {interval!r}")
            if "checksums" in settings:  # XNAT's site setting: catalogs carry MD5 digests
                if not isinstance(settings["checksums"], bool):
                    return text(400, "checksums must be true or false")
                self.store.checksums = settings["checksums"]
            return text(200, "")
        config = {
            "siteId": self.emu.site_id,
            "initialized": True,
            "enableCsrfToken": False,
            "sessionXmlRebuilderInterval": self.emu.prearchive.rebuild_idle_seconds,
            "sessionXmlRebuilderRepeat": 60000,
            "checksums": self.store.checksums,
        }
        return json_response(json.dumps(config).encode())

    def dicom_receivers(self, req: Request, m: re.Match[str]) -> Response:
        """The one receiver (when the emulator runs its DICOM receiver), shaped like XNAT's `/xapi/dicomscp`."""
        port = self.emu.scp_port
        if port is None:
            return json_response(b"[]")
        receiver = {
            "id": 1,
            "identifier": "dicomObjectIdentifier",
            "label": "XNAT emulator",
            "port": port,
            "aeTitle": self.emu.scp_aet,
            "enabled": True,
            "disabled": False,
            "customProcessing": False,
            "directArchive": False,
            "anonymizationEnabled": self.emu.anonymize,
            "whitelistEnabled": False,
            "routingExpressionsEnabled": False,
            "whitelist": [],
            "created": 0,
            "timestamp": 0,
        }
        return json_response(json.dumps([receiver]).encode())

    def config_anon(self, req: Request, m: re.Match[str]) -> Response:
        """XNAT's configuration service for the tool ``anon``: site and project anonymization scripts."""
        return self.emu.anon_scripts.handle(req, m, lambda project: self.store.project(project) is not None)

    # -- control endpoints (unauthenticated; tests drive faults from another process) --------------
    def control_stats(self, req: Request, m: re.Match[str]) -> Response:
        return json_response(json.dumps(self.emu.stats()).encode())

    def control_faults(self, req: Request, m: re.Match[str]) -> Response:
        faults = self.emu.faults
        if req.method == "DELETE":
            faults.clear()
            return text(200, "")
        if req.method == "POST":
            spec = json_body(req, (dict, list))
            specs = spec if isinstance(spec, list) else [spec]
            if not all(isinstance(s, dict) for s in specs):
                return text(400, "Each fault rule must be a JSON object")
            try:
                added = [faults.add_from_json(s).id for s in specs]
            except (TypeError, ValueError) as exc:
                return text(400, str(exc))
            return json_response(json.dumps({"ids": added}).encode())
        return json_response(json.dumps(faults.rules()).encode())

    def control_rebuild(self, req: Request, m: re.Match[str]) -> Response:
        self.emu.prearchive.tick()
        return text(200, "")


def _user(name: str) -> dict[str, object]:
    return {
        "username": name,
        "firstName": name,
        "lastName": "",
        "email": f"{name}@example.org",
        "enabled": True,
        "verified": True,
    }
