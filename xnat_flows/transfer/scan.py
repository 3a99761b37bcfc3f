"""Find the DICOM instances under a directory, reading only their headers.

Scanner exports are messy: extensionless files, DICOMDIRs, hidden junk, symlink loops,
unreadable and truncated files. A file counts as DICOM by content (the 128-byte preamble
followed by ``DICM``), never by name. Every file that is not uploaded is reported with the
reason, so "why did only 2,998 of 3,000 files arrive?" has an answer before the upload.

Two depths of reading, one walk and one set of skip reasons:

* ``headers="full"`` (the REST path): the study and series UIDs (and SOP UIDs, Series
  Number) that decide how an upload is grouped. The Part-10 walker (``part10.read_series_keys``)
  reads them from the file's first 16 KB, and the file is confirmed whole when its Pixel Data
  element ends exactly at the end of the file (~14,000 files/s warm here, against ~2,300 with
  pydicom). Whatever that cannot confirm (no pixel data, elements after it, big-endian or
  deflated data, a UID beyond the first bytes, an odd encoding, a file cut short) is read by
  pydicom up to the pixel data, which decides: the same files are skipped for the same reasons.
* ``headers="file-meta"`` (the C-STORE path): the Part-10 file meta group, which holds all a
  C-STORE needs, and the same pixel-data check (~25,000 files/s, no pydicom import); study
  and series UIDs stay empty for the confirmed files. A file without a Study Instance UID is
  the one thing not caught before sending: the receiver refuses it, and ``cstore.send`` then
  reads it to say why.

What is not sent is either junk (not DICOM, hidden, DICOMDIR, a copy, a corrupt file), cut short
(``SkippedFile.truncated``: a file still being written, so the export is incomplete and the scan
fails with ``IncompleteExportError`` before anything is sent, unless ``skip_truncated``) or unreadable (a file or folder the OS would not let us read: ``SkippedFile.unreadable``,
``ScanResult.unreadable``), which may hold DICOM and is a failure of the upload. Two different
files holding one SOP Instance UID (a corrected re-export beside the original) are a conflict:
the newest by modification time is sent by default (``duplicates``), and ``ScanResult.conflicts``
lists them. ``DicomFile.relpath`` is always valid UTF-8 (``portable_relpath``); ``path`` is the
real name.
"""

from __future__ import annotations

import os
import stat
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from xnat_flows.client.errors import InputError, TransientError
from xnat_flows.transfer.part10 import (
    HEAD_BYTES,
    META_START,
    FileMeta,
    MetaTooShort,
    has_magic,
    pixel_data_reaches_end,
    read_file_meta,
    read_series_keys,
)

if TYPE_CHECKING:
    import pydicom

    from xnat_flows.transfer.deidentify import Rewrite

ScanHeaders = Literal["full", "file-meta"]
Duplicates = Literal["newest", "oldest", "stop"]
CONFLICT = "conflicting copy"
_FILE_META_HEAD_BYTES = 16384  # the file meta group and, in most files, the Pixel Data element header
MEDIA_STORAGE_DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"

_HEADER_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "PixelData",  # deferred: only its position and length are read
]
TRUNCATED = "truncated"
UNREADABLE = "unreadable"
UNREADABLE_PERMISSION = f"{UNREADABLE}: permission denied"
UNREADABLE_DIRECTORY = "unreadable directory"
CANNOT_STAT = "cannot stat"
_UNREADABLE_PREFIXES = (f"{UNREADABLE}:", UNREADABLE_DIRECTORY, CANNOT_STAT)
PIXEL_DATA_TAG = 0x7FE00010
UNDEFINED_LENGTH = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)  # slots: ~100k of them in a big session
class DicomFile:
    """One DICOM instance found by the scan: its file and the UIDs an upload plans and verifies with."""

    path: Path
    relpath: str  # POSIX path relative to the scanned root: the member name in archives
    size: int
    study_uid: str
    series_uid: str
    series_number: int | None
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    mtime_ns: int = 0  # for the resume digest: a changed file is sent again
    # De-identified on the way out (``transfer.deidentify``): ``path`` holds the original, and the
    # other fields describe the rewritten instance that ``read_exactly`` makes from it.
    rewrite: Rewrite | None = None

    def __post_init__(self) -> None:
        # study, series, class and syntax UIDs repeat across a session's files: keep one copy each
        for name in ("study_uid", "series_uid", "sop_class_uid", "transfer_syntax"):
            object.__setattr__(self, name, sys.intern(getattr(self, name)))


@dataclass(frozen=True)
class SkippedFile:
    """A file the scan does not send, with the reason why (junk, unreadable, cut short, a duplicate)."""

    path: Path
    reason: str

    @property
    def unreadable(self) -> bool:
        """A file or folder that could not be read, so may hold DICOM that is not sent.

        A failure of the upload (a re-run after fixing it completes it), not junk.
        """
        return self.reason.startswith(_UNREADABLE_PREFIXES)

    @property
    def truncated(self) -> bool:
        """A DICOM file cut short (its pixel data, or its header, ends early).

        In a folder being written, a file not yet whole. ``scan_directory`` fails on it unless told
        to skip it.
        """
        return self.reason.startswith(TRUNCATED) or _HEADER_CUT in self.reason


class IncompleteExportError(TransientError):
    """DICOM files of the folder are cut short: an export still being written (or copied).

    Nothing was sent, so the study is never split between a run that sent part of it and a later
    one.
    """

    default_hint = (
        "Wait until the export has finished writing and run again; to send the other files without the cut "
        "ones, skip the truncated files"
    )

    def __init__(self, message: str, *, truncated: list[SkippedFile], **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.truncated = truncated


@dataclass
class ScanResult:
    """What ``scan_directory`` found under ``root``: the instances to send and every file skipped."""

    root: Path
    files: list[DicomFile] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    headers: ScanHeaders = "full"  # with "file-meta", study and series UIDs are not read (empty)
    # the versions (in path order) of each SOP Instance UID held by different files
    conflicts: list[list[DicomFile]] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        """The size of all ``files``, in bytes."""
        return sum(f.size for f in self.files)

    @property
    def study_uids(self) -> list[str]:
        """Distinct StudyInstanceUIDs, in the order they first appear."""
        return list(dict.fromkeys(f.study_uid for f in self.files))

    @property
    def unreadable(self) -> list[SkippedFile]:
        """Skips that are failures (``SkippedFile.unreadable``); the rest is junk."""
        return [s for s in self.skipped if s.unreadable]

    def by_study(self) -> dict[str, list[DicomFile]]:
        """``files`` grouped by StudyInstanceUID, in the order the studies first appear."""
        groups: dict[str, list[DicomFile]] = {}
        for f in self.files:
            groups.setdefault(f.study_uid, []).append(f)
        return groups


def portable_relpath(path: Path, root: Path) -> str:
    r"""``path`` relative to ``root`` as valid UTF-8 text.

    Bytes of a name that are not UTF-8 (an export from another locale) are written as ``\xNN``, so
    archive member names, resume digests and reports never meet an undecodable name.
    ``DicomFile.path`` keeps the real name.

    Args:
        path: A file under ``root``.
        root: The scanned folder.

    Returns:
        The relative POSIX path, with undecodable bytes escaped.
    """
    text, base = os.fspath(path), os.fspath(root)
    prefix = base if base.endswith(os.sep) else base + os.sep
    # string slicing, not Path.relative_to: this runs once per file of the scan
    relative = text[len(prefix) :] if text.startswith(prefix) else path.relative_to(root).as_posix()
    if os.sep != "/":
        relative = relative.replace(os.sep, "/")
    return relative if relative.isascii() else os.fsencode(relative).decode("utf-8", "backslashreplace")


def is_dicom_part10(path: Path) -> bool:
    """True when the file has the Part 10 preamble and ``DICM`` marker."""
    with open(path, "rb") as handle:
        return has_magic(handle.read(META_START))


def read_exactly(item: DicomFile, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """The file's bytes in chunks; fails if it changed since the scan (size or modification time).

    The last chunk is held back until that check has passed: a request whose header already
    announced the scanned size is then cut short and refused by the server, instead of
    delivering a torn or mixed instance. A de-identified file (``item.rewrite``) comes out as
    the rewritten header its dry run kept followed by the original's tail, read and checked the
    same way (or, without a kept header, read whole and rewritten again in memory); its bytes
    must come out as long as they did in the dry run.

    Args:
        item: The scanned file.
        chunk_size: The largest chunk, in bytes.

    Yields:
        The file's bytes (rewritten when ``item.rewrite`` is set), ``chunk_size`` at most each.
    """
    rewrite = getattr(item, "rewrite", None)  # resource uploads stream members of their own through here
    if rewrite is None:
        yield from _checked_chunks(item.path, item.size, item.mtime_ns, 0, chunk_size)
        return
    rewrite.check_ready()  # a file of a session rewritten as it is sent, before its turn: never sent as is
    if rewrite.head is not None:
        if len(rewrite.head) + rewrite.original_size - rewrite.tail_start != item.size:
            raise _not_deterministic(item, len(rewrite.head) + rewrite.original_size - rewrite.tail_start)
        if rewrite.head:
            yield rewrite.head
        # only the tail: the header bytes before it were read (and checked) by the dry run
        yield from _checked_chunks(item.path, rewrite.original_size, item.mtime_ns, rewrite.tail_start, chunk_size)
    else:
        yield from _rewritten(item, rewrite, chunk_size)


def _checked_chunks(path: Path, size: int, mtime_ns: int, start: int, chunk_size: int) -> Iterator[bytes]:
    """Bytes ``start`` to ``size`` of the file in chunks.

    The last is held back until the file is known to be ``size`` bytes long and (``mtime_ns``) not
    modified since it was scanned.

    Yields:
        The file's bytes, ``chunk_size`` at most each.
    """
    remaining = size - start
    held: bytes = b""
    try:
        with open(path, "rb") as handle:
            if start:
                handle.seek(start)
            while remaining > 0:
                piece = handle.read(min(chunk_size, remaining))
                if not piece:
                    break
                remaining -= len(piece)
                if held:
                    yield held
                held = piece
            grew = handle.read(1)
            rewritten = bool(mtime_ns) and os.fstat(handle.fileno()).st_mtime_ns != mtime_ns
    except OSError as exc:
        raise InputError(f"Cannot read {path}: {exc.strerror or exc}", hint="Check the file and re-run") from None
    if remaining or grew or rewritten:
        raise InputError(
            f"{path} changed while being uploaded (scanned {size} bytes)",
            hint="Wait until the export has finished writing, then re-run",
        )
    if held:
        yield held


def _not_deterministic(item: DicomFile, size: int) -> InputError:
    return InputError(
        f"{item.path} was de-identified to {size} bytes while sending, {item.size} before: the script "
        "is not deterministic or the file changed",
        hint="Use hashUID rather than a new random UID in the script, then re-run",
    )


def _rewritten(item: DicomFile, rewrite: Rewrite, chunk_size: int) -> Iterator[bytes]:
    """``read_exactly`` of a de-identified file without a kept header.

    The original is read whole and checked, then rewritten again by the script.

    Yields:
        The rewritten file's bytes, ``chunk_size`` at most each.
    """
    original = b"".join(_checked_chunks(item.path, rewrite.original_size, item.mtime_ns, 0, chunk_size))
    try:
        data = rewrite.apply(original)
    except Exception as exc:  # noqa: BLE001 - the script failed on a second pass: nothing of this file is sent
        raise InputError(
            f"{item.path} could not be de-identified while sending: {type(exc).__name__}: {exc}",
            hint="Check the file with `xnat-flows anon check`, then re-run",
        ) from None
    if len(data) != item.size:
        raise _not_deterministic(item, len(data))
    for start in range(0, len(data), chunk_size):
        yield data if len(data) <= chunk_size else data[start : start + chunk_size]


def _walk(root: Path, skipped: list[SkippedFile]) -> list[tuple[Path, os.stat_result]]:
    """Regular files under ``root``, following symlinks without looping or listing a file twice.

    When two paths lead to the same file, the one reached without a symlink is kept.

    Returns:
        Each file's path and ``stat`` result, in the order found.
    """
    seen_dirs = {(root.stat().st_dev, root.stat().st_ino)}
    found: dict[tuple[int, int], tuple[Path, os.stat_result, bool]] = {}
    stack: list[tuple[Path, bool]] = [(root, False)]
    while stack:
        directory, via_link = stack.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            skipped.append(SkippedFile(directory, f"{UNREADABLE_DIRECTORY}: {exc.strerror or exc}"))
            continue
        subdirs: list[tuple[Path, bool]] = []
        for entry in entries:
            path = Path(entry.path)
            if entry.name.startswith("."):
                skipped.append(SkippedFile(path, "hidden " + ("directory" if entry.is_dir() else "file")))
                continue
            linked = via_link or entry.is_symlink()
            try:
                st = os.stat(entry.path)  # follows symlinks
            except OSError as exc:
                reason = "broken symlink" if entry.is_symlink() else f"{CANNOT_STAT}: {exc.strerror or exc}"
                skipped.append(SkippedFile(path, reason))
                continue
            key = (st.st_dev, st.st_ino)
            if stat.S_ISDIR(st.st_mode):
                if key in seen_dirs:
                    skipped.append(SkippedFile(path, "directory already scanned (symlink loop or duplicate link)"))
                else:
                    seen_dirs.add(key)
                    subdirs.append((path, linked))
            elif stat.S_ISREG(st.st_mode):
                if key in found:
                    kept, _, kept_linked = found[key]
                    if kept_linked and not linked:
                        found[key] = (path, st, linked)
                        path, kept = kept, path
                    skipped.append(SkippedFile(path, f"same file as {kept} (link)"))
                else:
                    found[key] = (path, st, linked)
            else:
                skipped.append(SkippedFile(path, "not a regular file"))
        stack.extend(reversed(subdirs))  # depth-first, alphabetical
    return [(path, st) for path, st, _ in found.values()]


def _truncated_pixel_data(ds: pydicom.Dataset, path: Path, file_size: int, transfer_syntax: str) -> str | None:
    """Why the pixel data is cut short, or None (pydicom itself reads such files silently)."""
    from pydicom.dataelem import RawDataElement  # loaded with the dataset already

    raw = ds.get_item(PIXEL_DATA_TAG, keep_deferred=True)
    # A deferred (not yet read) element comes back raw, with its place in the file.
    if not isinstance(raw, RawDataElement) or raw.value_tell is None:
        return None
    length = int(raw.length)
    if length == UNDEFINED_LENGTH:  # encapsulated (compressed) frames: no fixed size to check
        return None
    end = int(raw.value_tell) + length
    if transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        # pydicom reads the inflated dataset: its offsets count from the dataset's start there
        inflated = _inflated_length(path)
        if inflated is None:
            return "truncated: the deflated dataset ends before its compressed stream does"
        if end > inflated:
            return f"truncated: pixel data needs {end} bytes, the inflated dataset has {inflated}"
        return None
    if end > file_size:
        return f"truncated: pixel data needs {end} bytes, the file has {file_size}"
    return None


def _dataset_end(path: Path) -> int | None:
    """Where the dataset's last top-level element ends, by its own length.

    Short of the file's size (a partial element after it) or beyond it (a value cut short) when the
    file was cut inside its header; None when that cannot be told (undefined lengths, a deflated
    dataset).

    Returns:
        The offset of the last element's end, or None.
    """
    import pydicom
    from pydicom.dataelem import RawDataElement

    try:
        ds = pydicom.dcmread(path, defer_size=256)
    except Exception:  # noqa: BLE001 - pydicom raises many types; the caller has its verdict already
        return None
    tags = list(ds.keys())
    last = ds.get_item(tags[-1], keep_deferred=True) if tags else None
    if not isinstance(last, RawDataElement) or last.value_tell is None or last.length == UNDEFINED_LENGTH:
        return None
    return int(last.value_tell) + int(last.length)


def _inflated_length(path: Path) -> int | None:
    """Length of a deflated file's dataset once inflated; None when the stream is cut short."""
    with open(path, "rb") as handle:
        head = handle.read(_FILE_META_HEAD_BYTES)
        handle.seek(read_file_meta(head).dataset_offset)
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        length = 0
        while not inflater.eof and (chunk := handle.read(1 << 20)):
            while chunk and not inflater.eof:  # bounded output per step: a bomb cannot fill memory
                length += len(inflater.decompress(chunk, 1 << 20))
                chunk = inflater.unconsumed_tail
    return length if inflater.eof else None


_NOT_DICOM = "not DICOM (no DICM marker at byte 128)"
_DICOMDIR = "DICOMDIR (a media index, not an image)"
_NOTHING_AFTER_META = f"{TRUNCATED}: nothing after the DICOM file meta header"
_HEADER_CUT = "(truncated or corrupt)"


def _is_dicomdir(path: Path, sop_class: str) -> bool:
    return sop_class == MEDIA_STORAGE_DIRECTORY_SOP_CLASS or path.name.upper() == "DICOMDIR"


def read_header(path: Path, root: Path, st: os.stat_result) -> DicomFile | SkippedFile:
    """Classify one file: a ``DicomFile`` to upload or a ``SkippedFile`` saying why not."""
    import pydicom  # here, not at module level: the file-meta path does without its ~0.2 s import

    try:
        if not is_dicom_part10(path):
            return SkippedFile(path, _NOT_DICOM)
        # defer_size: large values (the pixel data) are skipped, not read
        ds = pydicom.dcmread(path, defer_size=1024, specific_tags=_HEADER_TAGS)
    except PermissionError:
        return SkippedFile(path, UNREADABLE_PERMISSION)
    except OSError as exc:
        return SkippedFile(path, f"{UNREADABLE}: {exc.strerror or exc}")
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types; one bad file must not stop a scan
        return SkippedFile(path, f"unreadable DICOM header {_HEADER_CUT}: {type(exc).__name__}: {exc}")
    try:
        return _classify(path, root, st, ds)
    except Exception as exc:  # noqa: BLE001 - values are decoded lazily, so corrupt ones surface here
        return SkippedFile(path, f"corrupt DICOM header: {type(exc).__name__}: {exc}")


def _classify(path: Path, root: Path, st: os.stat_result, ds: pydicom.Dataset) -> DicomFile | SkippedFile:
    meta = getattr(ds, "file_meta", None)
    sop_class = str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta else ""))
    if _is_dicomdir(path, sop_class):
        return SkippedFile(path, _DICOMDIR)
    if len(ds) == 0:
        return SkippedFile(path, _NOTHING_AFTER_META)
    sop_instance = str(ds.get("SOPInstanceUID", "") or (meta.get("MediaStorageSOPInstanceUID", "") if meta else ""))
    study = str(ds.get("StudyInstanceUID", "") or "")
    series = str(ds.get("SeriesInstanceUID", "") or "")
    for name, value in (("StudyInstanceUID", study), ("SeriesInstanceUID", series), ("SOPInstanceUID", sop_instance)):
        if not value:
            if _dataset_end(path) not in (None, st.st_size):  # pydicom stops silently at a cut element
                return SkippedFile(path, f"{TRUNCATED}: the DICOM header ends before its {name}")
            return SkippedFile(path, f"DICOM without {name}: XNAT cannot place it")
    transfer_syntax = str(meta.get("TransferSyntaxUID", "")) if meta else ""
    truncated = _truncated_pixel_data(ds, path, st.st_size, transfer_syntax)
    if truncated:
        return SkippedFile(path, truncated)
    try:
        series_number = int(ds.get("SeriesNumber")) if ds.get("SeriesNumber") not in (None, "") else None
    except (TypeError, ValueError):
        series_number = None
    return DicomFile(
        path=path,
        relpath=portable_relpath(path, root),
        size=st.st_size,
        study_uid=study,
        series_uid=series,
        series_number=series_number,
        sop_instance_uid=sop_instance,
        sop_class_uid=sop_class,
        transfer_syntax=transfer_syntax,
        mtime_ns=st.st_mtime_ns,
    )


def _read_head(path: Path, st: os.stat_result) -> tuple[bytes, bytes, FileMeta] | SkippedFile | None:
    """The file's first bytes, last 8 bytes and file meta; a ``SkippedFile`` for junk and unreadable files.

    None when the meta group is unusual (pydicom reads it and says why).

    Returns:
        The head, the tail and the file meta; a ``SkippedFile``; or None.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(_FILE_META_HEAD_BYTES)
            if not has_magic(head):
                return SkippedFile(path, _NOT_DICOM)
            try:
                meta = read_file_meta(head, file_size=st.st_size)
            except MetaTooShort as short:  # an unusually long meta group
                head += handle.read(short.needed - len(head) + HEAD_BYTES)
                meta = read_file_meta(head, file_size=st.st_size)
            if len(head) < st.st_size:
                handle.seek(-8, os.SEEK_END)
                tail = handle.read(8)
            else:
                tail = head[-8:]
    except PermissionError:
        return SkippedFile(path, UNREADABLE_PERMISSION)
    except OSError as exc:
        return SkippedFile(path, f"{UNREADABLE}: {exc.strerror or exc}")
    except ValueError:  # implicit-VR meta, missing UIDs, cut short
        return None
    if _is_dicomdir(path, meta.sop_class_uid):
        return SkippedFile(path, _DICOMDIR)
    if meta.dataset_offset >= st.st_size:
        return SkippedFile(path, _NOTHING_AFTER_META)
    return head, tail, meta


def _whole_file_head(path: Path, root: Path, st: os.stat_result) -> tuple[bytes, FileMeta] | DicomFile | SkippedFile:
    """The first bytes and file meta of a Part-10 file whose pixel data reaches its end.

    For junk, an unreadable file, or anything these bytes cannot confirm (no image, trailing
    elements, cut short, an unusual meta group), the verdict itself: skipped, or pydicom's
    ``read_header``.

    Returns:
        The head and file meta, or the file's verdict.
    """
    read = _read_head(path, st)
    if read is None:
        return read_header(path, root, st)
    if isinstance(read, SkippedFile):
        return read
    head, tail, meta = read
    if not pixel_data_reaches_end(head, tail, meta, st.st_size):
        return read_header(path, root, st)
    return head, meta


def read_file_header(path: Path, root: Path, st: os.stat_result) -> DicomFile | SkippedFile:
    """``read_header``'s result, ~10x faster for the ordinary file.

    The UIDs are read from the dataset's first bytes (``part10.read_series_keys``) and the file is
    confirmed whole by its pixel data reaching the end. Anything this cannot confirm is read by
    pydicom.

    Args:
        path: The file.
        root: The scanned folder (for the relative path).
        st: The file's ``stat`` result, from the walk.

    Returns:
        The instance, or why it is skipped.
    """
    read = _whole_file_head(path, root, st)
    if not isinstance(read, tuple):
        return read
    head, meta = read
    keys = read_series_keys(head, meta)
    if keys is None:
        return read_header(path, root, st)
    return DicomFile(
        path=path,
        relpath=portable_relpath(path, root),
        size=st.st_size,
        study_uid=keys.study_uid,
        series_uid=keys.series_uid,
        series_number=keys.series_number,
        sop_instance_uid=keys.sop_instance_uid,
        sop_class_uid=keys.sop_class_uid,
        transfer_syntax=meta.transfer_syntax,
        mtime_ns=st.st_mtime_ns,
    )


def read_file_meta_header(path: Path, root: Path, st: os.stat_result) -> DicomFile | SkippedFile:
    """Classify one file from its file meta group, confirming its pixel data reaches the end of the file.

    Anything this cannot confirm is classified by ``read_header`` (pydicom) instead.

    Args:
        path: The file.
        root: The scanned folder (for the relative path).
        st: The file's ``stat`` result, from the walk.

    Returns:
        The instance (study and series UIDs left empty), or why it is skipped.
    """
    read = _whole_file_head(path, root, st)
    if not isinstance(read, tuple):
        return read
    _, meta = read
    return DicomFile(
        path=path,
        relpath=portable_relpath(path, root),
        size=st.st_size,
        study_uid="",
        series_uid="",
        series_number=None,
        sop_instance_uid=meta.sop_instance_uid,
        sop_class_uid=meta.sop_class_uid,
        transfer_syntax=meta.transfer_syntax,
        mtime_ns=st.st_mtime_ns,
    )


def _same_content(a: DicomFile, b: DicomFile) -> bool:
    if a.size != b.size:
        return False
    try:
        with open(a.path, "rb") as first, open(b.path, "rb") as second:
            while True:
                chunk = first.read(1 << 20)
                if chunk != second.read(1 << 20):
                    return False
                if not chunk:
                    return True
    except OSError:
        return False


def _one_file_per_instance(result: ScanResult, duplicates: Duplicates) -> list[DicomFile]:
    """XNAT stores one file per SOP Instance UID.

    Sending a copy twice (possibly in two parallel batches) only invites "Concurrent file sends of
    the same data" refusals. Identical copies are junk; different files claiming one instance (a
    corrected re-export beside the original) are a conflict, resolved by ``duplicates`` and recorded
    in ``result.conflicts``.

    Returns:
        The files to send, one per SOP Instance UID, in path order.
    """
    groups: dict[str, list[DicomFile]] = {}
    for f in result.files:  # sorted by path
        groups.setdefault(f.sop_instance_uid, []).append(f)
    kept: list[DicomFile] = []
    unresolved: list[str] = []
    tied: list[str] = []
    for group in groups.values():
        versions = [group[0]]
        for f in group[1:]:
            same = next((v for v in versions if _same_content(v, f)), None)
            if same is not None:
                result.skipped.append(SkippedFile(f.path, f"same SOP Instance UID as {same.relpath}"))
            else:
                versions.append(f)
        if len(versions) == 1:
            kept.append(versions[0])
            continue
        result.conflicts.append(versions)
        if duplicates == "stop":
            unresolved.append(" and ".join(v.relpath for v in versions))
            continue
        chosen = (max if duplicates == "newest" else min)(versions, key=lambda v: v.mtime_ns)
        if sum(1 for v in versions if v.mtime_ns == chosen.mtime_ns) > 1:
            # the modification times cannot tell which is the newer (a copy that kept its times):
            # choosing by path would be a guess between two versions of a patient's image
            tied.append(" and ".join(v.relpath for v in versions if v.mtime_ns == chosen.mtime_ns))
            continue
        kept.append(chosen)
        for v in versions:
            if v is not chosen:
                result.skipped.append(
                    SkippedFile(
                        v.path,
                        (
                            f"{CONFLICT}: same SOP Instance UID as {chosen.relpath}, different content; "
                            f"sent the {'newer' if duplicates == 'newest' else 'older'} file by modification time"
                        ),
                    )
                )
    if tied:
        raise InputError(
            f"{len(tied)} SOP Instance UIDs are each held by different files with the same modification time, so "
            f"{duplicates} cannot tell which to send, e.g. {tied[0]}",
            hint="Remove the wrong copies (or touch the right one) and run again",
        )
    if unresolved:
        raise InputError(
            f"{len(unresolved)} SOP Instance UIDs are each held by different files, e.g. {unresolved[0]}",
            hint="Remove the wrong copies, or choose which to send: newest or oldest by modification time",
        )
    return sorted(kept, key=lambda f: f.relpath)


def scan_directory(
    root: str | os.PathLike[str],
    headers: ScanHeaders = "full",
    duplicates: Duplicates = "newest",
    *,
    skip_truncated: bool = False,
) -> ScanResult:
    """Every DICOM instance under ``root`` (recursive, sorted by relative path) and every skip.

    Args:
        root: The folder.
        headers: How much of each file to read: ``"full"``, or ``"file-meta"`` (what a C-STORE
            needs; study and series UIDs left empty; module docstring).
        duplicates: Which of two different files holding one SOP Instance UID to send: ``"newest"``
            or ``"oldest"`` by modification time, or ``"stop"`` (``InputError``).
        skip_truncated: List DICOM files cut short as skipped instead of failing the scan with
            ``IncompleteExportError`` (the default: such a folder is an export still being written).

    Returns:
        The instances to send and the files skipped.
    """
    if headers not in ("full", "file-meta"):
        raise InputError(f"Unknown header depth {headers!r}", hint="Use 'full' or 'file-meta'")
    if duplicates not in ("newest", "oldest", "stop"):
        raise InputError(f"Unknown duplicates choice {duplicates!r}", hint="Use 'newest', 'oldest' or 'stop'")
    root_path = Path(root).expanduser()
    if not root_path.exists():
        raise InputError(f"{root_path} does not exist", hint="Pass the directory that holds the DICOM files")
    if not root_path.is_dir():
        raise InputError(
            f"{root_path} is not a directory",
            hint="Pass the directory that holds the DICOM files (a single archive is not scanned)",
        )
    root_path = root_path.absolute()
    result = ScanResult(root=root_path, headers=headers)
    classify = read_file_header if headers == "full" else read_file_meta_header
    for path, st in _walk(root_path, result.skipped):
        outcome = classify(path, root_path, st)
        if isinstance(outcome, DicomFile):
            result.files.append(outcome)
        else:
            result.skipped.append(outcome)
    truncated = sorted((s for s in result.skipped if s.truncated), key=lambda s: str(s.path))
    if truncated and not skip_truncated:
        shown = "; ".join(f"{s.path}: {s.reason}" for s in truncated[:10])
        more = f"; and {len(truncated) - 10} more" if len(truncated) > 10 else ""
        raise IncompleteExportError(
            f"{len(truncated)} DICOM files under {root_path} are cut short (an export still being written?), "
            f"so nothing was sent: {shown}{more}",
            truncated=truncated,
        )
    result.files.sort(key=lambda f: f.relpath)
    result.files = _one_file_per_instance(result, duplicates)
    result.skipped.sort(key=lambda s: str(s.path))
    if not result.files:
        reasons = sorted({s.reason.split(":")[0] for s in result.skipped})
        raise InputError(
            f"No DICOM files found under {root_path}"
            + (f" ({len(result.skipped)} files skipped: {', '.join(reasons)})" if result.skipped else " (it is empty)"),
            hint="Point at the directory of a DICOM export; files are recognised by content (DICM at byte 128)",
        )
    return result
