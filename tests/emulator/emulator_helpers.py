"""Small DICOM datasets and archive builders for the emulator tests.

Instances are pydicom's CT_small re-stamped in memory rather than ``xnat_flows.testing.synth``
files: these tests set header fields synth does not (PatientName, Modality, StudyDescription,
PatientComments per instance, a chosen SOP Instance UID, two series sharing a number) to exercise
XNAT's routing and merge rules, and want the bytes without touching the disk.
"""

from __future__ import annotations

import copy
import io
import tarfile
import zipfile
from dataclasses import dataclass
from functools import lru_cache


@lru_cache(maxsize=1)
def _template():
    import pydicom
    from pydicom.data import get_testdata_file

    return pydicom.dcmread(get_testdata_file("CT_small.dcm"))


@dataclass(frozen=True)
class Instance:
    name: str
    data: bytes
    study_uid: str
    series_uid: str
    series_number: int
    sop_instance_uid: str


def make_instance(
    study_uid: str,
    series_uid: str,
    series_number: int,
    instance_number: int,
    *,
    patient_id: str = "PAT01",
    patient_name: str = "Doe^Jane",
    modality: str = "CT",
    patient_comments: str = "",
    study_description: str = "",
    sop_uid: str | None = None,
) -> Instance:
    from pydicom.uid import generate_uid

    ds = copy.deepcopy(_template())  # Dataset.copy() is shallow: it would share elements
    sop = sop_uid or generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.SOPInstanceUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.Modality = modality
    ds.StudyDate = "20240102"
    ds.StudyTime = "101112"
    ds.SeriesDescription = f"series {series_number}"
    ds.StudyDescription = study_description
    if patient_comments:
        ds.PatientComments = patient_comments
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return Instance(
        f"s{series_number}/i{instance_number:04d}.dcm", buffer.getvalue(), study_uid, series_uid, series_number, sop
    )


def make_study(series: int = 2, instances: int = 3, **kwargs) -> list[Instance]:
    from pydicom.uid import generate_uid

    study_uid = generate_uid()
    out = []
    for series_number in range(1, series + 1):
        series_uid = generate_uid()
        out += [make_instance(study_uid, series_uid, series_number, i, **kwargs) for i in range(1, instances + 1)]
    return out


def zip_bytes(members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def tar_bytes(members: list[tuple[str, bytes]], mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def members(instances: list[Instance]) -> list[tuple[str, bytes]]:
    return [(i.name, i.data) for i in instances]
