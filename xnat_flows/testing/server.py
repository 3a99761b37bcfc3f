"""The emulator's HTTP server: stdlib ThreadingHTTPServer, HTTP/1.1 keep-alive, routing and faults."""

from __future__ import annotations

import io
import logging
import re
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from xnat_flows.testing.anon_config import ROUTE as ANON_CONFIG_ROUTE
from xnat_flows.testing.auth import parse_basic
from xnat_flows.testing.bandwidth import ThrottledReader, ThrottledWriter
from xnat_flows.testing.handlers_archive import ArchiveHandlers
from xnat_flows.testing.handlers_prearchive import PrearchiveHandlers
from xnat_flows.testing.handlers_site import SiteHandlers
from xnat_flows.testing.httpbody import BodyError, RequestBody
from xnat_flows.testing.prearchive import XnatRefusal, is_true
from xnat_flows.testing.state import Store, is_disk_full
from xnat_flows.testing.web import STREAM_CHUNK, Handler, Request, Response, text

if TYPE_CHECKING:
    from xnat_flows.testing.emulator import XnatEmulator

log = logging.getLogger(__name__)


class Api(SiteHandlers, ArchiveHandlers, PrearchiveHandlers):
    """Routes and dispatch; the handlers live in the three handler groups, all state in the store."""

    def __init__(self, emulator: XnatEmulator) -> None:
        self.emu = emulator
        if emulator.store is None:
            raise RuntimeError("the emulator's routes need its store open (start the emulator first)")
        self.store: Store = emulator.store
        self._counter_lock = threading.Lock()
        self.active_imports = 0
        self.peak_concurrent_uploads = 0
        self.request_count = 0
        self.import_count = 0
        self.routes: list[tuple[str, re.Pattern[str], Handler, bool]] = [
            # (methods, path, handler, needs authentication)
            ("GET", re.compile(r"/"), self.root, False),
            ("GET POST DELETE", re.compile(r"/data/JSESSION"), self.jsession, False),
            ("PUT POST", re.compile(r"/data/services/auth"), self.services_auth, False),
            ("GET", re.compile(r"/data/auth"), self.auth_check, True),
            ("GET", re.compile(r"/xapi/siteConfig/buildInfo/version"), self.version, False),
            ("GET", re.compile(r"/xapi/siteConfig/buildInfo"), self.build_info, False),
            ("GET", re.compile(r"/xapi/users/username"), self.username, True),
            ("GET", re.compile(r"/xapi/users/profiles"), self.user_profiles, True),
            ("GET", re.compile(r"/xapi/users/(?P<user>[^/]+)"), self.user_info, True),
            ("DELETE", re.compile(r"/xapi/users/active/(?P<user>[^/]+)"), self.kill_sessions, True),
            ("GET", re.compile(r"/xapi/schemas"), self.schema_list, True),
            ("GET", re.compile(r"/xapi/schemas/(?P<schema>.+)"), self.schema, True),
            ("GET", re.compile(r"/data/services/tokens/issue(?:/user/(?P<user>[^/]+))?"), self.issue_token, True),
            (
                "GET",
                re.compile(r"/data/services/tokens/validate/(?P<alias>[^/]+)/(?P<secret>[^/]+)"),
                self.validate_token,
                True,
            ),
            (
                "GET",
                re.compile(r"/data/services/tokens/invalidate/(?P<alias>[^/]+)(?:/(?P<secret>[^/]+))?"),
                self.invalidate_token,
                True,
            ),
            ("GET POST", re.compile(r"/xapi/siteConfig"), self.site_config, True),
            ("GET", re.compile(r"/xapi/dicomscp"), self.dicom_receivers, True),
            ("GET", re.compile(r"/data/search/elements(?:/[^/]+)?"), self.search_elements, True),
            ("GET", re.compile(r"/data/projects/(?P<project>[^/]+)/prearchive_code"), self.get_prearchive_code, True),
            ("GET", re.compile(r"/data(?:/archive)?/projects/(?P<project>[^/]+)/users"), self.project_users, True),
            (
                "GET PUT",
                re.compile(r"/data(?:/archive)?/projects/(?P<project>[^/]+)/accessibility(?:/(?P<level>[^/]+))?"),
                self.project_accessibility,
                True,
            ),
            ("GET", re.compile(r"/data/search/saved"), self.saved_searches, True),
            ("GET", re.compile(r"/data/services/dicomdump"), self.dicom_dump, True),
            (
                "PUT POST",
                re.compile(r"/data/projects/(?P<project>[^/]+)/prearchive_code/(?P<code>[^/]+)"),
                self.put_prearchive_code,
                True,
            ),
            ("GET PUT DELETE", ANON_CONFIG_ROUTE, self.config_anon, True),  # before the archive's /data/projects
            # The whole archive (projects → subjects → experiments → scans/assessors/reconstructions →
            # resources → files) is one walk through the object model.
            (
                "GET PUT POST DELETE",
                re.compile(r"/data(?:/archive)?(?P<tree>/(?:projects|subjects|experiments)(?:/.*)?)"),
                self.archive_tree,
                True,
            ),
            ("GET", re.compile(r"/data(?:/archive)?/users"), self.list_users, True),
            ("POST", re.compile(r"/data(?:/archive)?/search"), self.search, True),
            ("POST PUT", re.compile(r"/data/services/refresh/catalog"), self.refresh_catalog, True),
            ("POST", re.compile(r"/data/services/import"), self.services_import, True),
            ("POST", re.compile(r"/data/services/archive"), self.services_archive, True),
            (
                "POST",
                re.compile(r"/data/services/prearchive/(?P<action>delete|move|rebuild)"),
                self.services_prearchive,
                True,
            ),
            ("GET", re.compile(r"/data/prearchive(?:/projects)?"), self.list_prearchive, True),
            ("GET", re.compile(r"/data/prearchive/projects/(?P<projects>[^/]+)"), self.list_prearchive, True),
            (
                "GET POST DELETE",
                re.compile(
                    r"/data/prearchive/projects/(?P<project>[^/]+)/(?P<ts>[^/]+)/(?P<folder>[^/]+)(?P<rest>/.*)?"
                ),
                self.prearchive_session,
                True,
            ),
            ("POST", re.compile(r"/xapi/direct-archive"), self.direct_archive_list, True),
            (
                "POST",
                re.compile(r"/xapi/direct-archive/(?P<project>[^/]+)/(?P<uid>[^/]+)/(?P<label>[^/]+)"),
                self.direct_archive_commit,
                True,
            ),
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


class EmulatorRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "XNAT-emulator"
    sys_version = ""
    disable_nagle_algorithm = True  # one file per request: 23 -> ~1000 requests/s (docs/performance.md)
    api: Api  # set on the subclass made per server
    server: EmulatorHTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests run many requests
        return

    def setup(self) -> None:
        super().setup()
        bucket = self.api.emu.bandwidth
        if bucket is not None:  # --bandwidth-mbit: one link shared by every connection
            self.rfile = ThrottledReader(self.rfile, bucket)  # type: ignore[assignment]
            self.wfile = ThrottledWriter(self.wfile, bucket)  # type: ignore[assignment]

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
        # HEAD is a GET whose body _send leaves out (it looks at self.command).
        req = Request("GET" if self.command == "HEAD" else self.command, self.path, self.headers, body)
        try:
            response = self._handle(req)
        except XnatRefusal as exc:
            response = text(exc.status, exc.message)
        except BodyError:
            self.close_connection = True
            return
        except (TimeoutError, ConnectionError):
            self.close_connection = True
            return
        except Exception as exc:  # noqa: BLE001 - any failure answers 500, as Tomcat does
            if is_disk_full(exc):  # XNAT answers each request 500 and carries on when space returns
                log.warning("%s %s: no space left on device", req.method, req.path)
                response = text(500, f"Internal Server Error: no space left on device ({exc})")
            else:  # an emulator bug: answer like Tomcat's 500 page
                import traceback

                traceback.print_exc()
                response = text(500, f"Internal Server Error: {exc}")
        if response is None:  # a dropped connection fault
            self.close_connection = True
            return
        try:
            if not body.exhausted:
                body.drain()  # keep the connection reusable
        except (TimeoutError, BodyError, ConnectionError):
            self.close_connection = True
        self._send(response, req.throttle_bytes_per_s)

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
            self.server.stopped.wait(api.emu.latency_ms / 1000)
        if needs_auth and not api.authenticate(req):
            return text(401, "Unauthorized: login required")
        return handler(req, match)

    def _apply_fault(self, req: Request, rule) -> Response | None | bool:
        """Apply a fault rule; False means "carry on normally" (a delay or a throttled answer)."""
        if rule.delay_ms:
            self.server.stopped.wait(rule.delay_ms / 1000)  # a stopping emulator does not wait it out
        if rule.bytes_per_second:
            req.throttle_bytes_per_s = int(rule.bytes_per_second)
        if rule.drop:
            req.body.read(64 * 1024)  # take part of the body, then vanish without an answer
            with suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
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
                headers["Retry-After"] = str(
                    int(rule.retry_after) if float(rule.retry_after).is_integer() else rule.retry_after
                )
            return Response(rule.status, (rule.message or f"Injected HTTP {rule.status}").encode(), headers=headers)
        return False

    def _send(self, response: Response, throttle_bytes_per_s: int | None = None) -> None:
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
            source = response.file.open("rb") if response.file is not None else io.BytesIO(response.body)
            with source:
                if throttle_bytes_per_s:
                    piece = max(1, throttle_bytes_per_s // 10)
                    while block := source.read(piece):
                        self.wfile.write(block)
                        self.wfile.flush()
                        time.sleep(len(block) / throttle_bytes_per_s)
                else:
                    shutil.copyfileobj(source, self.wfile, STREAM_CHUNK)
        except (TimeoutError, ConnectionError):
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
        self._all_done = threading.Condition(self._connections_lock)  # no connection being served
        self._stopping = False
        # Set when the emulator stops: an injected delay ends then, so stopping never waits it out.
        self.stopped = threading.Event()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
            if not self._connections:
                self._all_done.notify_all()
        super().shutdown_request(request)

    def close_connections(self, wait_seconds: float = 10.0) -> None:
        """Cut keep-alive connections too, so a stopped emulator looks like a stopped XNAT to
        clients, then wait (bounded) for the handlers still running, so that none of them
        touches the state after the emulator has closed it."""
        with self._connections_lock:
            self._stopping = True
            connections = list(self._connections)
        self.stopped.set()
        for connection in connections:
            with suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        with self._connections_lock:
            self._all_done.wait_for(lambda: not self._connections, timeout=wait_seconds)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up, or a request cut off by stop(), is routine for a server: XNAT
        # logs nothing on the console for it, and neither should a test run.
        error = sys.exc_info()[1]
        if self._stopping or isinstance(error, (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)):
            log.debug("request from %s ended: %r", client_address, error)
            return
        super().handle_error(request, client_address)


def make_server(api: Api, host: str, port: int) -> EmulatorHTTPServer:
    handler = type("BoundEmulatorRequestHandler", (EmulatorRequestHandler,), {"api": api})
    return EmulatorHTTPServer((host, port), handler)
