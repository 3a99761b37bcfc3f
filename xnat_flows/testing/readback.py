"""Rows of XNAT's listings (ResultSet JSON, every value a string) shared by the archive and prearchive handlers."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from xnat_flows.testing.state import AUTOARCHIVE_NAMES, PrearcRow, Store


def result_set(rows: list[dict[str, Any]], title: str = "", columns: list[dict[str, str]] | None = None) -> bytes:
    """XFTTable JSON: every cell a string, null as "" (xnat-web's XFTTable JSON representation)."""
    cleaned = [
        {k: "" if v is None else (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in r.items()}
        for r in rows
    ]
    body: dict[str, Any] = {"Result": cleaned, "totalRecords": str(len(cleaned))}
    if title:
        body["title"] = title
    if columns is not None:
        body["Columns"] = columns
    return json.dumps({"ResultSet": body}).encode()


def project_row(project: sqlite3.Row) -> dict[str, Any]:
    return {
        "ID": project["id"],
        "secondary_ID": project["id"],
        "name": project["name"] or project["id"],
        "description": project["description"] or "",
        "pi_firstname": "",
        "pi_lastname": "",
        "URI": f"/data/projects/{project['id']}",
    }


def scan_row(experiment_id: str, scan: sqlite3.Row) -> dict[str, Any]:
    return {
        "ID": scan["scan_id"],
        "type": scan["type"],
        "series_description": scan["series_description"],
        "quality": "usable",
        "xsiType": scan["xsi_type"],
        "xnat_imagescandata_id": f"{experiment_id}:{scan['scan_id']}",
        # No UID column: XNAT's scan listing has none (the session document carries each scan's UID).
        "note": "",
        "URI": f"/data/experiments/{experiment_id}/scans/{scan['scan_id']}",
    }


FILE_COLUMNS = [{"key": "URI", "serverRoot": ""}]


def prearchive_row(store: Store, row: PrearcRow) -> dict[str, Any]:
    project = store.project(row.project)
    autoarchive = AUTOARCHIVE_NAMES.get(project["prearchive_code"], "") if project is not None else ""
    return {
        "project": row.project,
        "timestamp": row.timestamp,
        "lastmod": _lastmod_text(row.lastmod),
        "uploaded": row.uploaded,
        "scan_date": row.scan_date,
        "scan_time": row.scan_time,
        "subject": row.subject,
        "folderName": row.folder,
        "name": row.name,
        "tag": row.tag,
        "status": row.status,
        "url": row.url,
        "autoarchive": autoarchive,
        "prevent_anon": row.params.get("prevent_anon", "false"),
        "prevent_auto_commit": row.params.get("prevent_auto_commit", "false"),
        "SOURCE": row.params.get("SOURCE", ""),
        "VISIT": row.params.get("VISIT", ""),
        "PROTOCOL": row.params.get("PROTOCOL", ""),
        "TIMEZONE": row.params.get("TIMEZONE", ""),
    }


def _lastmod_text(epoch: float) -> str:
    import datetime as dt

    stamp = dt.datetime.fromtimestamp(epoch)
    return stamp.strftime("%Y-%m-%d %H:%M:%S.") + str(stamp.microsecond // 100000)
