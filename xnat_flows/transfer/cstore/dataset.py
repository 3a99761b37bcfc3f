"""The bytes a C-STORE sends for one file: its dataset exactly as encoded on disk, or an in-memory copy.

De-identified (``transfer.deidentify``) and/or, with a routing override, with PatientComments set.
The user's files are never written.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from xnat_flows.transfer.part10 import dataset_offset, little_endian_vr, read_file_meta

if TYPE_CHECKING:
    from xnat_flows.transfer.deidentify import Rewrite


def dataset_to_send(
    path: str, size: int, mtime_ns: int, routing_comment: str | None, rewrite: Rewrite | None = None
) -> memoryview:
    """The dataset to send: the file's own encoded bytes, or an edited in-memory copy.

    ``rewrite``: the file is de-identified; ``size`` is then the rewritten instance's (as the
    dry run before sending found it) and the file on disk holds ``rewrite.original_size`` bytes.

    Args:
        path: The file on disk.
        size: Its size when scanned (the rewritten instance's with ``rewrite``).
        mtime_ns: Its modification time when scanned; 0: not known, only the size is checked.
        routing_comment: PatientComments to set on the copy sent (``RoutingOverride.comment``), or None.
        rewrite: How the file is de-identified, or None.

    Returns:
        The dataset's bytes after the file meta information, as they go out.

    Raises:
        ValueError: The file is not the one scanned (size or modification time changed, also
            while it was being read): an export still being written must not be sent half-done,
            and what the scan listed is what the result reports.
    """
    on_disk = size if rewrite is None else rewrite.original_size
    data, before, after = _read_whole(path, on_disk)
    if len(data) != on_disk or after.st_mtime_ns != before.st_mtime_ns or (mtime_ns and before.st_mtime_ns != mtime_ns):
        raise ValueError(
            f"it changed since the scan ({on_disk} bytes then, {after.st_size} now); "
            "wait until the export has finished writing, then re-run"
        )
    if rewrite is not None:
        try:
            data = rewrite.apply(data)
        except Exception as exc:  # noqa: BLE001 - the script failed on a second pass: the file is not sent
            raise ValueError(f"the de-identification script failed on it: {type(exc).__name__}: {exc}") from None
        if len(data) != size:
            raise ValueError(
                f"it was de-identified to {len(data)} bytes while sending, {size} before (a script that is not "
                "deterministic: use hashUID, not a new random UID)"
            )
    if routing_comment is None:
        return memoryview(data)[dataset_offset(data) :]  # sent as encoded, never decoded
    return memoryview(with_patient_comments(data, routing_comment))


def _read_whole(path: str, size: int) -> tuple[bytes, os.stat_result, os.stat_result]:
    """The file's bytes (at most ``size + 1``: enough to see it grew) with its status before and after reading.

    Plain ``os`` calls: a buffered ``open`` costs ~8 µs more per file (a tty check, the buffer),
    which shows at thousands of instances.

    Returns:
        The bytes read, and the file's status before and after.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        before = os.fstat(fd)
        pieces = []
        remaining = size + 1
        while remaining > 0:  # one read for a local file; more where a file system returns less
            piece = os.read(fd, remaining)
            if not piece:
                break
            pieces.append(piece)
            remaining -= len(piece)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    return (pieces[0] if len(pieces) == 1 else b"".join(pieces)), before, after


def with_patient_comments(part10: bytes, comment: str) -> bytes:
    """The file's dataset, re-encoded in its own transfer syntax with PatientComments set.

    Little-endian, non-deflated datasets (nearly all) are read and written as a bare dataset:
    pydicom keeps untouched elements as raw bytes, so only PatientComments changes, at twice
    the speed of a whole-file round trip. Deflated and big-endian data take that round trip.

    Args:
        part10: The whole Part 10 file.
        comment: The PatientComments value (XNAT's ``Project:X Subject:Y Session:Z`` routing).

    Returns:
        The dataset's bytes (without the file meta information), in the file's transfer syntax.
    """
    import io

    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset
    from pydicom.filewriter import write_dataset

    meta = read_file_meta(part10)
    encoding = little_endian_vr(meta.transfer_syntax)
    if encoding is not None:
        implicit = encoding == "implicit"
        dataset = read_dataset(
            io.BytesIO(memoryview(part10)[meta.dataset_offset :]), is_implicit_VR=implicit, is_little_endian=True
        )
        dataset.PatientComments = comment
        buffer = DicomBytesIO()
        buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
        write_dataset(buffer, dataset)
        return buffer.getvalue()
    dataset = pydicom.dcmread(io.BytesIO(part10))
    dataset.PatientComments = comment
    whole = io.BytesIO()
    dataset.save_as(whole, enforce_file_format=True)  # same transfer syntax as the file
    encoded = whole.getvalue()
    return encoded[dataset_offset(encoded) :]
