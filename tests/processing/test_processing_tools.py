"""The plain-Python processing tools: scratch directories, running a tool, dcm2niix and BIDS-style names."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from xnat_flows.processing import nifti
from xnat_flows.processing.scratch import ToolFailedError, run_tool, scratch_directory
from xnat_flows.testing.synth import write_studies


def test_scratch_directory_is_removed_on_success_and_on_error(tmp_path: Path) -> None:
    with scratch_directory("t-", tmp_path / "root") as scratch:
        (scratch / "sub").mkdir()
        (scratch / "sub" / "file").write_text("x")
    assert not scratch.exists()
    with pytest.raises(RuntimeError), scratch_directory("t-", tmp_path / "root") as scratch:
        (scratch / "file").write_text("x")
        raise RuntimeError("a step failed")
    assert not scratch.exists() and list((tmp_path / "root").iterdir()) == []


def test_run_tool_reports_the_tools_own_words_and_bounds_the_wait(tmp_path: Path) -> None:
    ok = run_tool([sys.executable, "-c", "print('fine')"], tmp_path)
    assert ok.returncode == 0 and ok.output.strip() == "fine"
    with pytest.raises(ToolFailedError, match="exited with 3: Error: bad input"):
        run_tool([sys.executable, "-c", "import sys; print('Error: bad input'); sys.exit(3)"], tmp_path)
    with pytest.raises(ToolFailedError, match="ran longer than 0.5 s and was stopped"):
        run_tool([sys.executable, "-c", "import time; time.sleep(30)"], tmp_path, timeout=0.5)
    with pytest.raises(ToolFailedError, match="is not installed"):
        run_tool(["/nonexistent/tool"], tmp_path)


@pytest.mark.parametrize(
    ("scan_type", "description", "modality", "suffix"),
    [
        ("T1_MPRAGE", "", "MR", "T1w"),
        ("t2_tse", "", "MR", "T2w"),
        ("", "AX T2 FLAIR", "MR", "FLAIR"),
        ("ep2d_bold_rest", "", "MR", "bold"),
        ("DTI_64dir", "", "MR", "dwi"),
        ("Localizer", "", "MR", "mr"),
        ("HEAD 5mm", "", "CT", "ct"),
    ],
)
def test_bids_suffix_from_type_or_description(scan_type: str, description: str, modality: str, suffix: str) -> None:
    assert nifti.bids_suffix(scan_type, description, modality) == suffix


def test_bids_stem_keeps_letters_and_digits_only() -> None:
    assert nifti.bids_stem("P-001", "P_001 MR1", "5-MR1", "T1 MPRAGE (sag)") == (
        "sub-P001_ses-P001MR1_acq-T1MPRAGEsag_run-5MR1"
    )
    assert nifti.bids_stem("S", "E", "1", "") == "sub-S_ses-E_run-1"


def test_synthetic_series_convert_with_the_json_sidecar(tmp_path: Path) -> None:
    manifest = write_studies(tmp_path / "src", series=1, instances=6, instance_kb=16, seed=9)
    dicom_dir = manifest.files[0].path.parent
    converted = nifti.convert_series(dicom_dir, tmp_path / "out", stem="sub-S_ses-E_run-1", suffix="T1w")
    assert converted.files == ["sub-S_ses-E_run-1_T1w.json", "sub-S_ses-E_run-1_T1w.nii.gz"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == converted.files
    assert (tmp_path / "out" / "sub-S_ses-E_run-1_T1w.nii.gz").read_bytes()[:2] == b"\x1f\x8b"


def test_files_that_are_not_images_fail_with_dcm2niix_message_and_leave_nothing(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.dcm").write_bytes(b"not DICOM" * 100)
    with pytest.raises(nifti.ConversionError, match=r"dcm2niix \(exit 2\): Error: Unable to find any DICOM images"):
        nifti.convert_series(tmp_path / "in", tmp_path / "out", stem="s", suffix="T1w")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_dcm2niix_on_path_is_used_without_the_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "bin" / "dcm2niix"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setitem(sys.modules, "dcm2niix", None)
    monkeypatch.setenv("PATH", str(fake.parent))
    assert nifti.find_dcm2niix() == str(fake)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(nifti.ToolNotInstalledError) as caught:
        nifti.find_dcm2niix()
    assert "pip install 'xnat-flows[processing]'" in str(caught.value) and "apt-get install dcm2niix" in str(
        caught.value
    )
