"""File names whose bytes are not UTF-8 (an export written under another locale) go through
every transport: the scanner gives them a UTF-8 ``relpath`` and keeps the real ``path``."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
import pytest

from xnat_flows.testing.scp import EmulatorDicomScp
from xnat_flows.testing.synth import write_studies
from xnat_flows.transfer.archive_stream import iter_archive
from xnat_flows.transfer.journal import UploadJournal, content_digest
from xnat_flows.transfer.scan import scan_directory


def _export_with_latin1_names(root: Path) -> int:
    manifest = write_studies(root, series=1, instances=4, instance_kb=4, seed=31)
    for index, item in enumerate(manifest.files[:2]):
        os.rename(item.path, os.fsdecode(os.fsencode(item.path.parent) + b"/IRM-\xe9t\xe9" + bytes([48 + index])))
    return len(manifest.files)


@pytest.mark.parametrize("headers", ["full", "file-meta"])
def test_undecodable_names_get_an_escaped_relpath_and_a_real_path(tmp_path: Path, headers: str) -> None:
    count = _export_with_latin1_names(tmp_path)
    result = scan_directory(tmp_path, headers=headers)
    assert len(result.files) == count
    odd = [f for f in result.files if "IRM-" in f.relpath]
    assert len(odd) == 2 and all(f.relpath.endswith("IRM-\\xe9t\\xe9" + str(i)) for i, f in enumerate(odd))
    assert all(f.relpath.encode("utf-8") and f.path.exists() for f in result.files)
    content_digest(result.files)  # raised UnicodeEncodeError before
    for fmt in ("tar", "zip"):
        assert sum(len(chunk) for chunk in iter_archive(result.files, fmt)) > result.total_bytes


def test_undecodable_names_are_sent_by_c_store(tmp_path: Path) -> None:
    from xnat_flows.transfer.cstore.resume import store_instances_resumable

    count = _export_with_latin1_names(tmp_path / "export")
    stored: list[str] = []

    def importer(part10: bytes, calling_aet: str) -> str:
        stored.append(pydicom.dcmread(pydicom.filebase.DicomBytesIO(part10), stop_before_pixels=True).SOPInstanceUID)
        return "/prearchive/x"

    scan = scan_directory(tmp_path / "export", headers="file-meta")
    with EmulatorDicomScp(importer, ae_title="XNAT") as receiver:
        send = store_instances_resumable(
            scan.files,
            UploadJournal(tmp_path / "journal"),
            host="127.0.0.1",
            port=receiver.port,
            called_aet="XNAT",
            workers=2,
        )
    assert send.ok and send.resumed == 0
    assert sorted(stored) == sorted(f.sop_instance_uid for f in scan.files) and len(stored) == count
