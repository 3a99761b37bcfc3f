"""Synthetic studies: deterministic, valid DICOM, scanner-export layout, and the junk of real exports."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from array import array
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from xnat_flows.testing.synth import CT_IMAGE_STORAGE, MR_IMAGE_STORAGE, SynthRouting, write_studies


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def test_same_seed_writes_same_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    first = write_studies(tmp_path / "a", studies=2, series=2, instances=6, instance_kb=8, seed=7, junk=True)
    second = write_studies(tmp_path / "b", studies=2, series=2, instances=6, instance_kb=8, seed=7, junk=True)
    other = write_studies(tmp_path / "c", studies=2, series=2, instances=6, instance_kb=8, seed=8)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert [f.sop_instance_uid for f in first.files] == [f.sop_instance_uid for f in second.files]
    assert not {f.sop_instance_uid for f in first.files} & {f.sop_instance_uid for f in other.files}


@pytest.mark.parametrize(("modality", "sop_class"), [("MR", MR_IMAGE_STORAGE), ("CT", CT_IMAGE_STORAGE)])
def test_every_instance_is_valid_dicom_matching_the_manifest(tmp_path: Path, modality: str, sop_class: str) -> None:
    manifest = write_studies(tmp_path, studies=2, series=3, instances=10, instance_kb=20, modality=modality)
    assert len(manifest.files) == 20
    assert len(manifest.study_uids) == 2
    assert manifest.total_bytes == sum(p.stat().st_size for p in (f.path for f in manifest.files))
    pixel_hashes = set()
    for item in manifest.files:
        ds = pydicom.dcmread(item.path)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID == item.sop_instance_uid
        assert ds.SOPClassUID == item.sop_class_uid == sop_class
        assert ds.Modality == modality
        assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesNumber) == (
            item.study_uid,
            item.series_uid,
            item.series_number,
        )
        assert len(ds.PixelData) == ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8
        assert ds.pixel_array.shape == (ds.Rows, ds.Columns)
        assert pydicom.uid.UID(ds.SOPInstanceUID).is_valid and ds.SOPInstanceUID.startswith("2.25.")
        assert item.size == item.path.stat().st_size
        pixel_hashes.add(hashlib.sha256(ds.PixelData).digest())
    assert len(pixel_hashes) == len(manifest.files)  # each instance has its own pixels
    assert len({f.sop_instance_uid for f in manifest.files}) == len(manifest.files)


def test_instances_are_spread_over_series_and_slices_are_ordered(tmp_path: Path) -> None:
    manifest = write_studies(tmp_path, series=3, instances=10, instance_kb=4)
    per_series: dict[int, list] = {}
    for item in manifest.files:
        per_series.setdefault(item.series_number, []).append(item)
    assert sorted(len(v) for v in per_series.values()) == [3, 3, 4]
    first_series = [pydicom.dcmread(i.path, stop_before_pixels=True) for i in per_series[1]]
    assert [ds.InstanceNumber for ds in first_series] == list(range(1, 5))
    assert [float(ds.SliceLocation) for ds in first_series] == sorted(float(ds.SliceLocation) for ds in first_series)


def test_layout_looks_like_a_scanner_export(tmp_path: Path) -> None:
    manifest = write_studies(tmp_path, studies=1, series=3, instances=9, instance_kb=4, patient_id="P01")
    relpaths = [f.path.relative_to(tmp_path) for f in manifest.files]
    assert all(len(p.parts) == 4 and p.parts[0] == "P01" and p.parts[2].startswith("SERIES_") for p in relpaths)
    assert any(p.suffix == "" for p in relpaths) and any(p.suffix == ".dcm" for p in relpaths)


def test_instance_size_follows_instance_kb(tmp_path: Path) -> None:
    manifest = write_studies(tmp_path, series=1, instances=2, instance_kb=512)
    assert all(abs(f.size - 512 * 1024) < 16 * 1024 for f in manifest.files)


def test_routing_comment_is_written_per_study(tmp_path: Path) -> None:
    manifest = write_studies(
        tmp_path, studies=2, series=1, instances=2, instance_kb=4, routing=SynthRouting("PROJ1", "SUBJ1", "SESS")
    )
    comments = {pydicom.dcmread(f.path, stop_before_pixels=True).PatientComments for f in manifest.files}
    assert comments == {"Project:PROJ1 Subject:SUBJ1 Session:SESS", "Project:PROJ1 Subject:SUBJ1 Session:SESS_2"}


def test_junk_files_are_listed_and_are_not_valid_instances(tmp_path: Path) -> None:
    manifest = write_studies(tmp_path, series=2, instances=6, instance_kb=8, junk=True)
    names = {p.name for p in manifest.junk}
    assert {"DICOMDIR", ".DS_Store", "README.txt", "report.pdf"} <= names
    assert any(n.startswith("._") for n in names)
    assert all(p.exists() for p in manifest.junk)
    assert not {p for p in manifest.junk} & {f.path for f in manifest.files}
    dicomdir = pydicom.dcmread(tmp_path / "DICOMDIR")
    assert dicomdir.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.1.3.10"
    truncated = [p for p in manifest.junk if p.name.startswith("IM9")]
    assert len(truncated) == 2
    for path in truncated:
        raw = path.read_bytes()
        assert raw[128:132] == b"DICM"
        full = next(f for f in manifest.files if f.path.parent == path.parent).size
        assert len(raw) < full


def test_invalid_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="modality"):
        write_studies(tmp_path, modality="US")
    with pytest.raises(ValueError):
        write_studies(tmp_path, instances=0)


def test_cli_writes_and_summarises(tmp_path: Path) -> None:
    from xnat_flows.cli.main import app

    result = CliRunner().invoke(
        app,
        [
            "synth",
            str(tmp_path / "out"),
            "--studies",
            "2",
            "--instances",
            "4",
            "--instance-kb",
            "4",
            "--modality",
            "CT",
            "--project",
            "TEST",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "wrote 8 instances in 2 studies" in result.output
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert len(files) == 8
    assert pydicom.dcmread(files[0]).PatientComments == "Project:TEST"


def test_big_sets_get_their_junk_without_a_dicomdir(tmp_path: Path) -> None:
    from xnat_flows.testing.synth import DICOMDIR_MAX_FILES

    manifest = write_studies(tmp_path, series=2, instances=DICOMDIR_MAX_FILES + 1, instance_kb=1, junk=True)
    names = {p.name for p in manifest.junk}
    assert "DICOMDIR" not in names and not (tmp_path / "DICOMDIR").exists()
    assert {"README.txt", "report.pdf", "IM900001"} <= names


def test_phantom_pixels_compress_as_real_images_and_random_ones_do_not(tmp_path: Path) -> None:
    """Compression figures (tgz over slow links) are honest only if the pixels compress as real
    MR/CT does (~1.5-3x with gzip); random bytes stay available and do not compress."""
    import zlib

    import pydicom

    def ratio(kind: str) -> float:
        manifest = write_studies(tmp_path / kind, series=1, instances=20, instance_kb=64, seed=5, pixels=kind)
        pixel_data = b"".join(pydicom.dcmread(f.path).PixelData for f in manifest.files)
        return len(pixel_data) / len(zlib.compress(pixel_data, 1))

    assert 1.5 < ratio("phantom") < 3.0
    assert ratio("random") < 1.01
    first, middle = (
        pydicom.dcmread(f.path)
        for f in write_studies(tmp_path / "p", series=1, instances=9, instance_kb=64).files[::4][:2]
    )
    assert first.PixelData != middle.PixelData  # the head's extent follows the slice position
    pixels = array("H", first.PixelData)  # unsigned 16-bit, little-endian
    if sys.byteorder == "big":
        pixels.byteswap()
    assert max(pixels) <= 4095 and pixels[0] < 200  # background: a noise floor, not tissue
    with pytest.raises(ValueError, match="pixels"):
        write_studies(tmp_path / "bad", instances=1, pixels="noise")  # type: ignore[arg-type]


def test_synth_needs_no_numpy(tmp_path: Path) -> None:
    """numpy is not a dependency: the phantom is built with the standard library."""
    script = (
        "import sys; sys.modules['numpy'] = None\n"  # any `import numpy` now raises ImportError
        "from xnat_flows.testing.synth import write_studies\n"
        f"m = write_studies({str(tmp_path)!r}, series=1, instances=3, instance_kb=16, junk=True)\n"
        "print(len(m.files))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3"
