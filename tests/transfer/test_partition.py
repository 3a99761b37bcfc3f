from __future__ import annotations

import random
from pathlib import Path

import pytest

from xnat_flows.transfer.partition import partition_by_bytes, partition_in_order
from xnat_flows.transfer.scan import DicomFile


def fake(name: str, size: int) -> DicomFile:
    return DicomFile(
        Path(name), name, size, "1.2", "1.2.3", 1, f"1.2.3.{name}", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1"
    )


def test_batches_are_balanced_by_bytes_and_keep_every_file() -> None:
    rng = random.Random(7)
    files = [fake(f"f{i:03d}", rng.randint(1_000, 500_000)) for i in range(200)]
    batches = partition_by_bytes(files, 4)
    assert len(batches) == 4
    assert sorted(f.relpath for b in batches for f in b) == [f.relpath for f in files]
    loads = [sum(f.size for f in b) for b in batches]
    assert max(loads) - min(loads) <= max(f.size for f in files)


def test_one_huge_file_gets_its_own_batch() -> None:
    files = [fake("big", 1000)] + [fake(f"s{i}", 10) for i in range(10)]
    batches = partition_by_bytes(files, 2)
    assert [f.relpath for f in batches[0]] == ["big"]
    assert len(batches[1]) == 10


def test_more_workers_than_files_gives_one_file_per_batch_and_no_empty_batch() -> None:
    files = [fake("a", 5), fake("b", 7)]
    batches = partition_by_bytes(files, 8)
    assert sorted(len(b) for b in batches) == [1, 1]
    assert partition_by_bytes([], 4) == []


def test_deterministic_and_path_ordered_within_a_batch() -> None:
    files = [fake(f"f{i:02d}", 100 + (i % 5)) for i in range(30)]
    first = partition_by_bytes(files, 3)
    assert first == partition_by_bytes(list(reversed(files)), 3)
    for batch in first:
        assert [f.relpath for f in batch] == sorted(f.relpath for f in batch)


def test_rejects_zero_workers() -> None:
    with pytest.raises(ValueError):
        partition_by_bytes([fake("a", 1)], 0)


def test_in_order_batches_are_consecutive_balanced_and_deterministic() -> None:

    sizes = [9, 1, 1, 1, 5, 5, 2, 2, 2, 2, 4, 6]
    files = [fake(f"f{i:02d}", size) for i, size in enumerate(sizes)]
    batches = partition_in_order(files, 3)
    assert [f for batch in batches for f in batch] == files  # consecutive, in order, every file once
    assert [sum(f.size for f in batch) for batch in batches] == [17, 11, 12]
    assert partition_in_order(files, 3) == batches
    assert [len(b) for b in partition_in_order(files[:2], 4)] == [1, 1]  # never an empty batch
    assert partition_in_order([], 4) == []
    with pytest.raises(ValueError):
        partition_in_order(files, 0)
