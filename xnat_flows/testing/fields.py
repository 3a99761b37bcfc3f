"""Object metadata a PUT sets: xpaths and XNAT's REST shortcuts in the query string, and stored
field paths turned back into an ``items`` document's fields and children.

As the XNAT wiki pages "XNAT REST XML Path Shortcuts" and "REST Enhanced Listing Options"
describe them (xnat-web ``SecureResource.loadParams``/``XMLPathShortcuts``).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from xnat_flows.testing.prearchive import XnatRefusal
from xnat_flows.testing.render import item

# XNAT REST XML path shortcuts (wiki "XNAT REST XML Path Shortcuts"): query names → field paths.
SHORTCUTS: dict[str, dict[str, str]] = {
    "subject": {
        "gender": "demographics/gender",
        "handedness": "demographics/handedness",
        "dob": "demographics/dob",
        "yob": "demographics/yob",
        "age": "demographics/age",
        "education": "demographics/education",
        "race": "demographics/race",
        "ethnicity": "demographics/ethnicity",
        "weight": "demographics/weight",
        "height": "demographics/height",
        "group": "group",
        "src": "src",
        "pi_firstname": "",
        "label": "label",
    },
    "experiment": {
        "date": "date",
        "time": "time",
        "visit_id": "visit_id",
        "note": "note",
        "label": "label",
        "acquisition_site": "acquisition_site",
        "scanner": "scanner",
        "operator": "operator",
        "dcmaccessionnumber": "dcmAccessionNumber",
        "dcmpatientid": "dcmPatientId",
        "dcmpatientname": "dcmPatientName",
        "session_type": "session_type",
        "modality": "modality",
    },
    "scan": {
        "type": "type",
        "quality": "quality",
        "note": "note",
        "series_description": "series_description",
        "condition": "condition",
        "documentation": "documentation",
        "scanner": "scanner",
        "modality": "modality",
        "frames": "frames",
        "uid": "UID",
    },
    "project": {
        "name": "name",
        "description": "description",
        "keywords": "keywords",
        "secondary_id": "secondary_ID",
        "alias": "aliases/alias",
        "pi_firstname": "PI/firstname",
        "pi_lastname": "PI/lastname",
    },
}
SHORTCUTS["assessor"] = SHORTCUTS["experiment"]
SHORTCUTS["reconstruction"] = {"type": "type", "baseScanType": "baseScanType"}

_XPATH = re.compile(r"^(?P<type>[A-Za-z][\w-]*:[A-Za-z]\w*)/(?P<path>.+)$")
_FIELD = re.compile(r"^fields/field\[name=(?P<name>[^\]]+)\]/field$")
_TYPED_STEP = re.compile(r"\[@xsi:type=[^\]]*\]")
# Fields kept in table columns rather than as attributes.
COLUMNS = {
    "experiment": {"date", "time", "label", "modality", "UID"},
    "assessor": {"date", "time", "label"},
    "scan": {"type", "series_description", "UID", "modality"},
    "subject": {"label"},
    "project": {"name", "description"},
    "reconstruction": {"type"},
}

Fields = tuple[dict[str, str], dict[str, str]]


def parse_fields(params: dict[str, str], kind: str) -> Fields:
    """The fields a PUT sets, checked before anything is written: ``?xnat:mrSessionData/date=…``,
    XNAT's shortcuts (``?date=…``), ``…/fields/field[name=x]/field=…``. Returns (columns, attributes);
    every field named is stored and read back, nothing is acknowledged and dropped."""
    shortcuts = SHORTCUTS.get(kind, {})
    values: dict[str, str] = {}
    for key, value in params.items():
        match = _XPATH.match(key)
        if match:
            path = _TYPED_STEP.sub("", match["path"])
        elif key.lower() in shortcuts:
            path = shortcuts[key.lower()]
        else:
            continue
        if path:
            values[path] = value
    return split_values(values, kind)


def split_values(values: dict[str, str], kind: str) -> Fields:
    """Field paths and values → (table columns, attributes), dates and times checked."""
    columns = {k: ("" if v == "NULL" else v) for k, v in values.items() if k in COLUMNS.get(kind, set())}
    if columns.get("date"):
        columns["date"] = xs_date(columns["date"])
    if columns.get("time"):
        columns["time"] = xs_time(columns["time"])
    attrs = {}
    for path, value in values.items():
        if path in columns or path == "ID":
            continue
        custom = _FIELD.match(path)
        if "[" in path and not custom:
            raise XnatRefusal(400, f"Unsupported field path {path!r}")
        attrs[f"fields/{custom['name']}" if custom else path] = value
    return columns, attrs


def xs_date(value: str) -> str:
    """A date as XNAT stores it (xs:date, YYYY-MM-DD) from the spellings it accepts; 400 for anything else."""
    for spelling in ("%Y-%m-%d", "%m/%d/%Y", "%Y%m%d"):
        try:
            return dt.datetime.strptime(value.strip(), spelling).date().isoformat()
        except ValueError:
            continue
    raise XnatRefusal(400, f"Invalid date {value!r}: use YYYY-MM-DD")


def xs_time(value: str) -> str:
    for spelling in ("%H:%M:%S", "%H:%M", "%H%M%S", "%H:%M:%S.%f"):
        try:
            return dt.datetime.strptime(value.strip(), spelling).time().isoformat(timespec="seconds")
        except ValueError:
            continue
    raise XnatRefusal(400, f"Invalid time {value!r}: use HH:MM:SS")


def split_attrs(attrs: dict[str, str]) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Stored field paths → top-level data fields and children (custom fields, demographics, PI…)."""
    fields: dict[str, str] = {}
    custom: list[dict[str, Any]] = []
    nested: dict[str, dict[str, str]] = {}
    for path, value in attrs.items():
        if path.startswith("fields/"):
            custom.append(item("xnat:fieldDefinitionGroup_field", {"name": path[len("fields/") :], "field": value}))
        elif "/" in path:
            head, tail = path.split("/", 1)
            nested.setdefault(head, {})[tail.replace("/", "_")] = value
        else:
            fields[path] = value
    children = [{"field": "fields/field", "items": custom}] if custom else []
    child_types = {
        "demographics": "xnat:demographicData",
        "PI": "xnat:investigatorData",
        "investigator": "xnat:investigatorData",
    }
    for head, values in nested.items():
        children.append({"field": head, "items": [item(child_types.get(head, "xnat:" + head), values)]})
    return fields, children


# Parts of an XML document that are objects of their own (created through their own URIs), and
# attributes that name the object rather than set a field.
_CHILD_COLLECTIONS = {
    "scans",
    "sharing",
    "resources",
    "experiments",
    "assessors",
    "reconstructions",
    "out",
    "in",
    "file",
}
_IDENTITY = {"ID", "project", "subject_ID", "image_session_ID", "imageSession_ID", "version", "original"}
_XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"


def document_fields(raw: bytes, element_types: dict[str, str]) -> tuple[str, dict[str, str], dict[str, str]]:
    """An XNAT XML document in a PUT/POST body (``<xnat:Subject>``, ``<xnat:MRSession>``…), as
    xnat-web's ``SecureResource.loadItem`` reads it: (xsiType, field paths → values, identity
    attributes such as ID/project/subject_ID). ``element_types``: element name (lower case) → xsiType.
    422 for a body that is not well-formed XML."""
    from xml.etree import ElementTree

    try:
        root = ElementTree.fromstring(raw)
    except ElementTree.ParseError as exc:
        raise XnatRefusal(422, f"Malformed XML document in the request body: {exc}") from exc  # SAXParseException
    local = root.tag.rsplit("}", 1)[-1]
    xsi_type = root.get(_XSI_TYPE) or element_types.get(local.lower(), "")
    values: dict[str, str] = {}
    identity: dict[str, str] = {}
    for name, value in root.attrib.items():
        if name.startswith("{"):
            continue
        (identity if name in _IDENTITY else values)[name] = value

    def walk(element: Any, prefix: str) -> None:
        for child in element:
            name = child.tag.rsplit("}", 1)[-1]
            if not prefix and name in _CHILD_COLLECTIONS:
                continue
            if name == "field" and child.get("name") is not None:  # custom fields
                values[f"{prefix}field[name={child.get('name')}]/field"] = (child.text or "").strip()
                continue
            path = f"{prefix}{name}"
            if len(child):
                walk(child, path + "/")
            elif not prefix and name in _IDENTITY:
                identity[name] = (child.text or "").strip()
            else:
                values[path] = (child.text or "").strip()

    walk(root, "")
    return xsi_type, values, identity


def is_xml_body(content_type: str, head: bytes) -> bool:
    return content_type in ("text/xml", "application/xml") or head.lstrip()[:1] == b"<"
