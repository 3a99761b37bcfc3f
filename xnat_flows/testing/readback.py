"""JSON representations XNAT uses for listings (ResultSet, all values strings) and single objects (items)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from xnat_flows.testing.state import AUTOARCHIVE_NAMES, PrearcRow, Store


def result_set(rows: list[dict[str, Any]], title: str = "", columns: list[dict[str, str]] | None = None) -> bytes:
    """XFTTable JSON: every cell a string, null as "" (spec §1.2)."""
    cleaned = [{k: "" if v is None else (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in r.items()}
               for r in rows]
    body: dict[str, Any] = {"Result": cleaned, "totalRecords": str(len(cleaned))}
    if title:
        body["title"] = title
    if columns is not None:
        body["Columns"] = columns
    return json.dumps({"ResultSet": body}).encode()


def project_row(project: sqlite3.Row) -> dict[str, Any]:
    return {
        "ID": project["id"], "secondary_ID": project["id"], "name": project["name"] or project["id"],
        "description": project["description"] or "", "pi_firstname": "", "pi_lastname": "",
        "URI": f"/data/projects/{project['id']}",
    }


def subject_row(subject: sqlite3.Row) -> dict[str, Any]:
    return {
        "ID": subject["id"], "label": subject["label"], "project": subject["project"],
        "URI": f"/data/subjects/{subject['id']}", "insert_date": subject["insert_date"], "insert_user": "admin",
    }


def experiment_row(store: Store, experiment: sqlite3.Row) -> dict[str, Any]:
    subject = store.subject(experiment["subject_id"])
    return {
        "ID": experiment["id"], "URI": f"/data/experiments/{experiment['id']}", "date": experiment["date"],
        "insert_date": experiment["insert_date"], "label": experiment["label"], "project": experiment["project"],
        "xsiType": experiment["xsi_type"], "subject_ID": experiment["subject_id"],
        "subject_label": subject["label"] if subject else "", "UID": experiment["uid"],
        "modality": experiment["modality"],
    }


def scan_row(experiment_id: str, scan: sqlite3.Row) -> dict[str, Any]:
    return {
        "ID": scan["scan_id"], "type": scan["type"], "series_description": scan["series_description"],
        "quality": "usable", "xsiType": scan["xsi_type"], "xnat_imagescandata_id": f"{experiment_id}:{scan['scan_id']}",
        # No UID column: XNAT's scan listing has none (the session document carries each scan's UID).
        "note": "", "URI": f"/data/experiments/{experiment_id}/scans/{scan['scan_id']}",
    }


def resource_row(store: Store, resource: sqlite3.Row) -> dict[str, Any]:
    files = store.files(resource["id"])
    scan_id = resource["scan_id"]
    return {
        "xnat_abstractresource_id": resource["id"], "label": resource["label"],
        "element_name": "xnat:resourceCatalog", "category": "scans" if scan_id else "resources",
        "cat_id": scan_id or resource["experiment_id"], "cat_desc": "", "format": resource["format"] or "",
        "content": resource["content"] or "", "tags": resource["tags"] or "", "file_count": len(files),
        "file_size": sum(f["size"] or 0 for f in files),
    }


def resource_base_uri(resource: sqlite3.Row) -> str:
    scan_part = f"/scans/{resource['scan_id']}" if resource["scan_id"] else ""
    return f"/data/experiments/{resource['experiment_id']}{scan_part}/resources/{resource['label']}"


def file_rows(store: Store, resource: sqlite3.Row) -> list[dict[str, Any]]:
    base = resource_base_uri(resource)
    return [
        {
            "Name": f["path"].rsplit("/", 1)[-1], "Size": f["size"], "URI": f"{base}/files/{f['path']}",
            "collection": resource["label"], "file_tags": "", "file_format": resource["format"] or "",
            "file_content": resource["content"] or "", "cat_ID": resource["id"], "digest": f["md5"],
            "path": f["path"],
        }
        for f in store.files(resource["id"])
    ]


FILE_COLUMNS = [{"key": "URI", "serverRoot": ""}]


def experiment_items(store: Store, experiment: sqlite3.Row) -> bytes:
    """The `items` document of one experiment, with scans and their resources as children (spec §1.2)."""
    scans = store.query("SELECT * FROM scans WHERE experiment_id = ? ORDER BY rowid", (experiment["id"],))
    scan_items = []
    for scan in scans:
        resources = store.query(
            "SELECT * FROM resources WHERE experiment_id = ? AND scan_id = ? ORDER BY id", (experiment["id"], scan["scan_id"])
        )
        scan_items.append({
            "meta": {"xsi:type": scan["xsi_type"], "isHistory": False},
            "data_fields": {"ID": scan["scan_id"], "type": scan["type"], "UID": scan["series_uid"],
                            "series_description": scan["series_description"], "quality": "usable",
                            "image_session_ID": experiment["id"], "modality": scan["modality"],
                            "xnat_imagescandata_id": f"{experiment['id']}:{scan['scan_id']}"},
            "children": [{"field": "file", "items": [_resource_item(store, r) for r in resources]}] if resources else [],
        })
    session_resources = store.query(
        "SELECT * FROM resources WHERE experiment_id = ? AND scan_id = '' ORDER BY id", (experiment["id"],)
    )
    children = []
    if scan_items:
        children.append({"field": "scans/scan", "items": scan_items})
    if session_resources:
        children.append({"field": "resources/resource", "items": [_resource_item(store, r) for r in session_resources]})
    item = {
        "meta": {"create_event_id": 1, "xsi:type": experiment["xsi_type"], "isHistory": False,
                 "start_date": experiment["insert_date"]},
        "data_fields": {"ID": experiment["id"], "label": experiment["label"], "project": experiment["project"],
                        "subject_ID": experiment["subject_id"], "UID": experiment["uid"],
                        "date": experiment["date"], "time": experiment["time"], "modality": experiment["modality"],
                        "id": experiment["id"]},
        "children": children,
    }
    return json.dumps({"items": [item]}).encode()


def resource_items(store: Store, resource: sqlite3.Row) -> bytes:
    return json.dumps({"items": [_resource_item(store, resource)]}).encode()


def _resource_item(store: Store, resource: sqlite3.Row) -> dict[str, Any]:
    files = store.files(resource["id"])
    return {
        "meta": {"xsi:type": "xnat:resourceCatalog", "isHistory": False},
        "data_fields": {"label": resource["label"], "format": resource["format"] or "",
                        "content": resource["content"] or "", "file_count": len(files),
                        "file_size": sum(f["size"] or 0 for f in files),
                        "xnat_abstractresource_id": resource["id"]},
        "children": [],
    }


def simple_items(xsi_type: str, fields: dict[str, Any]) -> bytes:
    return json.dumps({"items": [{"meta": {"xsi:type": xsi_type, "isHistory": False},
                                  "data_fields": fields, "children": []}]}).encode()


def prearchive_row(store: Store, row: PrearcRow) -> dict[str, Any]:
    project = store.project(row.project)
    autoarchive = AUTOARCHIVE_NAMES.get(project["prearchive_code"], "") if project is not None else ""
    return {
        "project": row.project, "timestamp": row.timestamp, "lastmod": _lastmod_text(row.lastmod),
        "uploaded": row.uploaded, "scan_date": row.scan_date, "scan_time": row.scan_time, "subject": row.subject,
        "folderName": row.folder, "name": row.name, "tag": row.tag, "status": row.status, "url": row.url,
        "autoarchive": autoarchive, "prevent_anon": row.params.get("prevent_anon", "false"),
        "prevent_auto_commit": row.params.get("prevent_auto_commit", "false"), "SOURCE": row.params.get("SOURCE", ""),
        "VISIT": row.params.get("VISIT", ""), "PROTOCOL": row.params.get("PROTOCOL", ""),
        "TIMEZONE": row.params.get("TIMEZONE", ""),
    }


def _lastmod_text(epoch: float) -> str:
    import datetime as dt

    stamp = dt.datetime.fromtimestamp(epoch)
    return stamp.strftime("%Y-%m-%d %H:%M:%S.") + str(stamp.microsecond // 100000)
