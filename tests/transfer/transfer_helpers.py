"""Synthetic DICOM for the transfer tests: the project's synth module when present, else
pydicom's CT_small test file re-stamped with fresh UIDs."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid


def write_study(
    out_dir: Path, *, series: int = 2, instances: int = 3, study_uid: str | None = None, prefix: str = "", extension: str = ""
) -> list[Path]:
    """Write one study (``series`` x ``instances`` files) under ``out_dir``; return the paths."""
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    study_uid = study_uid or generate_uid()
    paths = []
    for s in range(1, series + 1):
        series_uid = generate_uid()
        for i in range(1, instances + 1):
            ds = template.copy()
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = s
            ds.InstanceNumber = i
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            path = out_dir / f"{prefix}series{s}" / f"IM{i:04d}{extension}"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


def write_studies(out_dir: Path, *, studies: int = 1, series: int = 2, instances: int = 3) -> list[str]:
    """Several studies; returns their StudyInstanceUIDs. Uses xnat_flows.testing.synth if available."""
    try:
        from xnat_flows.testing.synth import write_studies as synth_write
    except ImportError:
        uids = []
        for n in range(studies):
            uid = generate_uid()
            write_study(out_dir, series=series, instances=instances, study_uid=uid, prefix=f"study{n}/")
            uids.append(uid)
        return uids
    manifest = synth_write(out_dir, studies=studies, series=series, instances=instances, instance_kb=16, seed=0)
    return list(manifest.study_uids)
