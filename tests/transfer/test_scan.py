from __future__ import annotations

import os
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from transfer_helpers import write_study

from xnat_flows.client.errors import InputError
from xnat_flows.transfer.scan import scan_directory


def reasons(result) -> dict[str, str]:
    return {s.path.name: s.reason for s in result.skipped}


def test_finds_extensionless_files_recursively_sorted(study_dir: Path) -> None:
    result = scan_directory(study_dir)
    assert [f.relpath for f in result.files] == sorted(f.relpath for f in result.files)
    assert len(result.files) == 6
    assert result.files[0].relpath == "series1/IM0001"
    assert len(result.study_uids) == 1
    assert {f.series_number for f in result.files} == {1, 2}
    first = result.files[0]
    assert first.size == first.path.stat().st_size
    assert first.transfer_syntax and first.sop_class_uid and first.sop_instance_uid
    assert result.total_bytes == sum(f.size for f in result.files)
    assert list(result.by_study()) == result.study_uids


def test_reports_every_skipped_file_with_a_reason(study_dir: Path) -> None:
    (study_dir / ".DS_Store").write_bytes(b"junk")
    (study_dir / ".hidden_dir").mkdir()
    (study_dir / ".hidden_dir" / "IM1").write_bytes(b"x")
    (study_dir / "notes.txt").write_text("not dicom, but 200 bytes long " * 10)
    (study_dir / "ps").write_bytes(b"%!PS")  # the file named ps that xnatctl once uploaded
    good = study_dir / "series1" / "IM0001"
    data = good.read_bytes()
    (study_dir / "truncated_header").write_bytes(data[:200])
    (study_dir / "truncated_pixels").write_bytes(data[: len(data) - 5000])
    os.symlink(study_dir / "missing", study_dir / "dangling")

    result = scan_directory(study_dir, skip_truncated=True)
    got = reasons(result)
    assert len(result.files) == 6
    assert got[".DS_Store"] == "hidden file"
    assert got[".hidden_dir"] == "hidden directory"
    assert got["notes.txt"].startswith("not DICOM")
    assert got["ps"].startswith("not DICOM")
    assert "truncated" in got["truncated_header"]
    assert got["truncated_pixels"].startswith("truncated")
    assert got["dangling"] == "broken symlink"


def test_dicomdir_is_skipped(tmp_path: Path) -> None:
    root = tmp_path / "media"
    write_study(root, series=1, instances=2)
    dicomdir = pydicom.dcmread(get_testdata_file("DICOMDIR"))
    dicomdir.save_as(root / "DICOMDIR", enforce_file_format=True)
    result = scan_directory(root)
    assert len(result.files) == 2
    assert reasons(result)["DICOMDIR"].startswith("DICOMDIR")


def test_survives_symlink_loops_and_duplicate_links(study_dir: Path) -> None:
    os.symlink(study_dir, study_dir / "series1" / "loop")
    os.symlink(study_dir / "series2" / "IM0001", study_dir / "alias_of_im1")
    result = scan_directory(study_dir)
    assert len(result.files) == 6  # nothing twice
    got = reasons(result)
    assert "symlink loop" in got["loop"]
    assert "same file as" in got["alias_of_im1"]
    assert all(not f.relpath.startswith("alias") for f in result.files)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads everything")
def test_unreadable_file_and_directory_are_reported(study_dir: Path) -> None:
    locked = study_dir / "series1" / "IM0002"
    locked.chmod(0)
    closed = study_dir / "closed"
    closed.mkdir()
    closed.chmod(0)
    try:
        result = scan_directory(study_dir)
    finally:
        locked.chmod(0o644)
        closed.chmod(0o755)
    got = reasons(result)
    assert got["IM0002"] == "unreadable: permission denied"
    assert got["closed"].startswith("unreadable directory")
    assert len(result.files) == 5


def test_unreadable_file_as_root_is_reported(study_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    import xnat_flows.transfer.scan as scan

    real_open = builtins.open

    def flaky(path, *args, **kwargs):
        if Path(path).name == "IM0003":
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(scan, "open", flaky, raising=False)
    result = scan_directory(study_dir)
    assert sum(1 for s in result.skipped if s.reason == "unreadable: permission denied") == 2


def test_bad_roots_raise_input_error_saying_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        scan_directory(tmp_path / "nope")
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(InputError, match="not a directory"):
        scan_directory(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="No DICOM files") as info:
        scan_directory(tmp_path / "empty")
    assert "DICM" in info.value.hint


def test_synthetic_export_with_junk(tmp_path: Path) -> None:
    synth = pytest.importorskip("xnat_flows.testing.synth")
    manifest = synth.write_studies(tmp_path, studies=2, series=2, instances=3, instance_kb=8, seed=3, junk=True)
    result = scan_directory(tmp_path, skip_truncated=True)
    assert sorted(f.sop_instance_uid for f in result.files) == sorted(f.sop_instance_uid for f in manifest.files)
    assert sorted(result.study_uids) == sorted(manifest.study_uids)
    skipped = {s.path for s in result.skipped}
    assert {p.absolute() for p in manifest.junk} <= skipped
    assert all(s.reason for s in result.skipped)


def test_a_copy_of_an_instance_is_skipped(study_dir: Path) -> None:
    import shutil

    shutil.copy(study_dir / "series1" / "IM0001", study_dir / "series1" / "IM0001.copy")
    result = scan_directory(study_dir)
    assert len(result.files) == 6
    assert reasons(result)["IM0001.copy"] == "same SOP Instance UID as series1/IM0001"


def test_garbage_after_the_dicm_marker_is_skipped_not_fatal(study_dir: Path) -> None:
    import os as _os

    (study_dir / "garbage").write_bytes(b"\0" * 128 + b"DICM" + _os.urandom(4000))
    (study_dir / "meta_only").write_bytes(b"\0" * 128 + b"DICM")
    result = scan_directory(study_dir, skip_truncated=True)
    assert len(result.files) == 6
    got = reasons(result)
    assert {"garbage", "meta_only"} <= set(got)


# -- headers="file-meta": the C-STORE path's reading depth ------------------------------------------
def _comparable(result) -> list[tuple]:
    return [
        (f.relpath, f.size, f.sop_instance_uid, f.sop_class_uid, f.transfer_syntax, f.mtime_ns) for f in result.files
    ]


def test_file_meta_scan_finds_what_the_full_scan_finds(tmp_path: Path) -> None:
    synth = pytest.importorskip("xnat_flows.testing.synth")
    manifest = synth.write_studies(tmp_path, studies=2, series=2, instances=3, instance_kb=8, seed=3, junk=True)
    full = scan_directory(tmp_path, skip_truncated=True)
    meta = scan_directory(tmp_path, headers="file-meta", skip_truncated=True)
    assert meta.headers == "file-meta" and full.headers == "full"
    assert _comparable(meta) == _comparable(full)
    assert reasons(meta) == reasons(full)
    assert any(r.startswith("truncated: pixel data") for r in reasons(meta).values())
    # confirmed from the file meta and the pixel data's extent alone: no pydicom read
    assert all(f.study_uid == "" and f.series_number is None for f in meta.files)
    assert {p.absolute() for p in manifest.junk} <= {s.path for s in meta.skipped}


def test_file_meta_scan_gives_the_same_reasons_for_junk(study_dir: Path) -> None:
    good = study_dir / "series1" / "IM0001"
    data = good.read_bytes()
    (study_dir / "notes.txt").write_text("not dicom, but 200 bytes long " * 10)
    (study_dir / "truncated_header").write_bytes(data[:200])
    (study_dir / "garbage").write_bytes(b"\0" * 128 + b"DICM" + os.urandom(4000))
    (study_dir / "meta_only").write_bytes(b"\0" * 128 + b"DICM")
    (study_dir / ".DS_Store").write_bytes(b"junk")
    full, meta = (
        scan_directory(study_dir, skip_truncated=True),
        scan_directory(study_dir, headers="file-meta", skip_truncated=True),
    )
    assert reasons(meta) == reasons(full)
    assert _comparable(meta) == _comparable(full)


def test_file_meta_scan_reads_a_meta_group_longer_than_its_first_read(tmp_path: Path) -> None:
    from xnat_flows.transfer.part10 import HEAD_BYTES

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.file_meta.PrivateInformationCreatorUID = "1.2.3.4"
    ds.file_meta.PrivateInformation = b"\x01" * (3 * HEAD_BYTES)
    ds.save_as(tmp_path / "long_meta", enforce_file_format=True)
    [found] = scan_directory(tmp_path, headers="file-meta").files
    assert found.sop_instance_uid == ds.SOPInstanceUID and found.transfer_syntax == ds.file_meta.TransferSyntaxUID


@pytest.mark.filterwarnings("ignore:Expected explicit VR")
def test_file_meta_scan_hands_an_implicit_vr_meta_group_to_pydicom(tmp_path: Path) -> None:
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    # rewrite the meta group in Implicit VR: some old writers did; pydicom still reads it
    from pydicom.filewriter import write_dataset

    meta_ds = pydicom.Dataset()
    for element in ds.file_meta:
        if element.tag != 0x00020000:
            meta_ds.add(element)
    buffer = pydicom.filebase.DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, meta_ds)
    offset = pydicom.filereader.read_file_meta_info(get_testdata_file("CT_small.dcm")).FileMetaInformationGroupLength
    (tmp_path / "implicit_meta").write_bytes(data[:132] + buffer.getvalue() + data[132 + 12 + offset :])
    [found] = scan_directory(tmp_path, headers="file-meta").files
    assert found.sop_instance_uid == ds.SOPInstanceUID
    assert found.study_uid == ds.StudyInstanceUID  # read by pydicom, so the study is known too


def test_file_meta_scan_imports_no_pydicom(tmp_path: Path) -> None:
    import subprocess
    import sys

    from xnat_flows.testing.synth import write_studies

    manifest = write_studies(tmp_path, series=2, instances=6, instance_kb=8)
    code = (
        "import sys; from xnat_flows.transfer.scan import scan_directory; "
        f"r = scan_directory({str(tmp_path)!r}, headers='file-meta'); "
        "print(len(r.files), 'pydicom' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(len(manifest.files)), "False"]


def test_unknown_header_depth_is_refused(study_dir: Path) -> None:
    with pytest.raises(InputError, match="header depth"):
        scan_directory(study_dir, headers="some")  # type: ignore[arg-type]


def test_file_meta_scan_equals_the_full_scan_on_a_real_export_tree() -> None:
    """pydicom's dicomdirtests: a scanner export with a DICOMDIR, CT/MR/CR/PT in several syntaxes."""
    import pydicom.data

    root = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests"
    full, meta = scan_directory(root), scan_directory(root, headers="file-meta")
    assert len(full.files) == 81
    assert _comparable(meta) == _comparable(full)
    assert reasons(meta) == reasons(full)
    assert sum(1 for f in meta.files if not f.study_uid) > 20  # most confirmed without pydicom


# -- headers="full": UIDs read by the Part-10 walker, pydicom only for what it cannot confirm ----------
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_quick_full_read_equals_pydicom_on_its_whole_test_corpus(tmp_path: Path) -> None:
    """Every file pydicom ships (all syntaxes, sequences, odd encodings) is classified exactly as
    the pydicom read classifies it, and most ordinary images without pydicom."""
    import pydicom.data

    from xnat_flows.transfer import scan

    root = Path(pydicom.data.__file__).parent / "test_files"
    quick = 0
    calls: list[Path] = []
    real = scan.read_header

    def counting(path: Path, root_: Path, st: os.stat_result):
        calls.append(path)
        return real(path, root_, st)

    compared = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        st = path.stat()
        expected = real(path, root, st)
        calls.clear()
        scan.read_header = counting
        try:
            got = scan.read_file_header(path, root, st)
        finally:
            scan.read_header = real
        assert got == expected, path
        compared += 1
        quick += not calls and isinstance(got, scan.DicomFile)
    assert compared > 150
    assert quick > 60  # confirmed by the walker alone


def test_full_scan_of_a_synthetic_session_needs_no_pydicom(tmp_path: Path) -> None:
    import subprocess
    import sys

    from xnat_flows.testing.synth import write_studies

    manifest = write_studies(tmp_path, studies=2, series=2, instances=6, instance_kb=8)
    code = (
        "import sys; from xnat_flows.transfer.scan import scan_directory; "
        f"r = scan_directory({str(tmp_path)!r}); "
        "print(len(r.files), len(r.study_uids), 'pydicom' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(len(manifest.files)), "2", "False"]
    result = scan_directory(tmp_path)
    assert {(f.sop_instance_uid, f.study_uid, f.series_uid, f.series_number) for f in result.files} == {
        (f.sop_instance_uid, f.study_uid, f.series_uid, f.series_number) for f in manifest.files
    }


def test_quick_read_skips_sequences_of_undefined_length(tmp_path: Path) -> None:
    """Nested sequences (both VR encodings) and a sequence of undefined length before the study UID."""
    from pydicom.dataset import Dataset
    from pydicom.uid import ImplicitVRLittleEndian

    from xnat_flows.transfer.scan import read_file_header, read_header

    for syntax in ("1.2.840.10008.1.2.1", ImplicitVRLittleEndian):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        inner = Dataset()
        inner.ReferencedSOPInstanceUID = "1.2.3"
        inner.ReferencedImageSequence = [Dataset()]
        item = Dataset()
        item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        item.ReferencedImageSequence = [inner]
        ds.ReferencedImageSequence = [item, item]
        ds.file_meta.TransferSyntaxUID = syntax
        path = tmp_path / f"seq_{syntax}"
        ds.save_as(path, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=True)
        assert read_file_header(path, tmp_path, path.stat()) == read_header(path, tmp_path, path.stat())
    # pydicom writes defined lengths: rewrite one sequence and its item with undefined lengths
    from xnat_flows.transfer.part10 import read_file_meta, read_series_keys

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.ReferencedImageSequence = [Dataset()]
    ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = "1.2.3"
    path = tmp_path / "undefined"
    ds.save_as(path, enforce_file_format=True)
    raw = path.read_bytes()
    meta = read_file_meta(raw)
    # (0008,1140) SQ with a defined length -> undefined length + item/sequence delimiters
    tag = b"\x08\x00\x40\x11SQ\x00\x00"
    at = raw.index(tag)
    seq_len = int.from_bytes(raw[at + 8 : at + 12], "little")
    body = raw[at + 12 : at + 12 + seq_len]
    item_len = int.from_bytes(body[4:8], "little")
    item = body[:4] + b"\xff\xff\xff\xff" + body[8 : 8 + item_len] + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    undefined = (
        raw[:at] + tag + b"\xff\xff\xff\xff" + item + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00" + raw[at + 12 + seq_len :]
    )
    path.write_bytes(undefined)
    keys = read_series_keys(undefined, meta)
    assert keys is not None and keys.study_uid == ds.StudyInstanceUID and keys.series_number == ds.SeriesNumber
    assert read_file_header(path, tmp_path, path.stat()) == read_header(path, tmp_path, path.stat())


@pytest.mark.parametrize("headers", ["full", "file-meta"])
def test_deflated_files_are_found_and_a_cut_one_is_skipped(tmp_path: Path, headers: str) -> None:
    """Deflated Explicit VR Little Endian: the pixel data's end is an offset in the inflated
    stream, so it is checked against the inflated length, not the file's size."""
    data = Path(get_testdata_file("image_dfl.dcm")).read_bytes()
    (tmp_path / "image_dfl.dcm").write_bytes(data)
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 600])
    result = scan_directory(tmp_path, headers=headers, skip_truncated=True)
    assert [f.relpath for f in result.files] == ["image_dfl.dcm"]
    assert result.files[0].transfer_syntax == "1.2.840.10008.1.2.1.99"
    assert "truncated" in reasons(result)["cut.dcm"]


def test_unreadable_files_and_folders_are_failures_and_junk_is_not(
    study_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import builtins

    import xnat_flows.transfer.scan as scan

    (study_dir / "notes.txt").write_text("junk")
    (study_dir / "closed").mkdir()
    real_open, real_scandir = builtins.open, os.scandir

    def flaky_open(path, *args, **kwargs):
        if Path(path).match("series1/IM0002"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    def flaky_scandir(path):
        if Path(path).name == "closed":
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(scan, "open", flaky_open, raising=False)
    monkeypatch.setattr(scan.os, "scandir", flaky_scandir)
    result = scan_directory(study_dir)
    assert sorted(s.path.relative_to(study_dir).as_posix() for s in result.unreadable) == ["closed", "series1/IM0002"]
    assert not [s for s in result.skipped if s.path.name == "notes.txt"][0].unreadable


def _rewrite_with(path: Path, target: Path, mtime_ns: int, **changes: object) -> None:
    ds = pydicom.dcmread(path)
    for name, value in changes.items():
        setattr(ds, name, value)
    ds.save_as(target, enforce_file_format=True)
    os.utime(target, ns=(mtime_ns, mtime_ns))


def test_two_different_files_for_one_instance_send_the_newest_and_say_so(study_dir: Path) -> None:
    """A corrected re-export beside the original: the newer file is sent, whatever its path."""
    original = study_dir / "series2" / "IM0001"
    corrected = study_dir / "a_corrected" / "IM0001"  # sorts first by path
    corrected.parent.mkdir()
    base = original.stat().st_mtime_ns
    _rewrite_with(original, corrected, base - 10**9, PatientComments="corrected")
    os.utime(original, ns=(base, base))
    # the first by path is the older: before, the first by path won silently
    result = scan_directory(study_dir)
    [sent] = [f for f in result.files if f.sop_instance_uid == pydicom.dcmread(original).SOPInstanceUID]
    assert sent.path == original
    assert reasons(result)["IM0001"].startswith("conflicting copy: same SOP Instance UID as series2/IM0001")
    assert [[v.relpath for v in c] for c in result.conflicts] == [["a_corrected/IM0001", "series2/IM0001"]]
    oldest = scan_directory(study_dir, duplicates="oldest")
    assert corrected in {f.path for f in oldest.files} and original not in {f.path for f in oldest.files}
    with pytest.raises(InputError, match="held by different files") as info:
        scan_directory(study_dir, duplicates="stop")
    assert "a_corrected/IM0001 and series2/IM0001" in str(info.value)
    meta = scan_directory(study_dir, headers="file-meta")
    assert sent.path in {f.path for f in meta.files} and len(meta.conflicts) == 1


@pytest.mark.parametrize("duplicates", ["newest", "oldest"])
def test_two_versions_with_the_same_mtime_are_not_sent_as_the_newer_one(study_dir: Path, duplicates: str) -> None:
    """With equal modification times newest/oldest cannot tell the versions apart;
    the scan refuses (naming both) instead of sending the first by path as "the newer file"."""
    original = study_dir / "series2" / "IM0001"
    copy = study_dir / "a_copy" / "IM0001"
    copy.parent.mkdir()
    same = original.stat().st_mtime_ns
    _rewrite_with(original, copy, same, PatientComments="another version")
    with pytest.raises(InputError, match="same modification time") as info:
        scan_directory(study_dir, duplicates=duplicates)  # type: ignore[arg-type]
    assert "a_copy/IM0001 and series2/IM0001" in str(info.value) and "Remove the wrong copies" in str(info.value)
