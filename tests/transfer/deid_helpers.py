"""A stand-in de-identifier for the transport tests: what the transports need of an anonymizer
(``transfer.deidentify.Anonymizer``: ``digest``, ``apply_bytes``), with rules simple enough that a
test can state the expected result. The DicomEdit engine's own tests live under tests/anon."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping

import pydicom

from xnat_flows.anon import AnonError

REFUSE_MARK = "CANNOT-DEIDENTIFY"  # a file whose PatientComments hold this is refused


def hashed_uid(uid: str) -> str:
    return "2.25." + str(int(hashlib.sha256(uid.encode()).hexdigest()[:30], 16))


class HashingAnonymizer:
    """PatientName := subject, PatientID := session, StudyDescription := project, birth date
    removed, study/series/SOP UIDs hashed; ``AnonError`` for a file marked ``REFUSE_MARK``."""

    def __init__(self, tag: str = "v1") -> None:
        self.digest = hashlib.sha256(f"hashing-anonymizer-{tag}".encode()).hexdigest()
        self.applied = 0

    def apply_bytes(self, part10: bytes, variables: Mapping[str, str] | None = None) -> bytes:
        self.applied += 1
        variables = variables or {}
        ds = pydicom.dcmread(io.BytesIO(part10))
        if REFUSE_MARK in str(ds.get("PatientComments", "")):
            raise AnonError("marked as impossible to de-identify")
        ds.PatientName = variables["subject"]
        ds.PatientID = variables["session"]
        ds.StudyDescription = variables["project"]
        if "PatientBirthDate" in ds:
            del ds.PatientBirthDate
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            setattr(ds, keyword, hashed_uid(str(getattr(ds, keyword))))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()


class StreamingHashingAnonymizer(HashingAnonymizer):
    """``HashingAnonymizer`` declaring what it does: its StudyInstanceUID is hashUID of the original
    alone (``anon.Anonymizer.study_uid_follows_original``), so a DICOM-zip upload rewrites a session
    batch by batch as it is sent (``transfer.deidentify.StreamedDeidentification``)."""

    study_uid_follows_original = True


def mark_refused(path) -> None:
    ds = pydicom.dcmread(path)
    ds.PatientComments = REFUSE_MARK
    ds.save_as(path, enforce_file_format=True)


def tree_hashes(root) -> dict[str, str]:
    """sha256 of every file under ``root``: the originals before and after an upload."""
    from pathlib import Path

    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(root).rglob("*"))
        if p.is_file()
    }
