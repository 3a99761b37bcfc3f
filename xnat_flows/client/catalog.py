"""XNAT's resource catalogs, read side: a parent's resources and a resource's files.

The rows of ``GET {parent}/resources?format=json`` (``label``, ``file_count``, ``file_size``, ...)
and of ``GET {parent}/resources/{label}/files?format=json`` (``Name``, ``Size``, ``URI``,
``digest``: the MD5 XNAT computed when the file was catalogued, empty when checksums are off),
parsed in one place for uploads (``manage.resources``) and downloads (``transfer.download``).
See XNAT's wiki, *Experiment/Subject/Scan Resource API*.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from xnat_flows.client.client import XnatClient


class ResourceFile(BaseModel):
    """One file of a resource as XNAT's catalog lists it."""

    name: str = Field(description="File name (XNAT's `Name`: no folders).")
    path: str = Field(description="Path inside the resource, sub-folders included.")
    size: int
    uri: str
    digest: str = Field(default="", description="MD5, when XNAT computed it.")


class ResourceSummary(BaseModel):
    """One resource folder of a session or scan as XNAT lists it (counts when XNAT gives them)."""

    label: str
    file_count: int | None = None
    file_size: int | None = None
    format: str = ""


def _int(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None


def list_resources(client: XnatClient, parent: str) -> list[ResourceSummary]:
    """Resources of ``parent`` (``/data/experiments/{ID}`` or ``…/scans/{id}``), as XNAT lists them.

    Args:
        client: A client on the server.
        parent: The REST path of the session or scan.

    Returns:
        One summary per labelled resource.
    """
    return [
        ResourceSummary(
            label=row.get("label", ""),
            file_count=_int(row.get("file_count", "")),
            file_size=_int(row.get("file_size", "")),
            format=row.get("format", ""),
        )
        for row in client.get_rows(f"{parent}/resources")
        if row.get("label")
    ]


def list_files(client: XnatClient, parent: str, label: str) -> list[ResourceFile]:
    """Files of resource ``label`` of ``parent``, as XNAT's catalog lists them.

    Args:
        client: A client on the server.
        parent: The REST path of the session or scan.
        label: The resource's label, e.g. ``DICOM``.

    Returns:
        The files, each with its path inside the resource, size, URI and MD5 when known.
    """
    rows = client.get_rows(f"{parent}/resources/{quote(label, safe='')}/files")
    return [
        ResourceFile(
            name=row.get("Name", ""),
            # XNAT's Name drops the folders; the URI ends with the full path after /files/.
            path=row.get("path") or unquote(row.get("URI", "").split("/files/", 1)[-1]),
            size=int(row.get("Size") or 0),
            uri=row.get("URI", ""),
            digest=row.get("digest", ""),
        )
        for row in rows
    ]
