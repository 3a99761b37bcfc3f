"""The optional mapping CSV: mode 0600, only where asked, each replacement once."""

from __future__ import annotations

import csv
import os
import stat
import threading
from pathlib import Path

from anon_helpers import VARIABLES, part10

from xnat_flows.anon import MappingCsv, basic_profile, compile_script
from xnat_flows.anon.functions import hash_uid

SCRIPT = compile_script(
    'version "6.1"\n(0010,0020) := session\n(0020,000D) := hashUID[(0020,000D)]\n(0008,0070) := "x"'
)


def rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def test_mapping_records_identifiers_a_script_replaced(tmp_path: Path) -> None:
    path = tmp_path / "ids.csv"
    with MappingCsv(path) as mapping:
        SCRIPT.apply_bytes(part10(), VARIABLES, mapping=mapping)
        SCRIPT.apply_bytes(part10(), VARIABLES, mapping=mapping)  # the same study again: no duplicates
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert rows(path) == [
        ["attribute", "original", "replacement"],
        ["PatientID", "MRN0001", "SUBJ01_MR1"],
        ["StudyInstanceUID", "1.2.826.0.1.3680043.8.498.2", hash_uid("1.2.826.0.1.3680043.8.498.2")],
    ]


def test_mapping_of_the_profile_lists_hashed_uids(tmp_path: Path) -> None:
    with MappingCsv(tmp_path / "ids.csv") as mapping:
        basic_profile().apply_bytes(part10(), mapping=mapping)
    recorded = {row[0] for row in rows(tmp_path / "ids.csv")[1:]}
    assert {"SOPInstanceUID", "StudyInstanceUID", "PatientID"} <= recorded


def test_no_mapping_unless_asked(tmp_path: Path) -> None:
    SCRIPT.apply_bytes(part10(), VARIABLES)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_file_is_made_private_and_appended(tmp_path: Path) -> None:
    path = tmp_path / "ids.csv"
    path.write_text("attribute,original,replacement\nPatientID,a,b\n")
    os.chmod(path, 0o644)
    with MappingCsv(path) as mapping:
        SCRIPT.apply_bytes(part10(), VARIABLES, mapping=mapping)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert rows(path)[1] == ["PatientID", "a", "b"]
    assert len(rows(path)) == 4


def test_mapping_is_safe_for_upload_threads(tmp_path: Path) -> None:
    path = tmp_path / "ids.csv"
    data = part10()
    with MappingCsv(path) as mapping:
        threads = [
            threading.Thread(target=lambda: SCRIPT.apply_bytes(data, VARIABLES, mapping=mapping)) for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(rows(path)) == 3


def test_repr_never_shows_values(tmp_path: Path) -> None:
    with MappingCsv(tmp_path / "ids.csv") as mapping:
        SCRIPT.apply_bytes(part10(), VARIABLES, mapping=mapping)
        assert "MRN0001" not in repr(mapping)
