"""The hand-read file meta group agrees with pydicom on every Part-10 file pydicom ships."""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.errors import InvalidDicomError

from xnat_flows.transfer.part10 import (
    HEAD_BYTES,
    MetaTooShort,
    dataset_offset,
    pixel_data_reaches_end,
    read_file_meta,
)


def _pydicom_meta(path: str) -> pydicom.Dataset | None:
    try:
        return pydicom.filereader.read_file_meta_info(path)
    except (InvalidDicomError, OSError):
        return None


def _corpus() -> list[str]:
    return [f for f in get_testdata_files() if Path(f).is_file()]


def test_agrees_with_pydicom_on_its_whole_test_corpus() -> None:
    compared = refused = 0
    for path in _corpus():
        data = Path(path).read_bytes()
        expected = _pydicom_meta(path)
        try:
            meta = read_file_meta(data)
        except ValueError:
            refused += 1
            # refusing is only allowed where pydicom cannot give all three UIDs either
            # (or the group is not Explicit VR LE, where callers fall back to pydicom)
            if expected is not None and all(
                expected.get(k) for k in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")
            ):
                assert struct.unpack_from("<H", data, 132)[0] == 0x0002
                assert not data[136:138].isalpha(), f"{path}: explicit meta refused"
            continue
        assert expected is not None, f"{path}: pydicom finds no meta, we did"
        assert meta.sop_class_uid == expected.MediaStorageSOPClassUID
        assert meta.sop_instance_uid == expected.MediaStorageSOPInstanceUID
        assert meta.transfer_syntax == expected.TransferSyntaxUID
        if "FileMetaInformationGroupLength" in expected:
            assert meta.dataset_offset == 132 + 12 + expected.FileMetaInformationGroupLength
        assert data[meta.dataset_offset : meta.dataset_offset + 2] != b"\x02\x00"
        compared += 1
    assert compared > 150 and refused < 30


def test_a_head_that_stops_inside_the_group_says_how_much_to_read() -> None:
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    full = read_file_meta(data[:HEAD_BYTES], file_size=len(data))
    with pytest.raises(MetaTooShort) as short:
        read_file_meta(data[:200], file_size=len(data))
    assert short.value.needed > 200
    assert read_file_meta(data[: max(short.value.needed, full.dataset_offset + 8)], file_size=len(data)) == full


def test_malformed_meta_groups_are_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="DICM"):
        dataset_offset(b"x" * 200)
    with pytest.raises(ValueError, match="ends inside"):
        dataset_offset(bytes(128) + b"DICM" + b"\x02\x00\x10\x00UI\x40\x00")
    implicit = bytes(128) + b"DICM" + struct.pack("<HHI", 2, 0x10, 20) + b"1.2.840.10008.1.2.1\x00"
    with pytest.raises(ValueError, match="Explicit VR"):
        read_file_meta(implicit + b"\x08\x00\x05\x00CS\x00\x00")
    only_syntax = bytes(128) + b"DICM" + b"\x02\x00\x10\x00UI" + struct.pack("<H", 20) + b"1.2.840.10008.1.2.1\x00"
    with pytest.raises(ValueError, match="lacks MediaStorageSOPClassUID, MediaStorageSOPInstanceUID"):
        read_file_meta(only_syntax + b"\x08\x00\x05\x00CS\x00\x00")


def test_a_file_of_nothing_but_meta_ends_at_its_size() -> None:
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    meta = read_file_meta(data)
    assert read_file_meta(data[: meta.dataset_offset]).dataset_offset == meta.dataset_offset


def _quick_whole(data: bytes) -> bool:
    meta = read_file_meta(data)
    head = data[:16384]
    return pixel_data_reaches_end(head, data[-8:], meta, len(data))


def test_pixel_data_check_confirms_only_whole_files() -> None:
    confirmed = 0
    for path in _corpus():
        data = Path(path).read_bytes()
        try:
            whole = _quick_whole(data)
        except ValueError:
            continue
        confirmed += whole
        for cut in (1, 2, 100, len(data) // 2):
            piece = data[: len(data) - cut]
            with contextlib.suppress(ValueError):  # cut inside the meta group: refused outright
                assert not _quick_whole(piece), f"{path} cut by {cut} bytes was confirmed whole"
    assert confirmed > 40  # native and encapsulated images across the corpus


def test_pixel_data_check_reads_encapsulated_and_implicit_files() -> None:
    for name in ("JPEG2000.dcm", "rtdose.dcm"):  # encapsulated, implicit VR
        data = Path(get_testdata_file(name)).read_bytes()
        assert _quick_whole(data), name
    # trailing elements after the pixel data (GE's padding): not confirmed, pydicom decides
    for name in ("CT_small.dcm", "MR_small_RLE.dcm"):
        assert not _quick_whole(Path(get_testdata_file(name)).read_bytes()), name
