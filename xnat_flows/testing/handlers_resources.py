"""Resources and files: listings, creation, uploads (``inbody``, multipart, ``extract``), single
files, deletion, downloads as zip/tar/tar.gz in XNAT's layout, and the catalog refresh service.

As XNAT's REST API documentation (Experiment/Subject/Scan Resource API pages, "How To Download
Files via the XNAT REST API") and xnat-web's ``FileList`` and ``CatalogResource`` answer.
"""

from __future__ import annotations

import email.utils
import json
import re
import tarfile
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

from xnat_flows.testing import readback
from xnat_flows.testing.archive_base import ArchiveBase
from xnat_flows.testing.importer import archive_format, iter_members
from xnat_flows.testing.model import Obj, ResourceSet, ScanSet
from xnat_flows.testing.prearchive import XnatRefusal, is_true
from xnat_flows.testing.render import item, listing_format, table
from xnat_flows.testing.state import write_stream_to
from xnat_flows.testing.web import STREAM_CHUNK, Request, Response, request_uploads, text

FILE_COLUMNS = readback.FILE_COLUMNS
_ARCHIVE_SUFFIXES = {"zip": "zip", "tar.gz": "tar.gz", "tgz": "tar.gz", "tar": "tar"}


class ResourceHandlers(ArchiveBase):
    # -- resources -----------------------------------------------------------------------------------
    def list_resources(self, req: Request, parent: Obj | ScanSet | ResourceSet) -> Response:
        resources = parent.resources if isinstance(parent, ResourceSet) else self.archive.resources_of(parent)
        rows = [self.resource_row(r) for r in resources]
        return table(req, rows, "Resources", fixed_columns=True)

    def create_resource(self, req: Request, parent: Obj, label: str) -> Response:
        owner, scan_id = parent.resource_parent()
        self.store.ensure_resource(owner, scan_id, label, req.param("format"), req.param("content"), req.param("tags"))
        return text(200, "")

    def resource_children(self, obj: Obj, field: str) -> list[dict[str, Any]]:
        resources = self.archive.resources_of(obj)
        return [{"field": field, "items": [self.resource_item(r) for r in resources]}] if resources else []

    def resource_item(self, resource: Obj) -> dict[str, Any]:
        files = self.store.files(resource.row["id"])
        return item(
            "xnat:resourceCatalog",
            {
                "label": resource.row["label"],
                "format": resource.row["format"] or "",
                "content": resource.row["content"] or "",
                "tags": resource.row["tags"] or "",
                "file_count": len(files),
                "file_size": sum(f["size"] or 0 for f in files),
                "xnat_abstractresource_id": resource.row["id"],
            },
        )

    def resource_row(self, resource: Obj) -> dict[str, Any]:
        files = self.store.files(resource.row["id"])
        parent = resource.parent
        assert parent is not None
        category = {"scan": "scans", "reconstruction": "reconstructions", "assessor": "assessors"}.get(
            parent.kind, "resources"
        )
        return {
            "xnat_abstractresource_id": resource.row["id"],
            "label": resource.row["label"],
            "element_name": "xnat:resourceCatalog",
            "category": category,
            "cat_id": parent.id,
            "cat_desc": "",
            "format": resource.row["format"] or "",
            "content": resource.row["content"] or "",
            "tags": resource.row["tags"] or "",
            "file_count": len(files),
            "file_size": sum(f["size"] or 0 for f in files),
        }

    # -- files -------------------------------------------------------------------------------------
    def files_below(self, parent: Obj | ScanSet | ResourceSet | None) -> list[tuple[Obj, Any]]:
        """(resource, file row) of every file below ``parent``: one resource, a set, or all of an object's."""
        if parent is None:
            return []
        if isinstance(parent, ResourceSet):
            resources = parent.resources
        elif isinstance(parent, Obj) and parent.kind == "resource":
            resources = [parent]
        else:
            resources = self.archive.resources_of(parent)
        return [(resource, f) for resource in resources for f in self.store.files(resource.row["id"])]

    def list_files(self, req: Request, parent: Obj | ScanSet | ResourceSet | None) -> Response:
        entries = self.files_below(parent)
        fmt = listing_format(req)
        if fmt in _ARCHIVE_SUFFIXES:
            name = _top_label(parent) or "download"
            return self._archive_response(
                [
                    (self.zip_path(resource, f["path"]), self.store.resource_dir(resource.row["id"]) / f["path"])
                    for resource, f in entries
                ],
                f"{name}.{_ARCHIVE_SUFFIXES[fmt]}",
                _ARCHIVE_SUFFIXES[fmt],
            )
        rows = []
        digests = self._digests(entries)
        for resource, f in entries:
            base = f"{self.uri(resource.parent)}/resources/{resource.label}" if resource.parent else ""
            rows.append(
                {
                    "Name": f["path"].rsplit("/", 1)[-1],
                    "Size": f["size"],
                    "URI": f"{base}/files/{f['path']}",
                    "collection": resource.label,
                    "file_tags": "",
                    "file_format": resource.row["format"] or "",
                    "file_content": resource.row["content"] or "",
                    "cat_ID": resource.row["id"],
                    "digest": digests.get((resource.row["id"], f["path"]), ""),
                    "path": f["path"],
                }
            )
        return table(req, rows, "Files", FILE_COLUMNS, fixed_columns=True)

    def _digests(self, entries: list[tuple[Obj, Any]]) -> dict[tuple[int, str], str]:
        """(resource id, path) -> MD5, computed for files whose catalog entry has none yet."""
        store, out = self.store, {}
        for resource_id in {resource.row["id"] for resource, _ in entries}:
            paths = {
                f["path"]: store.resource_dir(resource_id) / f["path"] for r, f in entries if r.row["id"] == resource_id
            }
            for path, md5 in store.digests("files", {"resource_id": resource_id}, paths).items():
                out[(resource_id, path)] = md5
        return out

    def zip_path(self, resource: Obj, path: str) -> str:
        """XNAT's layout in every download zip: {session}/scans/{id}/resources/{label}/files/{path}."""
        parent = resource.parent
        assert parent is not None
        tail = f"resources/{resource.label}/files/{path}"
        if parent.kind == "scan":
            session = self.store.experiment(parent.row["experiment_id"])
            return f"{session['label'] if session else parent.row['experiment_id']}/scans/{parent.id}/{tail}"
        if parent.kind == "reconstruction":
            session = self.store.experiment(parent.row["experiment_id"])
            return f"{session['label'] if session else ''}/reconstructions/{parent.id}/out/{tail}"
        if parent.kind == "assessor":
            session = self.store.experiment(parent.row["session_id"])
            return f"{session['label'] if session else ''}/assessors/{parent.label}/out/{tail}"
        return f"{parent.label}/{tail}"

    def _archive_response(self, entries: list[tuple[str, Path]], name: str, kind: str) -> Response:
        if kind == "zip":
            return self._zip_response(entries, name)
        if self.store.check_space is not None:
            self.store.check_space()
        handle, tmp_name = tempfile.mkstemp(dir=self.store.tmp_dir, prefix="dl-", suffix=".tar")
        with open(handle, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz" if kind == "tar.gz" else "w") as archive:
            for arcname, path in entries:
                archive.add(path, arcname)
        content_type = "application/x-gzip" if kind == "tar.gz" else "application/x-tar"
        return Response(
            200,
            content_type=content_type,
            file=Path(tmp_name),
            delete_file=True,
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    def file(self, req: Request, parent: Obj | ScanSet | ResourceSet | None, file_path: str) -> Response:
        if not isinstance(parent, Obj) or parent.kind != "resource":
            return text(404, f"The requested resource {req.path} was not found.")
        if req.method in ("PUT", "POST"):
            return self.upload(req, parent, file_path)
        if req.method == "DELETE":
            return self.delete_file(parent, file_path)
        if req.method != "GET":
            return text(405, f"Method {req.method} not allowed")
        store = self.store
        if (
            store.query_one("SELECT 1 FROM files WHERE resource_id = ? AND path = ?", (parent.row["id"], file_path))
            is None
        ):
            return text(404, f"File {file_path} not found")
        path = store.resource_dir(parent.row["id"]) / file_path
        modified = email.utils.formatdate(path.stat().st_mtime, usegmt=True)
        return Response(200, content_type="application/octet-stream", file=path, headers={"Last-Modified": modified})

    def delete_file(self, resource: Obj, file_path: str) -> Response:
        with self.store.transaction() as db:
            gone = db.execute(
                "DELETE FROM files WHERE resource_id = ? AND path = ?", (resource.row["id"], file_path)
            ).rowcount
        if not gone:
            return text(404, f"File {file_path} not found")
        (self.store.resource_dir(resource.row["id"]) / file_path).unlink(missing_ok=True)
        return text(200, "")

    def upload(self, req: Request, resource: Obj, file_path: str) -> Response:
        uploads = request_uploads(req, PurePosixPath(file_path).name if file_path else None, self.store.tmp_dir)
        if not uploads:
            size = req.body.bytes_read + len(req.body.read())
            if size == 0:
                return text(
                    400,
                    f"You tried to {req.method} to this service, but didn't provide any data (found "
                    "request entity size of 0). If you think you sent data to upload, you can try to "
                    f"{req.method} with the query-string parameter inbody=true or use "
                    "multipart/form-data encoding.",
                )
            return text(
                400,
                f"You tried to {req.method} a payload of {size} bytes to this service, but didn't "
                "provide any data. If you think you sent data to upload, you can try to "
                f"{req.method} with the query-string parameter inbody=true or use multipart/form-data "
                "encoding.",
            )
        store = self.store
        resource_id = resource.row["id"]
        overwrite = is_true(req.param("overwrite"))
        extract = is_true(req.param("extract"))
        base_dir = PurePosixPath(file_path).parent.as_posix() if file_path else ""
        duplicates: list[str] = []

        def save(target: str, chunks: Iterator[bytes] | bytes) -> None:
            clean = PurePosixPath(target)
            if clean.is_absolute() or ".." in clean.parts:
                raise XnatRefusal(400, f"Invalid file path {target}")
            exists = store.query_one(
                "SELECT 1 FROM files WHERE resource_id = ? AND path = ?", (resource_id, clean.as_posix())
            )
            if exists and not overwrite:
                duplicates.append(clean.as_posix())
                return
            size, md5 = write_stream_to(
                store.resource_dir(resource_id) / clean, chunks, store.tmp_dir, store.check_space
            )
            store.record_file(resource_id, clean.as_posix(), size, md5)

        try:
            for upload in uploads:
                if extract and _is_archive_name(upload.name):
                    for member, data in iter_members(upload, store.tmp_dir):
                        save(f"{base_dir}/{member}" if base_dir and base_dir != "." else member, data)
                else:
                    target = file_path if (file_path and len(uploads) == 1) else upload.name
                    save(target, iter(partial(upload.stream.read, STREAM_CHUNK), b""))
        finally:
            if req.form is not None:
                req.form.cleanup()
        if duplicates:
            return Response(200, json.dumps({"duplicates": duplicates}).encode(), "text/html")
        return text(200, "")

    def dicom_dump(self, req: Request, m: re.Match[str]) -> Response:
        """``GET /data/services/dicomdump?src=…[&field=…]`` (XNAT wiki: DICOM Dump Service API): the
        header of one DICOM file of a session or scan, archived or in the prearchive, one row per
        element (tag1, tag2, vr, value, desc); ``field`` keeps elements by keyword or GGGGEEEE."""
        src = req.param("src").strip()
        if not src:
            return text(400, "Specify the session or scan to dump: ?src=/archive/projects/P/experiments/E")
        path = self._first_dicom(src)
        if path is None:
            return text(404, f"No DICOM file found for {src}")
        import pydicom  # lazy: keeps the pytest plugin import cheap

        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the same 500
            return text(500, f"Unable to read {src}: {exc}")
        wanted = {f.strip().lower() for value in req.multi.get("field", []) for f in value.split(",") if f.strip()}
        rows = []
        for element in [*dataset.file_meta, *dataset]:
            tag = f"{element.tag.group:04X}{element.tag.element:04X}"
            if wanted and tag.lower() not in wanted and element.keyword.lower() not in wanted:
                continue
            value = "" if element.VR == "SQ" else str(element.value)
            rows.append(
                {
                    "tag1": f"({element.tag.group:04X},{element.tag.element:04X})",
                    "tag2": "",
                    "vr": element.VR,
                    "value": value[:1024],
                    "desc": element.name,
                }
            )
        return table(req, rows, "", fixed_columns=True, filter_rows=False)

    def _first_dicom(self, src: str) -> Path | None:
        parts = [p for p in src.split("/") if p]
        if parts[:1] == ["data"]:
            parts = parts[1:]
        if parts[:1] == ["prearchive"] and len(parts) >= 5 and parts[1] == "projects":
            row = self.store.prearc_by_url(parts[2], parts[3], parts[4])
            if row is None:
                return None
            scan = parts[6] if len(parts) > 6 and parts[5] == "scans" else None
            files = self.store.prearc_files(row.id, scan)
            chosen = next(iter(files), None)
            if chosen is None:
                return None
            return self.store.prearc_file_path(row.id, chosen["scan_id"], chosen["resource"], chosen["name"])
        parts = parts[1:] if parts[:1] == ["archive"] else parts
        target = self.archive.resolve(parts)
        if target is not None and isinstance(target.obj, Obj) and target.obj.kind == "experiment":
            target = self.archive.resolve([*parts, "scans", "ALL"])  # a session: any of its scans' files
        if target is None or target.name is not None or target.obj is None:
            return None
        for resource, f in self.files_below(target.obj):
            if resource.label in ("DICOM", "secondary"):
                return self.store.resource_dir(resource.row["id"]) / f["path"]
        return None

    def refresh_catalog(self, req: Request, m: re.Match[str]) -> Response:
        """POST /data/services/refresh/catalog?resource=/archive/projects/...: the catalogs are always
        current here (files are recorded as they are written), so only the named resources are checked."""
        names = [r for value in req.multi.get("resource", []) for r in value.split(",") if r.strip()]
        if not names:
            return text(400, "Specify the resources to refresh: ?resource=/archive/experiments/{ID}")
        for name in names:
            path = name.strip()
            path = path[len("/archive") :] if path.startswith("/archive/") else path
            path = path[len("/data") :] if path.startswith("/data/") else path
            target = self.archive.resolve([s for s in path.split("/") if s])
            if target is None or target.name is not None or target.obj is None:
                return text(404, f"Unknown resource {name}")
        return text(200, "")


def _top_label(obj: Obj | ScanSet | ResourceSet | None) -> str:
    """The label a download is named after: the session (or project/subject) above what was asked for."""
    while obj is not None:
        if isinstance(obj, ResourceSet):
            obj = obj.parent
        elif isinstance(obj, ScanSet):
            obj = obj.experiment
        elif obj.kind in ("resource", "scan", "reconstruction"):
            obj = obj.parent
        else:
            return obj.label
    return ""


def _is_archive_name(name: str) -> bool:
    try:
        archive_format(name)
    except XnatRefusal:
        return False
    return True
