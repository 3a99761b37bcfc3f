"""Non-DICOM resources: upload a file, or a whole directory, to a session or scan resource.

Plain Python on ``XnatClient`` (no Prefect). A directory is zipped on the fly as the request body
(no temporary file, so a 50 GB directory needs no 50 GB of scratch space) and unpacked by XNAT
(``extract=true``), which keeps the paths inside the zip. XNAT answers HTTP 200 with
``{"duplicates": [...]}`` when files already exist and ``overwrite`` is off: those files were *not*
replaced, so the result reports them instead of calling the upload a plain success.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from pydantic import BaseModel, Field

from xnat_flows.client.archive import experiment_id
from xnat_flows.client.catalog import ResourceFile, list_files
from xnat_flows.client.client import XnatClient
from xnat_flows.client.errors import ConflictError, InputError

log = logging.getLogger(__name__)

_CHUNK = 1024 * 1024


class ResourceTarget(BaseModel):
    """The session (or one of its scans) that owns the resource."""

    session: str = Field(
        description="Experiment accession ID (e.g. XNAT_E00001), or its label when `project` is given."
    )
    project: str | None = Field(default=None, description="Project ID; needed when `session` is a label.")
    subject: str | None = Field(default=None, description="Subject label (optional with a project; saves a look-up).")
    scan: str | None = Field(
        default=None, description="Scan ID: attach to this scan's resource instead of the session's."
    )


class SkippedPath(BaseModel):
    path: str
    reason: str


class ResourceUploadResult(BaseModel):
    """What ``upload_resource`` sent and what XNAT kept."""

    resource_uri: str = Field(description="e.g. /data/experiments/XNAT_E00001/resources/BIDS")
    label: str
    source: str
    extracted: bool = Field(description="True when a directory was sent as a zip and unpacked by XNAT.")
    files: list[str] = Field(default_factory=list, description="Paths sent, relative to the resource.")
    bytes_sent: int = 0
    skipped: list[SkippedPath] = Field(
        default_factory=list, description="Local files not sent (hidden, symlinks leaving the directory, ...)."
    )
    duplicates: list[str] = Field(
        default_factory=list, description="Files XNAT already had and did not replace (overwrite was off)."
    )
    resource_created: bool = False

    @property
    def complete(self) -> bool:
        """Everything sent was stored (XNAT refused no duplicate)."""
        return not self.duplicates


@dataclass(frozen=True)
class DirectoryMember:
    """One file to send. Has the attributes ``transfer.archive_stream.iter_archive`` reads from a
    ``DicomFile`` (path, relpath, size, mtime_ns), so the archive writer is shared."""

    path: Path
    relpath: str  # POSIX path inside the resource
    size: int
    mtime_ns: int = 0


# --------------------------------------------------------------------------------------- targets


def resource_parent(client: XnatClient, target: ResourceTarget) -> str:
    """The REST path owning the resource: ``/data/experiments/{ID}[/scans/{scan}]`` or the full project form."""
    if target.project and target.subject:
        parent = "/data/projects/{}/subjects/{}/experiments/{}".format(
            *(quote(part, safe="") for part in (target.project, target.subject, target.session))
        )
    elif target.project:
        # XNAT ignores sub-resources under /data/projects/P/experiments/E for some URLs: use the ID.
        parent = f"/data/experiments/{quote(experiment_id(client, target.project, target.session), safe='')}"
    else:
        parent = f"/data/experiments/{quote(target.session, safe='')}"
    if target.scan:
        parent += f"/scans/{quote(target.scan, safe='')}"
    return parent


def ensure_resource(client: XnatClient, parent: str, label: str) -> bool:
    """Create the resource folder; False if it already existed (XNAT answers 409, which is fine)."""
    try:
        client.request("PUT", f"{parent}/resources/{quote(label, safe='')}")
    except ConflictError:
        return False
    return True


# ------------------------------------------------------------------------------ local collection


def collect_directory(root: Path) -> tuple[list[DirectoryMember], list[SkippedPath]]:
    """Files under ``root`` to send (sorted, with paths relative to ``root``) and those left out.

    Hidden files and folders are left out (``.DS_Store``, ``.git``); so are symlinks that leave
    ``root`` (they could leak unrelated data), broken symlinks, symlinked folders (not followed,
    so no loops) and anything that is not a regular file.
    """
    root = root.resolve()
    members: list[DirectoryMember] = []
    skipped: list[SkippedPath] = []

    def skip(path: Path, reason: str) -> None:
        skipped.append(SkippedPath(path=path.relative_to(root).as_posix(), reason=reason))

    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in sorted(dirnames):
            sub = here / name
            if name.startswith("."):
                skip(sub, "hidden folder")
                dirnames.remove(name)
            elif sub.is_symlink():
                skip(sub, "symlinked folder (not followed)")
                dirnames.remove(name)
        dirnames.sort()
        for name in sorted(filenames):
            path = here / name
            if name.startswith("."):
                skip(path, "hidden file")
                continue
            if path.is_symlink():
                target = path.resolve()
                if not target.exists():
                    skip(path, "broken symlink")
                    continue
                if not target.is_relative_to(root):
                    skip(path, f"symlink pointing outside the directory ({target})")
                    continue
            if not path.is_file():
                skip(path, "not a regular file")
                continue
            stat = path.stat()
            members.append(
                DirectoryMember(
                    path=path, relpath=path.relative_to(root).as_posix(), size=stat.st_size, mtime_ns=stat.st_mtime_ns
                )
            )
    return members, skipped


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            yield chunk


def _zip_chunks(members: list[DirectoryMember]) -> Iterator[bytes]:
    """A stored (uncompressed) zip of ``members``, streamed: DICOM and NIfTI barely compress, and
    deflate would cut throughput tenfold."""
    from xnat_flows.transfer.archive_stream import iter_archive

    # iter_archive is typed for DicomFile but reads only the attributes DirectoryMember has.
    yield from iter_archive(members, "zip")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------- upload


def upload_resource(
    client: XnatClient,
    target: ResourceTarget,
    label: str,
    path: str | Path,
    *,
    overwrite: bool = False,
) -> ResourceUploadResult:
    """Upload a file, or a directory (zipped on the fly, unpacked by XNAT), to resource ``label``.

    The resource is created when missing. Files already in the resource are replaced only with
    ``overwrite=True``; otherwise XNAT keeps them and they are listed in ``duplicates``.
    """
    source = Path(path)
    if not source.exists():
        raise InputError(f"{source} does not exist.")
    if not source.is_dir():
        _refuse_names_xnat_cannot_take([source.name])
    parent = resource_parent(client, target)
    resource_uri = f"{parent}/resources/{quote(label, safe='')}"
    params = {"inbody": "true"}
    if overwrite:
        params["overwrite"] = "true"

    skipped: list[SkippedPath] = []
    if source.is_dir():
        members, skipped = collect_directory(source)
        for item in skipped:  # info, not warning: the result lists them and callers present them
            log.info("not sending %s: %s", item.path, item.reason)
        if not members:
            raise InputError(
                f"{source} holds no file to upload.", hint="Hidden files and outside symlinks are never sent."
            )
        _refuse_names_xnat_cannot_take([m.relpath for m in members])
        created = ensure_resource(client, parent, label)
        files = [m.relpath for m in members]
        size = sum(m.size for m in members)
        remote = f"{resource_uri}/files/{quote(source.resolve().name or 'upload', safe='')}.zip"
        response = client.request(
            "PUT",
            remote,
            params={**params, "extract": "true"},
            content=lambda: _zip_chunks(members),  # a callable: each retry streams afresh
            headers={"Content-Type": "application/zip"},
        )
        extracted = True
    else:
        created = ensure_resource(client, parent, label)
        files = [source.name]
        size = source.stat().st_size
        response = client.request(
            "PUT",
            f"{resource_uri}/files/{quote(source.name, safe='')}",
            params=params,
            # With inbody=true the body is the file whatever its type; octet-stream avoids guessing.
            content=lambda: _file_chunks(source),
            headers={"Content-Type": "application/octet-stream"},
        )
        extracted = False

    duplicates = duplicates_in(response.text)
    if duplicates:
        log.info(
            "XNAT kept %d existing file(s) in %s (overwrite is off): %s", len(duplicates), resource_uri, duplicates[:20]
        )
    return ResourceUploadResult(
        resource_uri=resource_uri,
        label=label,
        source=str(source),
        extracted=extracted,
        files=files,
        bytes_sent=size,
        skipped=skipped,
        duplicates=duplicates,
        resource_created=created,
    )


def _refuse_names_xnat_cannot_take(names: list[str]) -> None:
    """File names whose bytes are not UTF-8 (an export from another locale) cannot be named in an
    XNAT URL or a zip member as they are: refused before the resource is created, so nothing is
    left half-made. (DICOM uploads need no names; resources are found by them.)"""
    bad = [os.fsencode(name).decode("utf-8", "backslashreplace") for name in names if not _is_utf8(name)]
    if bad:
        raise InputError(
            f"{len(bad)} file names are not valid UTF-8, e.g. '{bad[0]}'; nothing was sent",
            hint="Rename them to UTF-8 (e.g. `convmv -f latin1 -t utf-8 -r --notest DIR`) and run again",
        )


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, kept by Python as surrogate escapes
        return False
    return True


def duplicates_in(body: str) -> list[str]:
    """The ``duplicates`` list of XNAT's 200 answer to a file upload (empty when there is none)."""
    text = body.strip()
    if not text.startswith("{"):
        return []
    try:
        answer = json.loads(text)
    except ValueError:
        return []
    found = answer.get("duplicates") if isinstance(answer, dict) else None
    return [str(name) for name in found] if isinstance(found, list) else []


def list_resource_files(client: XnatClient, target: ResourceTarget, label: str) -> list[ResourceFile]:
    """Files of a resource as XNAT lists them."""
    return list_files(client, resource_parent(client, target), label)


def delete_resource_files(client: XnatClient, target: ResourceTarget, label: str, paths: list[str]) -> None:
    """Remove files from resource ``label`` (``DELETE …/resources/{label}/files/{path}``), e.g. the
    outputs of an earlier run that a re-run with new names replaced."""
    parent = resource_parent(client, target)
    for path in paths:
        client.request("DELETE", f"{parent}/resources/{quote(label, safe='')}/files/{quote(path, safe='/')}")
