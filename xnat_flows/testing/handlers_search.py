"""Site-wide search and users: ``POST /data/search`` (an ``xdat:search`` document), the data-type
catalogue ``/data/search/elements``, and ``/data/users``.

As xnat-web's ``SearchResource``, ``SearchElementListResource`` and ``UserListResource`` answer.
"""

from __future__ import annotations

import re
from typing import Any
from xml.etree import ElementTree

from xnat_flows.testing import readback
from xnat_flows.testing.archive_base import ArchiveBase
from xnat_flows.testing.model import is_a
from xnat_flows.testing.render import schema_types, table
from xnat_flows.testing.web import Request, Response, text

# Search (display) fields per kind of data type: (FIELD_ID, HEADER, TYPE); ``POST /data/search``
# answers each of them (``_lookup_field``). A subset of XNAT's display documents.
_FIELDS = {
    "project": [
        ("ID", "ID", "string"),
        ("SECONDARY_ID", "Secondary ID", "string"),
        ("NAME", "Title", "string"),
        ("DESCRIPTION", "Description", "string"),
        ("INSERT_DATE", "Inserted", "date"),
    ],
    "subject": [
        ("SUBJECT_ID", "Subject", "string"),
        ("SUBJECT_LABEL", "Label", "string"),
        ("PROJECT", "Project", "string"),
        ("GENDER", "Gender", "string"),
        ("INSERT_DATE", "Inserted", "date"),
    ],
    "experiment": [
        ("SESSION_ID", "Session", "string"),
        ("LABEL", "Label", "string"),
        ("PROJECT", "Project", "string"),
        ("DATE", "Date", "date"),
        ("SUBJECT_ID", "Subject", "string"),
        ("SUBJECT_LABEL", "Subject Label", "string"),
        ("MODALITY", "Modality", "string"),
        ("UID", "Study UID", "string"),
        ("INSERT_DATE", "Inserted", "date"),
    ],
}


class SearchHandlers(ArchiveBase):
    def search_elements(self, req: Request, m: re.Match[str]) -> Response:
        """The data types (xnat-web ``SearchElementListResource``: ELEMENT_NAME, SINGULAR, PLURAL,
        SECURED, COUNT; ``?used``: only those with data), or one type's search fields
        (``/data/search/elements/{type}``, ``SearchFieldListResource``)."""
        name = req.path.rstrip("/").rsplit("/", 1)[-1]
        types = self._data_types()
        if name != "elements":
            return self._search_fields(req, name, types)
        rows = [
            {"ELEMENT_NAME": t, "SINGULAR": singular, "PLURAL": plural, "SECURED": "true", "COUNT": count}
            for t, (singular, plural, count) in types.items()
            if count or "used" not in req.multi
        ]
        return table(req, rows, "Data-Types", fixed_columns=True)

    def _data_types(self) -> dict[str, tuple[str, str, int]]:
        """xsiType → (singular, plural, count) for every data type of the emulator's schema."""
        store = self.store
        counts: dict[str, int] = {
            "xnat:projectData": len(store.query("SELECT id FROM projects")),
            "xnat:subjectData": len(store.query("SELECT id FROM subjects")),
        }
        for row in store.query("SELECT xsi_type, COUNT(*) AS n FROM experiments GROUP BY xsi_type"):
            counts[row["xsi_type"]] = row["n"]
        types: dict[str, tuple[str, str, int]] = {}
        for proper, element in schema_types().items():
            xsi_type = proper.lower()
            if xsi_type.endswith(("sessiondata", "assessmentdata", "assessordata")):
                words = re.sub(r"(Session|Assessment|Assessor)$", r" \1", element).replace("Manual", " Manual")
                singular = words.strip()
            elif xsi_type in ("xnat:projectdata", "xnat:subjectdata"):
                singular = element
            else:
                continue
            types[proper] = (singular, singular + "s", counts.get(proper, 0))
        return types

    def _search_fields(self, req: Request, name: str, types: dict[str, tuple[str, str, int]]) -> Response:
        found = [t for t in types if t.lower() == name.lower()]
        if not found:
            return text(400, f"Unknown data type {name}")
        [element] = found
        kind = (
            "project" if element == "xnat:projectData" else "subject" if element == "xnat:subjectData" else "experiment"
        )
        rows = [
            {
                "FIELD_ID": field_id,
                "HEADER": header,
                "SUMMARY": header,
                "TYPE": field_type,
                "REQUIRES_VALUE": "false",
                "DESC": header,
                "ELEMENT_NAME": element,
                "SRC": "0",
                "VISIBLE": "true",
                "SEARCHABLE": "true",
                "VALUE": "",
            }
            for field_id, header, field_type in _FIELDS[kind]
        ]
        return table(req, rows, "Search Fields", fixed_columns=True)

    def saved_searches(self, req: Request, m: re.Match[str]) -> Response:
        """xnat-web ``SavedSearchListResource``: the stored searches (the emulator keeps none)."""
        return table(req, [], "Stored Searches")

    def list_users(self, req: Request, m: re.Match[str]) -> Response:
        rows = [
            {
                "login": u["username"],
                "firstname": u["username"],
                "lastname": "",
                "email": f"{u['username']}@example.org",
                "xdat_user_id": index,
                "enabled": "1",
            }
            for index, u in enumerate(self.store.query("SELECT username FROM users ORDER BY username"), start=1)
        ]
        return table(req, rows, "Users")

    def search(self, req: Request, m: re.Match[str]) -> Response:
        """POST /data/search with an xdat:search (or xdat:bundle) document: rows of its root element."""
        raw = req.body.read(5 * 1024 * 1024)
        try:
            document = ElementTree.fromstring(raw)
        except ElementTree.ParseError as exc:
            return text(400, f"Malformed search document: {exc}")
        ns = {"xdat": "http://nrg.wustl.edu/security"}
        root_element = (document.findtext("xdat:root_element_name", "", ns) or "").strip()
        if not root_element:
            return text(400, "The search document names no xdat:root_element_name")
        rows = self._search_rows(root_element)
        for criteria in document.iter("{http://nrg.wustl.edu/security}criteria"):
            field = (criteria.findtext("xdat:schema_field", "", ns) or "").strip()
            comparison = (criteria.findtext("xdat:comparison_type", "=", ns) or "=").strip().upper()
            value = (criteria.findtext("xdat:value", "", ns) or "").strip()
            rows = [r for r in rows if _compare(_lookup_field(r, field), comparison, value)]
        fields = []
        for search_field in document.findall("xdat:search_field", ns):
            element = (search_field.findtext("xdat:element_name", "", ns) or "").strip()
            field_id = (search_field.findtext("xdat:field_ID", "", ns) or "").strip()
            fields.append((element, field_id))
        if fields:
            picked = []
            for row in rows:
                out = {}
                for element, field_id in fields:
                    key = (
                        field_id.lower()
                        if element.lower() == root_element.lower()
                        else (f"{element.replace(':', '_')}_{field_id}".lower())
                    )
                    out[key] = _lookup_field(row, field_id) or ""
                picked.append(out)
            rows = picked
        return table(req, rows, "Search", filter_rows=False)

    def _search_rows(self, element: str) -> list[dict[str, Any]]:
        store = self.store
        lowered = element.lower()
        if lowered == "xnat:projectdata":
            return [readback.project_row(p) for p in store.query("SELECT * FROM projects ORDER BY id")]
        if lowered == "xnat:subjectdata":
            return [self.subject_row(s, s["project"]) for s in store.query("SELECT * FROM subjects ORDER BY id")]
        if is_a(element, "xnat:imagescandata") or lowered.endswith("scandata"):
            rows = []
            for scan in store.query("SELECT * FROM scans ORDER BY experiment_id, rowid"):
                if is_a(scan["xsi_type"], element):
                    rows.append(
                        {**readback.scan_row(scan["experiment_id"], scan), "image_session_ID": scan["experiment_id"]}
                    )
            return rows
        return [
            self.experiment_row(e, e["project"])
            for e in store.query("SELECT * FROM experiments ORDER BY id")
            if is_a(e["xsi_type"], element)
        ]


def _lookup_field(row: dict[str, Any], field: str) -> str | None:
    """A search field (``LABEL``, ``xnat:mrSessionData/label``, ``xnat:mrSessionData.PROJECT``) of a row."""
    name = re.split(r"[/.]", field)[-1].lower()
    # Display-field IDs (``_FIELDS``) → the row keys that hold them, first found wins.
    aliases = {
        "subject_label": ("subject_label", "label"),
        "subject_id": ("subject_ID", "ID"),
        "session_id": ("ID",),
        "expt_id": ("ID",),
        "gender": ("gender",),
    }
    lowered = {key.lower(): value for key, value in row.items()}
    for key in aliases.get(name, (name,)):
        if key.lower() in lowered:
            value = lowered[key.lower()]
            return "" if value is None else str(value)
    return None


def _compare(actual: str | None, comparison: str, expected: str) -> bool:
    if actual is None:
        return False
    if comparison == "LIKE":
        import fnmatch

        return fnmatch.fnmatchcase(actual.lower(), expected.replace("%", "*").lower())
    if comparison in ("=", "EQUALS"):
        return actual == expected
    if comparison in ("!=", "<>"):
        return actual != expected
    try:
        left, right = float(actual), float(expected)
    except ValueError:
        left, right = actual, expected  # type: ignore[assignment]
    return {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}.get(comparison, False)
