"""The one rendering layer: listings (XNAT's XFTTable) and single objects (XNAT's items / XML
document) in the formats a request asks for with ``format=`` — json (default), csv, xml, html.

Listings honour the generic options of XNAT's REST listings ("REST Enhanced Listing Options"):
``columns=`` (names or xpaths such as ``xnat:mrSessionData/date``), filters on any column
(``label=E*``, comma lists, ``*`` wildcards), ``sortBy``/``sortOrder``, ``limit``/``offset``.
"""

from __future__ import annotations

import csv
import fnmatch
import html
import io
import json
from functools import lru_cache
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from xnat_flows.testing.prearchive import XnatRefusal
from xnat_flows.testing.readback import result_set
from xnat_flows.testing.web import Request, Response

XNAT_NS = "http://nrg.wustl.edu/xnat"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"

# Query parameters that steer a request rather than filter a listing's rows.
_NOT_FILTERS = {
    "format",
    "columns",
    "sortby",
    "sortorder",
    "limit",
    "offset",
    "xsitype",
    "req_format",
    "project_id",
    "inbody",
    "overwrite",
    "extract",
    "content",
    "tags",
    "event_reason",
    "event_type",
    "event_action",
    "event_comment",
    "removefiles",
    "recursive",
    "all",
    "file_format",
    "file_content",
    "file_tags",
    "locator",
    "structure",
    "accept-not-found",
    "xnat_xsd",
    "sessionid",
    "jsessionid",
    "_",
}


def listing_format(req: Request) -> str:
    return (req.param("format") or "json").lower()


def table(
    req: Request,
    rows: list[dict[str, Any]],
    title: str,
    columns: list[dict[str, str]] | None = None,
    filter_rows: bool = True,
    fixed_columns: bool = False,
) -> Response:
    """A listing in the requested format, after XNAT's generic filter/sort/page/columns options.

    ``fixed_columns``: the listing ignores ``columns=`` (XNAT's resource and file listings do)."""
    cleaned = [
        {k: "" if v is None else (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in r.items()}
        for r in rows
    ]
    if filter_rows:
        cleaned = _filter(req, cleaned)
    cleaned = _sort(req, cleaned)
    cleaned = _page(req, cleaned)
    if not fixed_columns:
        cleaned = _select(req, cleaned)
    fmt = listing_format(req)
    if fmt == "csv":
        return Response(200, to_csv(cleaned).encode(), "text/csv")
    if fmt == "xml":
        return Response(200, to_xml_table(cleaned, title, columns), "text/xml")
    if fmt == "html":
        return Response(200, to_html_table(cleaned, title).encode(), "text/html")
    if fmt in ("json", "jsonp"):
        return Response(200, result_set(cleaned, title, columns), "application/json")
    raise XnatRefusal(400, f"Unsupported format {fmt!r} for this listing: use json, csv, xml or html")


def _field_name(column: str) -> str:
    """``xnat:mrSessionData/date`` → ``date``; the part XNAT's listings key by."""
    return column.rsplit("/", 1)[-1]


def _lookup(row: dict[str, str], column: str) -> str | None:
    if column in row:
        return row[column]
    wanted = _field_name(column).lower()
    for key, value in row.items():
        if key.lower() == wanted:
            return value
    return None


def _filter(req: Request, rows: list[dict[str, str]]) -> list[dict[str, str]]:
    for name, values in req.multi.items():
        if name.lower() in _NOT_FILTERS or not rows:
            continue
        if all(_lookup(row, name) is None for row in rows):
            continue  # not a column of this listing: XNAT ignores it
        patterns = [p.strip() for value in values for p in value.split(",") if p.strip()]
        if not patterns:
            continue
        rows = [
            row
            for row in rows
            if any(fnmatch.fnmatchcase((_lookup(row, name) or "").lower(), p.lower()) for p in patterns)
        ]
    return rows


def _sort(req: Request, rows: list[dict[str, str]]) -> list[dict[str, str]]:
    sort_by = [c.strip() for c in req.param("sortBy").split(",") if c.strip()]
    if not sort_by:
        return rows
    descending = req.param("sortOrder").upper() == "DESC"

    def key(row: dict[str, str]) -> tuple[Any, ...]:
        parts: list[Any] = []
        for column in sort_by:
            value = _lookup(row, column) or ""
            try:
                parts.append((0, float(value), ""))
            except ValueError:
                parts.append((1, 0.0, value.lower()))
        return tuple(parts)

    return sorted(rows, key=key, reverse=descending)


def _page(req: Request, rows: list[dict[str, str]]) -> list[dict[str, str]]:
    try:
        offset = int(req.param("offset") or 0)
        limit = int(req.param("limit")) if req.param("limit") else None
    except ValueError as exc:
        raise XnatRefusal(400, f"limit and offset must be whole numbers: {exc}") from exc
    if offset < 0 or (limit is not None and limit < 0):
        raise XnatRefusal(400, "limit and offset must not be negative")
    return rows[offset:] if limit is None else rows[offset : offset + limit]


def _select(req: Request, rows: list[dict[str, str]]) -> list[dict[str, str]]:
    wanted = [c.strip() for c in req.param("columns").split(",") if c.strip()]
    if not wanted or [c.upper() for c in wanted] == ["DEFAULT"]:
        return rows
    out = []
    for row in rows:
        picked = {}
        for column in wanted:
            value = _lookup(row, column)
            picked[column] = "" if value is None else value
        if "URI" in row:  # XNAT adds the URI to every row of a column-selected listing
            picked.setdefault("URI", row["URI"])
        out.append(picked)
    return out


def _headers(rows: list[dict[str, str]]) -> list[str]:
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    return list(names)


def to_csv(rows: list[dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_headers(rows), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def to_xml_table(rows: list[dict[str, str]], title: str = "", columns: list[dict[str, str]] | None = None) -> bytes:
    """XNAT's XMLTableRepresentation: ``<ResultSet title=…><results><columns><column>…</columns>
    <rows><row><cell>…</cell></row></rows></results></ResultSet>`` (no namespace), column properties
    such as ``serverRoot`` as attributes of their ``column``."""
    headers = _headers(rows)
    properties = {c["key"]: {k: v for k, v in c.items() if k != "key"} for c in columns or []}
    root = ElementTree.Element("ResultSet", {"title": title} if title else {})
    results = ElementTree.SubElement(root, "results")
    column_list = ElementTree.SubElement(results, "columns")
    for name in headers:
        ElementTree.SubElement(column_list, "column", properties.get(name, {})).text = name
    body = ElementTree.SubElement(results, "rows")
    for row in rows:
        element = ElementTree.SubElement(body, "row")
        for name in headers:
            ElementTree.SubElement(element, "cell").text = row.get(name, "")
    return ElementTree.tostring(root)


def to_html_table(rows: list[dict[str, str]], title: str) -> str:
    headers = _headers(rows)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(row.get(h, ''))}</td>" for h in headers) + "</tr>" for row in rows
    )
    return (
        f"<html><head><title>{html.escape(title)}</title></head><body>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></body></html>"
    )


# -- single objects ----------------------------------------------------------------------------------
def item(
    xsi_type: str,
    fields: dict[str, Any],
    children: list[dict[str, Any]] | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One entry of XNAT's ``items`` JSON: meta, data_fields, children [{field, items}]."""
    return {
        "meta": {"xsi:type": xsi_type, "isHistory": False, **(meta or {})},
        "data_fields": {k: v for k, v in fields.items() if v not in (None, "")},
        "children": children or [],
    }


def object_response(req: Request, entry: dict[str, Any]) -> Response:
    fmt = (req.param("format") or "json").lower()
    if fmt == "xml":
        return Response(200, to_xml_document(entry), "text/xml")
    if fmt == "html":
        return Response(
            200,
            to_html_table([{k: str(v) for k, v in entry["data_fields"].items()}], entry["meta"]["xsi:type"]).encode(),
            "text/html",
        )
    if fmt == "json":
        return Response(200, json.dumps({"items": [entry]}).encode(), "application/json")
    raise XnatRefusal(400, f"Unsupported format {fmt!r} for this object: use json, xml or html")


# Data fields written as XML attributes (xnat.xsd declares them as attributes), the rest as elements.
_ATTRIBUTES = {
    "ID",
    "project",
    "label",
    "type",
    "UID",
    "secondary_ID",
    "version",
    "original",
    "format",
    "content",
    "tags",
    "name",
    "group",
    "src",
    "initials",
    "active",
    "image_session_ID",
    "imageSession_ID",
    "xnat_abstractresource_id",
}
_ELEMENT_ATTRIBUTES = {  # attributes only on some types (UID is an element of sessions)
    "UID": ("scandata",),
    "type": ("scandata", "reconstructedimagedata"),
}


@lru_cache(maxsize=1)
def schema_types() -> dict[str, str]:
    """xsiType as XNAT spells it (``xnat:mrSessionData``) → its global element name (``MRSession``),
    read from the schema the emulator serves."""
    path = Path(__file__).with_name("schemas") / "xnat.xsd"
    tree = ElementTree.parse(path)
    names = {}
    for element in tree.getroot().findall("{http://www.w3.org/2001/XMLSchema}element"):
        names[element.get("type", "")] = element.get("name", "")
    return names


@lru_cache(maxsize=1)
def _element_names() -> dict[str, str]:
    """xsiType (lower-case) → XNAT's global element name."""
    return {xsi_type.lower(): name for xsi_type, name in schema_types().items()}


def _is_attribute(name: str, xsi_type: str) -> bool:
    if name in _ELEMENT_ATTRIBUTES:
        return xsi_type.lower().endswith(_ELEMENT_ATTRIBUTES[name])
    return name in _ATTRIBUTES


def to_xml_document(entry: dict[str, Any]) -> bytes:
    """The XNAT XML document of an object (``?format=xml``): xnat:MRSession etc. with its children."""
    ElementTree.register_namespace("xnat", XNAT_NS)
    ElementTree.register_namespace("xsi", XSI_NS)
    xsi_type = entry["meta"]["xsi:type"]
    name = _element_names().get(xsi_type.lower()) or xsi_type.split(":")[-1]
    root = ElementTree.Element(f"{{{XNAT_NS}}}{name}")
    root.set(f"{{{XSI_NS}}}schemaLocation", f"{XNAT_NS} /xapi/schemas/xnat")
    _fill(root, entry)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ElementTree.tostring(root)


def _fill(element: ElementTree.Element, entry: dict[str, Any]) -> None:
    xsi_type = entry["meta"]["xsi:type"]
    for key, value in entry["data_fields"].items():
        if _is_attribute(key, xsi_type):
            element.set(key, str(value))
    for child in entry.get("children", []):
        path = child["field"].split("/")
        container = element
        for part in path[:-1]:
            container = ElementTree.SubElement(container, f"{{{XNAT_NS}}}{part}")
        for sub in child["items"]:
            node = ElementTree.SubElement(container, f"{{{XNAT_NS}}}{path[-1]}")
            if child["field"] == "fields/field":  # custom fields: <xnat:field name="x">value</xnat:field>
                node.set("name", str(sub["data_fields"].get("name", "")))
                node.text = str(sub["data_fields"].get("field", ""))
                continue
            node.set(f"{{{XSI_NS}}}type", sub["meta"]["xsi:type"])
            _fill(node, sub)
    for key, value in entry["data_fields"].items():
        if not _is_attribute(key, xsi_type):
            ElementTree.SubElement(element, f"{{{XNAT_NS}}}{key}").text = str(value)
