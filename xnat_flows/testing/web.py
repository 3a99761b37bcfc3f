"""Request/response plumbing shared by the emulator's HTTP handlers (xnat-web `SecureResource.getFileWritersAndLoadParams`)."""

from __future__ import annotations

import json
import re
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast
from urllib.parse import parse_qs, unquote, urlsplit

from xnat_flows.testing.httpbody import MalformedMultipart, MultipartForm, RequestBody, parse_multipart
from xnat_flows.testing.importer import Upload
from xnat_flows.testing.prearchive import XnatRefusal, is_true

if TYPE_CHECKING:
    from xnat_flows.testing.emulator import XnatEmulator
    from xnat_flows.testing.state import Store

STREAM_CHUNK = 1024 * 1024
# Content types XNAT treats as a raw in-body file, and the file-name suffix it derives
# (xnat-web `SecureResource.getFileWritersAndLoadParams`).
_RAW_TYPES = {
    "application/octet-stream": "",
    "application/zip": ".zip",
    "application/x-tar": ".tar",
    "application/x-gtar": ".tar.gz",
    "application/x-gzip": ".gz",
    "application/dicom": ".dcm",
    "application/xar": ".xar",
    "text/plain": ".txt",
    "text/xml": ".xml",
    "text/csv": ".csv",
    "application/pdf": ".pdf",
}
_INBODY_MULTIPART = (
    "In-body File posts must include the file directly as the body of the message "
    "(not as part of multi-part form data)."
)
_INBODY_EMPTY = (
    "In-body File posts must include the file directly as the body of the message. "
    "If you think you sent data, check that the request body is not empty."
)


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


def json_body(req: Request, expected: type | tuple[type, ...] = dict, limit: int = 1024 * 1024) -> Any:
    """The request's JSON body (empty → an empty ``expected``); 400 when it is not JSON of that shape.

    XNAT's Spring controllers answer a body they cannot bind with 400 Bad Request, never a 500."""
    raw = req.body.read(limit + 1)
    if len(raw) > limit:
        raise XnatRefusal(413, f"Request body larger than {limit} bytes")
    kinds = expected if isinstance(expected, tuple) else (expected,)
    if not raw.strip():
        return kinds[0]()
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise XnatRefusal(400, f"Malformed JSON in the request body: {exc}") from exc
    if not isinstance(value, expected):
        wanted = " or ".join(_JSON_NAMES.get(kind, kind.__name__) for kind in kinds)
        raise XnatRefusal(
            400,
            f"Malformed request body: expected a JSON {wanted}, "
            f"got {_JSON_NAMES.get(type(value), type(value).__name__)}",
        )
    return value


_JSON_NAMES = {
    dict: "object",
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


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
        self.throttle_bytes_per_s: int | None = None  # set by a "slow response" fault

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


class HandlerBase:
    """What every handler group relies on (the Api class provides both)."""

    emu: XnatEmulator
    store: Store

    def _zip_response(self, entries: list[tuple[str, Path]], name: str) -> Response:
        if self.store.check_space is not None:
            self.store.check_space()
        handle, tmp_name = tempfile.mkstemp(dir=self.store.tmp_dir, prefix="dl-", suffix=".zip")
        with open(handle, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for arcname, path in entries:
                archive.write(path, arcname)
        return Response(
            200,
            content_type="application/zip",
            file=Path(tmp_name),
            delete_file=True,
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )


def request_uploads(req: Request, path_name: str | None, tmp_dir: Path) -> list[Upload]:
    """The files a request carries: the raw body or multipart file parts (form fields become params)."""
    ctype = req.content_type
    inbody = is_true(req.param("inbody"))
    if ctype == "multipart/form-data":
        if inbody:
            raise XnatRefusal(406, _INBODY_MULTIPART)
        boundary = re.search(r'boundary="?([^";]+)"?', req.headers.get("Content-Type") or "")
        if boundary is None:
            raise XnatRefusal(400, "Malformed multipart/form-data request: no boundary")
        try:
            req.form = parse_multipart(req.body, boundary.group(1), tmp_dir)
        except MalformedMultipart as exc:  # Tomcat/commons-fileupload: the request is refused, 400
            raise XnatRefusal(400, f"Malformed multipart/form-data request: {exc}") from exc
        req.add_fields(req.form.fields)
        return [Upload(p.filename, p.path.open("rb")) for p in req.form.files]
    raw = inbody or ctype in _RAW_TYPES or ctype.startswith(("image/", "video/"))
    if not raw:
        return []
    if req.body.is_empty() and ctype != "application/zip":
        raise XnatRefusal(400, _INBODY_EMPTY)
    suffix = _RAW_TYPES.get(ctype, ".unsupported")
    return [Upload(path_name or f"upload{suffix}", cast(BinaryIO, req.body))]  # file-like: read, read(n)
