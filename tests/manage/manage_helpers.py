"""Canned XNAT answers shared by the scripted (MockTransport) tests."""

from __future__ import annotations

import contextlib


def result_set(*rows: dict[str, str]) -> dict:
    return {"ResultSet": {"Result": list(rows), "totalRecords": str(len(rows))}}


def prearchive_row(status: str = "READY", **overrides: str) -> dict[str, str]:
    row = {
        "project": "P", "timestamp": "20240115_120000123", "name": "S1", "folderName": "S1", "subject": "SUB1",
        "status": status, "scan_date": "2024-01-15", "url": "/prearchive/projects/P/20240115_120000123/S1",
        "tag": "1.2.3", "lastmod": "2024-01-15 12:00:00.0",
    }
    row.update(overrides)
    return row


def experiment_document(experiment_id: str = "XNAT_E00001", label: str = "S1", uid: str = "1.2.3") -> dict:
    fields = {"ID": experiment_id, "label": label, "project": "P", "subject_ID": "XNAT_S00001", "UID": uid}
    return {"items": [{"data_fields": fields}]}


# ------------------------------------------------------------------------- data for the emulator


def dicom_zip(*, series: int = 2, instances: int = 2, study_uid: str | None = None) -> bytes:
    """An in-memory zip of one small CT study (pydicom's CT_small re-stamped with fresh UIDs)."""
    import io
    import zipfile

    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    study_uid = study_uid or generate_uid()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for s in range(1, series + 1):
            series_uid = generate_uid()
            for i in range(1, instances + 1):
                ds = template.copy()
                ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = study_uid, series_uid, s, i
                ds.SOPInstanceUID = generate_uid()
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                member = io.BytesIO()
                ds.save_as(member, enforce_file_format=True)
                archive.writestr(f"series{s}/IM{i:04d}", member.getvalue())
    return buffer.getvalue()


def import_study(client, project: str, label: str, *, subject: str = "SUB1", commit: bool = True, body: bytes | None = None) -> None:
    """Import a study into ``project``'s prearchive.

    ``commit`` builds it at once (status READY, or a forced CONFLICT/ERROR); without it the
    session stays RECEIVING until the emulator's idle rebuilder runs (and, on an auto-archive
    project, archives it).
    """
    from xnat_flows.client.errors import XnatError

    params = {"import-handler": "DICOM-zip", "inbody": "true", "PROJECT_ID": project, "SUBJECT_ID": subject, "EXPT_LABEL": label}
    if commit:
        params["dest"] = f"/prearchive/projects/{project}"
    # A forced CONFLICT/ERROR build answers 400, but the session is in the prearchive.
    with contextlib.suppress(XnatError):
        client.request(
            "POST", "/data/services/import", params=params, content=body or dicom_zip(), headers={"Content-Type": "application/zip"},
            retry=False,  # a forced failure must not be re-sent: the retry would stage a second row
        )


def stage_session(client, project: str, label: str, **options):
    """``import_study`` into a manual project, then return the session's prearchive row."""
    from xnat_flows.manage.prearchive import list_sessions

    import_study(client, project, label, **options)
    (row,) = [s for s in list_sessions(client, project) if s.name == label]
    return row


def archive_directly(client, project: str, subject: str, label: str) -> str:
    """Import a study straight into the archive; return its experiment accession ID."""
    response = client.request(
        "POST",
        "/data/services/import",
        params={
            "import-handler": "DICOM-zip",
            "inbody": "true",
            "dest": f"/archive/projects/{project}/subjects/{subject}/experiments/{label}",
        },
        content=dicom_zip(),
        headers={"Content-Type": "application/zip"},
    )
    return response.text.strip().rstrip("/").rsplit("/", 1)[-1]


def emulator_client(xnat):
    """A client logged in to the emulator as admin (no token cache, retries without sleeping)."""
    from xnat_flows.client.client import XnatClient
    from xnat_flows.client.credentials import resolve_credentials
    from xnat_flows.client.retry import RetryPolicy

    credentials = resolve_credentials(url=xnat.url, username="admin", password="admin", prompt=False)
    return XnatClient(credentials, token_cache=None, retry=RetryPolicy(sleep=lambda s: None))
