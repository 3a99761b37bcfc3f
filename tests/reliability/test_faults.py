"""Every fault of the catalogue, on every transport: nothing lost, nothing duplicated, a re-run finishes.

The catalogue (``reliability_catalogue.py``) is shared with ``bench/fault_table.py``; each case
is one test here. See docs/reliability.md for the table of outcomes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_catalogue import CATALOGUE, PROJECT, FaultCase, Harness, run_case, run_upload

pytestmark = pytest.mark.e2e


def _param(case: FaultCase):
    marks = [pytest.mark.xfail(strict=True, reason=case.known_bug)] if case.known_bug else []
    return pytest.param(case, id=f"{case.transport}-{case.id}", marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CATALOGUE])
def test_fault_loses_and_duplicates_nothing(case: FaultCase, tmp_path: Path) -> None:
    result = run_case(case, tmp_path)

    assert not result.unlisted_after_run1, (
        f"run 1 ({result.run1.describe()}) did not land and did not list: {sorted(result.unlisted_after_run1)}"
    )
    if result.run1.ok:
        assert not result.missing_after_run1, (
            f"run 1 claimed success but these did not land: {sorted(result.missing_after_run1)}"
        )
    assert result.rerun.ok, f"the re-run did not complete: {result.rerun.error or sorted(result.rerun.listed)}"
    assert result.landed == result.expected, f"{result.landed} of {result.expected} instances in the archive"
    assert result.duplicates == 0, f"{result.duplicates} duplicate or stray files in the archive"
    assert result.sessions == 1, f"{result.sessions} sessions instead of one"
    assert result.corrupt == 0, f"{result.corrupt} archived files match no version of their source file"
    assert result.leftovers == 0, f"{result.leftovers} prearchive rows left behind"


@pytest.mark.parametrize(
    "transport",
    [
        "dicom-zip",
        "gradual-dicom",
        "c-store",
    ],
)
def test_repeating_a_completed_upload_duplicates_nothing(transport: str, tmp_path: Path) -> None:
    """The same upload run twice (a user unsure whether it worked): still one copy of everything.

    C-STORE cannot ask XNAT to overwrite, and a repeated instance would park the repeat in a
    CONFLICT prearchive row: its journal keeps every confirmed instance, so the repeat sends none.
    """
    case = FaultCase("repeat", transport, "completed upload run again")
    harness = Harness(tmp_path, scp=transport == "c-store")
    try:
        first = run_upload(harness, case, 30.0)
        harness.settle()
        second = run_upload(harness, case, 30.0)
        harness.settle()
        uids = harness.archived_uids()

        assert first.ok and second.ok, (first, second)
        assert set(uids) == harness.expected_uids
        assert len(uids) == len(set(uids)), "duplicate instances in the archive"
        assert len(harness.emulator.archived_experiments(PROJECT)) == 1
        assert harness.leftovers() == 0, harness.emulator.prearchive_sessions(include_direct_archive=True)
    finally:
        harness.close()
