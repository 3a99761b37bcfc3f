"""Stream a tar or a stored zip of DICOM files straight into a request body.

No temporary archive and no whole file in memory: the archive is produced chunk by chunk
while httpx sends it, so memory stays flat and the disk is read once (tar) whatever the
batch size. Member names are the files' ``relpath``.

Why the zip is written by hand: ``zipfile`` on an unseekable stream marks every entry with a
data descriptor, and Java's ``ZipInputStream`` — which XNAT's DICOM-zip importer uses —
refuses STORED entries with data descriptors. Here each file's CRC is computed first (a
cheap read that warms the page cache), so every local header carries the real CRC and
sizes; ZIP64 records are added when a size, an offset or the entry count needs them.
"""

from __future__ import annotations

import struct
import tarfile
import time
import zlib
from collections.abc import Iterable, Iterator
from typing import Literal

from xnat_flows.client.errors import InputError
from xnat_flows.transfer.scan import DicomFile, read_exactly

ArchiveFormat = Literal["zip", "tar"]

DEFAULT_CHUNK_SIZE = 1 << 20
_TAR_BLOCK = 512

# Thresholds above which ZIP64 structures are needed (module constants so tests can lower them).
ZIP64_LIMIT = 0xFFFFFFFF
ZIP_MAX_ENTRIES = 0xFFFF
_MARK32 = 0xFFFFFFFF
_MARK16 = 0xFFFF
_UTF8_FLAG = 0x0800


def content_type_for(fmt: ArchiveFormat) -> str:
    """The Content-Type XNAT needs to recognise the in-body archive format."""
    if fmt == "zip":
        return "application/zip"
    if fmt == "tar":
        return "application/x-tar"
    raise InputError(f"Unknown archive format {fmt!r}", hint="Use 'tar' or 'zip'")


def iter_archive(files: Iterable[DicomFile], fmt: ArchiveFormat, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
    """The bytes of a tar or stored zip holding ``files``, in chunks of about ``chunk_size``."""
    content_type_for(fmt)  # validates fmt before anything is read
    writer = _tar_pieces(files, chunk_size) if fmt == "tar" else _zip_pieces(files, chunk_size)
    buffer = bytearray()
    for piece in writer:
        buffer += piece
        if len(buffer) >= chunk_size:
            yield bytes(buffer)
            buffer.clear()
    if buffer:
        yield bytes(buffer)


def _tar_pieces(files: Iterable[DicomFile], chunk_size: int) -> Iterator[bytes]:
    for item in files:
        info = tarfile.TarInfo(item.relpath)
        info.size = item.size
        info.mtime = item.mtime_ns // 1_000_000_000 if item.mtime_ns else int(time.time())
        info.mode = 0o644
        yield info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")
        yield from read_exactly(item, chunk_size)
        padding = -item.size % _TAR_BLOCK
        if padding:
            yield b"\0" * padding
    yield b"\0" * (2 * _TAR_BLOCK)


def _dos_datetime(mtime_ns: int) -> tuple[int, int]:
    t = time.localtime(mtime_ns / 1e9 if mtime_ns else time.time())
    if t.tm_year < 1980:
        return 0, (0 << 9) | (1 << 5) | 1
    return (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2), ((t.tm_year - 1980) << 9) | (t.tm_mon << 5) | t.tm_mday


def _crc32(item: DicomFile, chunk_size: int) -> int:
    crc = 0
    for piece in read_exactly(item, chunk_size):
        crc = zlib.crc32(piece, crc)
    return crc


def _zip_pieces(files: Iterable[DicomFile], chunk_size: int) -> Iterator[bytes]:
    central: list[bytes] = []
    offset = 0
    for item in files:
        name = item.relpath.encode("utf-8")
        crc = _crc32(item, chunk_size)
        dos_time, dos_date = _dos_datetime(item.mtime_ns)
        big = item.size >= ZIP64_LIMIT
        needed = 45 if big or offset >= ZIP64_LIMIT else 20
        local_extra = struct.pack("<HHQQ", 0x0001, 16, item.size, item.size) if big else b""
        size32 = _MARK32 if big else item.size
        header = struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, needed, _UTF8_FLAG, 0, dos_time, dos_date, crc, size32, size32, len(name), len(local_extra)
        )
        yield header + name + local_extra
        check = 0
        for piece in read_exactly(item, chunk_size):
            check = zlib.crc32(piece, check)
            yield piece
        if check != crc:
            raise InputError(f"{item.path} changed while being uploaded", hint="Wait until the export is complete, then re-run")

        zip64_fields = []
        if big:
            zip64_fields += [item.size, item.size]
        if offset >= ZIP64_LIMIT:
            zip64_fields.append(offset)
        central_extra = struct.pack(f"<HH{len(zip64_fields)}Q", 0x0001, 8 * len(zip64_fields), *zip64_fields) if zip64_fields else b""
        central.append(
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                (3 << 8) | 45,  # made by: UNIX, spec 4.5
                needed,
                _UTF8_FLAG,
                0,
                dos_time,
                dos_date,
                crc,
                size32,
                size32,
                len(name),
                len(central_extra),
                0,
                0,
                0,
                (0o100644 << 16),
                _MARK32 if offset >= ZIP64_LIMIT else offset,
            )
            + name
            + central_extra
        )
        offset += len(header) + len(name) + len(local_extra) + item.size

    cd_offset = offset
    cd_size = 0
    for record in central:
        cd_size += len(record)
        yield record
    entries = len(central)
    central.clear()
    if entries >= ZIP_MAX_ENTRIES or cd_offset >= ZIP64_LIMIT or cd_size >= ZIP64_LIMIT:
        eocd64_offset = cd_offset + cd_size
        yield struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, (3 << 8) | 45, 45, 0, 0, entries, entries, cd_size, cd_offset)
        yield struct.pack("<IIQI", 0x07064B50, 0, eocd64_offset, 1)
        yield struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, _MARK16, _MARK16, _MARK32, _MARK32, 0)
    else:
        yield struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, entries, entries, cd_size, cd_offset, 0)
