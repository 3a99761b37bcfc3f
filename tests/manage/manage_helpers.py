"""Canned XNAT answers for the scripted (MockTransport) tests, and an emulator with manual archiving for
the prearchive and resource tests (fixtures ``manual_xnat`` and ``client``, imported by the conftests of
tests/client and tests/manage)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest


def result_set(*rows: dict[str, str]) -> dict:
    return {"ResultSet": {"Result": list(rows), "totalRecords": str(len(rows))}}


def prearchive_row(status: str = "READY", **overrides: str) -> dict[str, str]:
    row = {
        "project": "P",
        "timestamp": "20240115_120000123",
        "name": "S1",
        "folderName": "S1",
        "subject": "SUB1",
        "status": status,
        "scan_date": "2024-01-15",
        "url": "/prearchive/projects/P/20240115_120000123/S1",
        "tag": "1.2.3",
        "lastmod": "2024-01-15 12:00:00.0",
    }
    row.update(overrides)
    return row


def experiment_document(experiment_id: str = "XNAT_E00001", label: str = "S1", uid: str = "1.2.3") -> dict:
    fields = {"ID": experiment_id, "label": label, "project": "P", "subject_ID": "XNAT_S00001", "UID": uid}
    return {"items": [{"data_fields": fields}]}


# ------------------------------------------------------------------------- data for the emulator


def dicom_zip(*, series: int = 2, instances: int = 2) -> bytes:
    """An in-memory zip of one small CT study with fresh UIDs (``xnat_flows.testing.synth``)."""
    import io
    import secrets
    import tempfile
    import zipfile
    from pathlib import Path

    from xnat_flows.testing.synth import write_studies

    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory() as folder, zipfile.ZipFile(buffer, "w") as archive:
        manifest = write_studies(
            Path(folder),
            series=series,
            instances=series * instances,
            instance_kb=4,
            modality="CT",
            seed=secrets.randbelow(1 << 30),
        )
        for item in manifest.files:
            archive.write(item.path, item.path.relative_to(folder).as_posix())
    return buffer.getvalue()


def import_study(
    client, project: str, label: str, *, subject: str = "SUB1", commit: bool = True, body: bytes | None = None
) -> None:
    """Import a study into ``project``'s prearchive.

    ``commit`` builds it at once (status READY, or a forced CONFLICT/ERROR); without it the
    session stays RECEIVING until the emulator's idle rebuilder runs (and, on an auto-archive
    project, archives it).
    """
    from xnat_flows.client.errors import XnatError

    params = {
        "import-handler": "DICOM-zip",
        "inbody": "true",
        "PROJECT_ID": project,
        "SUBJECT_ID": subject,
        "EXPT_LABEL": label,
    }
    if commit:
        params["dest"] = f"/prearchive/projects/{project}"
    # A forced CONFLICT/ERROR build answers 400, but the session is in the prearchive.
    with contextlib.suppress(XnatError):
        client.request(
            "POST",
            "/data/services/import",
            params=params,
            content=body or dicom_zip(),
            headers={"Content-Type": "application/zip"},
            retry=False,  # a forced failure must not be re-sent: the retry would stage a second row
        )


def stage_session(client, project: str, label: str, **options):
    """``import_study`` into a manual project, then return the session's prearchive row."""
    from xnat_flows.client.prearchive import list_sessions

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


@pytest.fixture
def manual_xnat(xnat_emulator: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The emulator with project TEST on prearchive code 0 (sessions stay in the prearchive) and a
    project OTHER to move sessions to; XNAT_* variables point flows and the CLI at it."""
    with emulator_client(xnat_emulator) as client:
        client.request("PUT", "/data/projects/OTHER")
        client.request("PUT", "/data/projects/OTHER/prearchive_code/0")
        client.request("PUT", "/data/projects/TEST/prearchive_code/0")
    monkeypatch.setenv("XNAT_URL", xnat_emulator.url)
    monkeypatch.setenv("XNAT_USER", "admin")
    monkeypatch.setenv("XNAT_PASS", "admin")
    return xnat_emulator


@pytest.fixture
def client(manual_xnat: Any) -> Iterator[Any]:
    """A client logged in to ``manual_xnat`` as admin."""
    with emulator_client(manual_xnat) as xnat:
        yield xnat
