"""Split files into N upload batches of similar byte size (N = workers)."""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from xnat_flows.transfer.scan import DicomFile


def partition_by_bytes(files: Sequence[DicomFile], n: int) -> list[list[DicomFile]]:
    """``min(n, len(files))`` non-empty batches, balanced by bytes.

    Greedy: largest file first into the currently lightest batch, so the slowest batch (which
    decides when the upload ends) is as small as possible. Within a batch the files keep
    their path order, and batch order is deterministic for the same input.

    Args:
        files: The files to send.
        n: The number of batches wanted (the workers).

    Returns:
        The batches.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    count = min(n, len(files))
    if count == 0:
        return []
    heap = [(0, index) for index in range(count)]  # (bytes, batch index): ties go to the lower index
    members: list[list[int]] = [[] for _ in range(count)]
    order = sorted(range(len(files)), key=lambda i: (-files[i].size, files[i].relpath))
    for i in order:
        load, index = heapq.heappop(heap)
        members[index].append(i)
        heapq.heappush(heap, (load + files[i].size, index))
    return [sorted((files[i] for i in batch), key=lambda f: f.relpath) for batch in members]


def partition_in_order(files: Sequence[DicomFile], n: int) -> list[list[DicomFile]]:
    """``min(n, len(files))`` non-empty batches of consecutive files, balanced by bytes.

    For a session de-identified as it is sent (``deidentify.StreamedDeidentification``), whose
    files are rewritten in order: the first batch is ready after its own files, not after files
    spread over the whole session. A batch ends where the bytes so far reach its share of the
    total; deterministic for the same input (the resume journal's records).

    Args:
        files: The files to send, in the order they are rewritten.
        n: The number of batches wanted (the workers).

    Returns:
        The batches, in order.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    count = min(n, len(files))
    if count == 0:
        return []
    total = sum(f.size for f in files)
    batches: list[list[DicomFile]] = [[]]
    done = 0
    for index, item in enumerate(files):
        left_after = len(files) - index  # files from this one on
        must_cut = len(batches) < count and left_after == count - len(batches)  # one file per batch left
        full = done >= total * len(batches) / count
        if batches[-1] and len(batches) < count and (full or must_cut):
            batches.append([])
        batches[-1].append(item)
        done += item.size
    return batches
