"""Stream a tar, a gzipped tar or a stored zip of DICOM files straight into a request body.

No temporary archive and no whole file in memory: the archive is produced chunk by chunk
while httpx sends it, so memory stays flat and the disk is read once (tar) whatever the
batch size. Member names are the files' ``relpath``.

Why the zip is written by hand: ``zipfile`` on an unseekable stream marks every entry with a
data descriptor, and Java's ``ZipInputStream`` — which XNAT's DICOM-zip importer uses —
refuses STORED entries with data descriptors. Here each file's CRC is computed first (a
cheap read that warms the page cache), so every local header carries the real CRC and
sizes; ZIP64 records are added when a size, an offset or the entry count needs them.

``tgz`` (XNAT >= 1.8.3 reads gzipped tar in DICOM-zip) is the tar stream through ISA-L's gzip
(python-isal) at level 1: ~1.9x smaller for MR/CT-like pixel data at ~85-130 MB/s per core
(zlib level 1: ~1.96x at ~25-70 MB/s; zlib-ng level 1: ~1.4x), so it pays on links slower than
the compressor, not on loopback. Its length is not known before it is built: it is sent
chunked, without Content-Length.
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

ArchiveFormat = Literal["zip", "tar", "tgz"]
GZIP_LEVEL = 1  # ISA-L levels 0-3; level 1 gave the best size for its speed on MR/CT-like data

DEFAULT_CHUNK_SIZE = 1 << 20
_SEND_AS_IS = 64 << 10  # a piece this large is a send of its own
_TAR_BLOCK = 512

# Thresholds above which ZIP64 structures are needed (module constants so tests can lower them).
ZIP64_LIMIT = 0xFFFFFFFF
ZIP_MAX_ENTRIES = 0xFFFF
_MARK32 = 0xFFFFFFFF
_MARK16 = 0xFFFF
_UTF8_FLAG = 0x0800


def content_type_for(fmt: ArchiveFormat) -> str:
    """The Content-Type XNAT needs to recognise the in-body archive format.

    Args:
        fmt: ``tar``, ``tgz`` or ``zip``.

    Returns:
        The media type.

    Raises:
        InputError: An unknown format.
    """
    if fmt == "zip":
        return "application/zip"
    if fmt == "tar":
        return "application/x-tar"
    if fmt == "tgz":
        return "application/x-gtar"  # XNAT names the upload upload.tar.gz: read as TGZ
    raise InputError(f"Unknown archive format {fmt!r}", hint="Use 'tar', 'tgz' or 'zip'")


def iter_archive(
    files: Iterable[DicomFile], fmt: ArchiveFormat, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[bytes]:
    """The bytes of a tar, tgz or stored zip holding ``files``, in chunks of about ``chunk_size``.

    Args:
        files: The files, each under its relative path.
        fmt: ``tar``, ``tgz`` or ``zip``.
        chunk_size: The chunk size in bytes.

    Yields:
        The archive's bytes.
    """
    content_type_for(fmt)  # validates fmt before anything is read
    writer = _zip_pieces(files, chunk_size) if fmt == "zip" else _tar_pieces(files, chunk_size)
    if fmt == "tgz":
        writer = _gzipped(writer)
    # Small pieces (headers, padding) are gathered so each send carries enough; a file's data goes
    # out as read, never copied: copying it into a buffer was a third of a tar upload's CPU.
    small: list[bytes] = []
    gathered = 0
    for piece in writer:
        if len(piece) >= _SEND_AS_IS:
            if small:
                yield b"".join(small)
                small.clear()
                gathered = 0
            yield piece
            continue
        small.append(piece)
        gathered += len(piece)
        if gathered >= chunk_size:
            yield b"".join(small)
            small.clear()
            gathered = 0
    if small:
        yield b"".join(small)


def _gzipped(pieces: Iterable[bytes]) -> Iterator[bytes]:
    from isal import isal_zlib  # ISA-L's deflate releases the GIL: parallel batches compress in parallel

    compressor = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, 16 + isal_zlib.MAX_WBITS)  # gzip wrapper
    for piece in pieces:
        out = compressor.compress(piece)
        if out:
            yield out
    yield compressor.flush()


def archive_size(files: Iterable[DicomFile], fmt: ArchiveFormat) -> int | None:
    """The exact byte length ``iter_archive`` will produce, computed without reading the files.

    Sent as Content-Length: some proxies in front of XNAT refuse chunked request bodies.

    Args:
        files: The files.
        fmt: ``tar``, ``tgz`` or ``zip``.

    Returns:
        The length, or None for ``tgz``, whose length is known only once it is compressed.
    """
    content_type_for(fmt)
    if fmt == "tgz":
        return None
    if fmt == "tar":
        return sum(len(_tar_header(f)) + f.size + (-f.size % _TAR_BLOCK) for f in files) + 2 * _TAR_BLOCK
    offset = cd_size = entries = 0
    for item in files:
        local, central = _zip_records(item, 0, offset)
        offset += len(local) + item.size
        cd_size += len(central)
        entries += 1
    return offset + cd_size + len(_zip_end(entries, offset, cd_size))


# POSIX ustar header (POSIX.1-2001 "pax" interchange format, ustar header block): name, mode, uid,
# gid, size, mtime, checksum, typeflag, linkname, magic+version, uname, gname, devmajor, devminor,
# prefix, 12 bytes of padding.
_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s12x")
_USTAR_OCTAL_LIMIT = 8**11  # 11 octal digits: sizes and times below 8 GiB / year 2242
_MODE_644 = b"0000644\0"
_ZERO_ID = b"0000000\0"


def _tar_header(item: DicomFile) -> bytes:
    """The member's tar header.

    One ustar block built here for a plain ASCII name of at most 100 bytes (a scanner export's
    file), else ``tarfile``'s PAX header (long or non-ASCII names, huge sizes). The block is the
    one ``tarfile`` writes for such a member (its PAX format adds no extended header when none is
    needed), in ~4 µs instead of ~22: a tar upload builds two headers per file (its Content-Length
    and its stream), and on a fast link they were half of the client's own work (py-spy).

    Returns:
        The header, a multiple of 512 bytes.
    """
    name = item.relpath.encode("utf-8", "surrogateescape")
    mtime = item.mtime_ns // 1_000_000_000
    if len(name) <= 100 and name.isascii() and item.size < _USTAR_OCTAL_LIMIT and 0 <= mtime < _USTAR_OCTAL_LIMIT:
        block = _USTAR.pack(
            name,
            _MODE_644,
            _ZERO_ID,
            _ZERO_ID,
            b"%011o\0" % item.size,
            b"%011o\0" % mtime,
            b" " * 8,  # the checksum counts its own field as spaces
            tarfile.REGTYPE,
            b"",
            tarfile.POSIX_MAGIC,
            b"",
            b"",
            b"",
            b"",
            b"",
        )
        return b"%s%06o\0 %s" % (block[:148], sum(block), block[156:])
    info = tarfile.TarInfo(item.relpath)
    info.size = item.size
    info.mtime = mtime
    info.mode = 0o644
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


def _tar_pieces(files: Iterable[DicomFile], chunk_size: int) -> Iterator[bytes]:
    for item in files:
        yield _tar_header(item)
        yield from read_exactly(item, chunk_size)
        padding = -item.size % _TAR_BLOCK
        if padding:
            yield b"\0" * padding
    yield b"\0" * (2 * _TAR_BLOCK)


def _dos_datetime(mtime_ns: int) -> tuple[int, int]:
    t = time.localtime(mtime_ns / 1e9)
    if t.tm_year < 1980:
        return 0, (0 << 9) | (1 << 5) | 1
    return (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2), ((t.tm_year - 1980) << 9) | (
        t.tm_mon << 5
    ) | t.tm_mday


def _crc32(item: DicomFile, chunk_size: int) -> int:
    crc = 0
    for piece in read_exactly(item, chunk_size):
        crc = zlib.crc32(piece, crc)
    return crc


def _zip_records(item: DicomFile, crc: int, offset: int) -> tuple[bytes, bytes]:
    """The local header (with name and extra field) and the central-directory record of one entry."""
    name = item.relpath.encode("utf-8")
    dos_time, dos_date = _dos_datetime(item.mtime_ns)
    big = item.size >= ZIP64_LIMIT
    far = offset >= ZIP64_LIMIT
    needed = 45 if big or far else 20
    size32 = _MARK32 if big else item.size
    local_extra = struct.pack("<HHQQ", 0x0001, 16, item.size, item.size) if big else b""
    local = struct.pack(
        "<IHHHHHIIIHH",
        0x04034B50,
        needed,
        _UTF8_FLAG,
        0,
        dos_time,
        dos_date,
        crc,
        size32,
        size32,
        len(name),
        len(local_extra),
    )
    zip64_fields = ([item.size, item.size] if big else []) + ([offset] if far else [])
    central_extra = (
        struct.pack(f"<HH{len(zip64_fields)}Q", 0x0001, 8 * len(zip64_fields), *zip64_fields) if zip64_fields else b""
    )
    central = struct.pack(
        "<IHHHHHHIIIHHHHHII",
        0x02014B50,
        (3 << 8) | 45,  # made by: UNIX, spec 4.5
        needed,
        _UTF8_FLAG,
        0,  # stored
        dos_time,
        dos_date,
        crc,
        size32,
        size32,
        len(name),
        len(central_extra),
        0,  # comment length
        0,  # disk number
        0,  # internal attributes
        0o100644 << 16,  # external attributes: a regular file, rw-r--r--
        _MARK32 if far else offset,
    )
    return local + name + local_extra, central + name + central_extra


def _zip_end(entries: int, cd_offset: int, cd_size: int) -> bytes:
    if entries >= ZIP_MAX_ENTRIES or cd_offset >= ZIP64_LIMIT or cd_size >= ZIP64_LIMIT:
        eocd64_offset = cd_offset + cd_size
        return (
            struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, (3 << 8) | 45, 45, 0, 0, entries, entries, cd_size, cd_offset)
            + struct.pack("<IIQI", 0x07064B50, 0, eocd64_offset, 1)
            + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, _MARK16, _MARK16, _MARK32, _MARK32, 0)
        )
    return struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, entries, entries, cd_size, cd_offset, 0)


def _zip_pieces(files: Iterable[DicomFile], chunk_size: int) -> Iterator[bytes]:
    central: list[bytes] = []
    offset = 0
    for item in files:
        crc = _crc32(item, chunk_size)
        local, record = _zip_records(item, crc, offset)
        yield local
        check = 0
        for piece in read_exactly(item, chunk_size):
            check = zlib.crc32(piece, check)
            yield piece
        if check != crc:
            raise InputError(
                f"{item.path} changed while being uploaded", hint="Wait until the export is complete, then re-run"
            )
        central.append(record)
        offset += len(local) + item.size
    cd_size = sum(len(record) for record in central)
    yield from central
    yield _zip_end(len(central), offset, cd_size)
