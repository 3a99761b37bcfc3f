from __future__ import annotations

import io
import os
import tarfile
import tracemalloc
import zipfile
from pathlib import Path

import pytest

import xnat_flows.transfer.archive_stream as archive_stream
from xnat_flows.client.errors import InputError
from xnat_flows.transfer.archive_stream import archive_size, content_type_for, iter_archive
from xnat_flows.transfer.scan import DicomFile, scan_directory


def entry(path: Path, relpath: str) -> DicomFile:
    st = path.stat()
    return DicomFile(path, relpath, st.st_size, "1", "1.1", 1, relpath, "1.2", "1.2.840.10008.1.2.1", st.st_mtime_ns)


def random_files(root: Path, sizes: list[int]) -> list[DicomFile]:
    files = []
    for i, size in enumerate(sizes):
        path = root / f"d{i % 3}" / f"f{i}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
        files.append(entry(path, f"d{i % 3}/f{i}"))
    return files


def extract(data: bytes, fmt: str) -> dict[str, bytes]:
    if fmt == "zip":
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            assert zf.testzip() is None  # every CRC checks out
            return {info.filename: zf.read(info) for info in zf.infolist()}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz" if fmt == "tgz" else "r:") as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers()}


@pytest.mark.parametrize("fmt", ["tar", "zip", "tgz"])
def test_streamed_archive_extracts_to_the_same_bytes(tmp_path: Path, fmt: str) -> None:
    files = random_files(tmp_path, [0, 1, 511, 512, 513, 70_000, 1_500_000])
    chunks = list(iter_archive(files, fmt, chunk_size=64 * 1024))
    assert max(len(c) for c in chunks) < 64 * 1024 + 70_000  # chunks stay near chunk_size
    got = extract(b"".join(chunks), fmt)
    assert got == {f.relpath: f.path.read_bytes() for f in files}


@pytest.mark.parametrize("fmt", ["tar", "zip", "tgz"])
def test_real_dicom_members_are_named_by_relpath(study_dir: Path, fmt: str) -> None:
    scan = scan_directory(study_dir)
    got = extract(b"".join(iter_archive(scan.files, fmt)), fmt)
    assert sorted(got) == [f.relpath for f in scan.files]


def test_zip_entries_carry_crc_and_sizes_in_the_local_header(tmp_path: Path) -> None:
    # Java's ZipInputStream (XNAT's DICOM-zip importer) rejects STORED entries with data descriptors.
    files = random_files(tmp_path, [1000, 2000])
    data = b"".join(iter_archive(files, "zip"))
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            assert info.flag_bits & 0x08 == 0
            assert info.compress_type == zipfile.ZIP_STORED
            local = data[info.header_offset : info.header_offset + 30]
            assert int.from_bytes(local[14:18], "little") == info.CRC
            assert int.from_bytes(local[22:26], "little") == info.file_size


def test_zip64_records_when_limits_are_exceeded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive_stream, "ZIP64_LIMIT", 3000)  # pretend 3 kB is 4 GiB
    monkeypatch.setattr(archive_stream, "ZIP_MAX_ENTRIES", 3)
    files = random_files(tmp_path, [1000, 5000, 10, 4000])
    data = b"".join(iter_archive(files, "zip"))
    assert b"PK\x06\x06" in data and b"PK\x06\x07" in data  # ZIP64 end records
    assert extract(data, "zip") == {f.relpath: f.path.read_bytes() for f in files}


@pytest.mark.parametrize("fmt", ["tar", "zip", "tgz"])
def test_memory_stays_flat_for_hundreds_of_megabytes(tmp_path: Path, fmt: str) -> None:
    files = []
    for i in range(12):  # 12 x 25 MB sparse files = 300 MB
        path = tmp_path / f"big{i}"
        with open(path, "wb") as handle:
            handle.truncate(25 * 1024 * 1024)
        files.append(entry(path, path.name))
    tracemalloc.start()
    try:
        total = sum(len(chunk) for chunk in iter_archive(files, fmt))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total > (300 * 1024 * 1024 if fmt != "tgz" else 300 * 1024)  # zeros compress ~1000x
    assert peak < 8 * 1024 * 1024


@pytest.mark.parametrize("fmt", ["tar", "zip", "tgz"])
def test_a_file_that_changed_since_the_scan_fails_the_stream(tmp_path: Path, fmt: str) -> None:
    files = random_files(tmp_path, [1000])
    files[0].path.write_bytes(b"short")
    with pytest.raises(InputError, match="changed while being uploaded"):
        b"".join(iter_archive(files, fmt))


def test_content_types() -> None:
    assert content_type_for("zip") == "application/zip"
    assert content_type_for("tar") == "application/x-tar"
    assert content_type_for("tgz") == "application/x-gtar"  # XNAT: upload.tar.gz, read as TGZ
    with pytest.raises(InputError):
        content_type_for("rar")  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["tar", "zip"])
def test_archive_size_is_exact_without_reading(tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    files = random_files(tmp_path, [0, 7, 512, 40_000])
    long_name = tmp_path / "long"
    long_name.write_bytes(b"x" * 99)
    files.append(entry(long_name, "d/" + "n" * 150 + "/é-ü"))  # PAX header in tar, UTF-8 in zip
    assert archive_size(files, fmt) == len(b"".join(iter_archive(files, fmt)))
    monkeypatch.setattr(archive_stream, "ZIP64_LIMIT", 600)
    monkeypatch.setattr(archive_stream, "ZIP_MAX_ENTRIES", 2)
    assert archive_size(files, fmt) == len(b"".join(iter_archive(files, fmt)))


def test_tgz_is_a_gzip_stream_about_half_the_tar_for_mr_like_pixels(tmp_path: Path) -> None:
    synth = pytest.importorskip("xnat_flows.testing.synth")
    synth.write_studies(tmp_path, series=1, instances=12, instance_kb=64, seed=4)
    files = scan_directory(tmp_path).files
    tar, tgz = (b"".join(iter_archive(files, fmt)) for fmt in ("tar", "tgz"))
    assert tgz[:2] == b"\x1f\x8b"  # a gzip member, as XNAT's TGZ reader expects
    assert extract(tgz, "tgz") == extract(tar, "tar")
    assert 1.5 < len(tar) / len(tgz) < 3.0
    assert archive_size(files, "tgz") is None  # sent chunked: the length is known only once compressed


@pytest.mark.parametrize(
    ("relpath", "blocks"),
    [
        ("SCANS/IM0001", 1),  # a scanner export's name: the ustar block built here
        ("d/" + "n" * 98, 1),  # 100 bytes fill the ustar name field: still one block
        ("d/" + "n" * 99, 3),  # longer: tarfile's PAX header (extended header + member)
        ("séries/IM1", 3),  # non-ASCII: tarfile's PAX header carries the UTF-8 path
    ],
)
def test_tar_member_headers_read_back_as_tarfile_reads_them(tmp_path: Path, relpath: str, blocks: int) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"DICM" * 100)
    os.utime(path, ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    item = entry(path, relpath)
    header = archive_stream._tar_header(item)
    assert len(header) == blocks * 512
    with tarfile.open(fileobj=io.BytesIO(b"".join(iter_archive([item], "tar"))), mode="r:") as tf:
        (member,) = tf.getmembers()
        assert (member.name, member.size, member.mtime, member.mode, member.type) == (
            relpath,
            400,
            1_700_000_000,
            0o644,
            tarfile.REGTYPE,
        )
        assert tf.extractfile(member).read() == b"DICM" * 100  # type: ignore[union-attr]
    reference = tarfile.TarInfo(relpath)
    reference.size, reference.mtime, reference.mode = 400, 1_700_000_000, 0o644
    expected = reference.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")

    # the same bytes as tarfile's, but for devmajor/devminor (329-344, and so the checksum, 148-155),
    # which some Python versions write as zeros for a regular file and others leave empty
    def without_device_fields(block: bytes) -> bytes:
        return block[:148] + block[156:329] + block[345:]

    assert without_device_fields(header) == without_device_fields(expected)
