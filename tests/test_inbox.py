"""Inbox mechanics without Prefect: quiet period, claims, moves, crash recovery."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xnat_flows.inbox import (
    InboxLayout,
    candidate_folders,
    claim_new,
    claim_orphan,
    is_quiet,
    last_change,
    orphaned_folders,
    unique_path,
)


@pytest.fixture
def layout(tmp_path: Path) -> InboxLayout:
    root = tmp_path / "inbox"
    root.mkdir()
    inbox = InboxLayout(root)
    inbox.ensure()
    return inbox


def _drop(layout: InboxLayout, name: str, age_seconds: float = 0.0) -> Path:
    folder = layout.root / name
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "IM1").write_bytes(b"x" * 10)
    if age_seconds:
        past = time.time() - age_seconds
        for path in (folder / "sub" / "IM1", folder / "sub", folder):
            os.utime(path, (past, past))
    return folder


def test_missing_inbox_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        InboxLayout(tmp_path / "nope").ensure()


def test_candidates_exclude_reserved_and_hidden_folders(layout: InboxLayout) -> None:
    _drop(layout, "b")
    _drop(layout, "a")
    (layout.root / ".partial").mkdir()
    (layout.root / "loose-file.dcm").write_bytes(b"")
    assert [p.name for p in candidate_folders(layout)] == ["a", "b"]


def test_quiet_period_uses_the_latest_change_in_the_tree(layout: InboxLayout) -> None:
    folder = _drop(layout, "s")
    now = time.time()
    assert not is_quiet(folder, quiet_seconds=60, now=now)
    assert is_quiet(folder, quiet_seconds=60, now=now + 61)
    # A file written later resets the clock even if everything else is old.
    time.sleep(0.05)  # the point: the clock moves on before the late file is written
    (folder / "sub" / "IM2").write_bytes(b"y")
    assert last_change(folder) > now


def test_preserved_old_mtimes_do_not_fool_the_quiet_period(layout: InboxLayout) -> None:
    """cp -p / rsync -a keep old mtimes; ctime still shows the folder just arrived."""
    folder = _drop(layout, "copied", age_seconds=3600)
    assert not is_quiet(folder, quiet_seconds=60)


def test_claim_moves_into_processing_and_excludes_other_claims(layout: InboxLayout) -> None:
    folder = _drop(layout, "s1")
    claim = claim_new(layout, folder)
    assert claim is not None
    assert claim.path == layout.processing / "s1" and claim.path.is_dir() and not folder.exists()
    # Another run sees it in processing/ but cannot take it while this run holds it.
    assert claim_orphan(layout.processing / "s1") is None
    assert claim_new(layout, folder) is None  # and the original name is gone
    claim.release()
    recovered = claim_orphan(layout.processing / "s1")
    assert recovered is not None and recovered.recovered
    recovered.release()


def test_claim_is_exclusive_across_processes(layout: InboxLayout) -> None:
    folder = _drop(layout, "s1")
    claim = claim_new(layout, folder)
    assert claim is not None
    code = (
        "import sys; from pathlib import Path; from xnat_flows.inbox import claim_orphan;"
        "sys.exit(0 if claim_orphan(Path(sys.argv[1])) is None else 1)"
    )
    assert subprocess.run([sys.executable, "-c", code, str(claim.path)], timeout=60, check=False).returncode == 0
    claim.release()


def test_a_crashed_holder_releases_its_claim(layout: InboxLayout) -> None:
    """A process that claimed a folder and died (no cleanup at all) leaves it in processing/, unlocked."""
    folder = _drop(layout, "crash")
    code = (
        "import os, sys; from pathlib import Path; from xnat_flows.inbox import InboxLayout, claim_new;"
        "c = claim_new(InboxLayout(Path(sys.argv[1])), Path(sys.argv[2])); assert c is not None; os._exit(9)"
    )
    result = subprocess.run([sys.executable, "-c", code, str(layout.root), str(folder)], timeout=60, check=False)
    assert result.returncode == 9
    assert [p.name for p in orphaned_folders(layout)] == ["crash"]
    claim = claim_orphan(layout.processing / "crash")
    assert claim is not None and claim.recovered
    claim.release()


def test_finish_moves_the_folder_and_writes_the_report_beside_it(layout: InboxLayout) -> None:
    claim = claim_new(layout, _drop(layout, "s1"))
    assert claim is not None
    moved, report = claim.finish(layout.done, {"status": "done", "files_sent": 1})
    assert moved == layout.done / "s1" and (moved / "sub" / "IM1").is_file()
    assert report == layout.done / "s1.report.json"
    assert json.loads(report.read_text()) == {"status": "done", "files_sent": 1}
    assert not list(layout.processing.iterdir())
    # The lock went with the claim: the folder can be locked again by anyone.
    again = claim_orphan(moved)
    assert again is not None
    again.release()


def test_same_name_dropped_twice_never_overwrites(layout: InboxLayout) -> None:
    first = claim_new(layout, _drop(layout, "s1"))
    assert first is not None
    first.finish(layout.done, {"n": 1})
    second = claim_new(layout, _drop(layout, "s1"))
    assert second is not None
    moved, report = second.finish(layout.done, {"n": 2})
    assert moved.name == "s1.2" and json.loads(report.read_text()) == {"n": 2}
    assert json.loads((layout.done / "s1.report.json").read_text()) == {"n": 1}
    assert unique_path(layout.done, "s1") == layout.done / "s1.3"
