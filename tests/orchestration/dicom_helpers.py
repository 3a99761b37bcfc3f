"""Small DICOM studies with chosen routing fields (PatientID, StudyDate) for the inbox tests."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid


def write_session(
    folder: Path, *, patient_id: str = "P001", study_date: str = "20240115", series: int = 2, instances: int = 2
) -> list[Path]:
    """One study (``series`` x ``instances`` extensionless files) under ``folder``, from pydicom's CT_small."""
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    study_uid = generate_uid()
    paths = []
    for s in range(1, series + 1):
        series_uid = generate_uid()
        for i in range(1, instances + 1):
            ds = template.copy()
            ds.PatientID = patient_id
            ds.StudyDate = study_date
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = s
            ds.InstanceNumber = i
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            path = folder / f"series{s}" / f"IM{i:04d}"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths
