"""The repository speaks for itself: no reference to documents a reader of the repository cannot open.

Comments and docs cite XNAT's documentation (wiki page titles), xnat-web's source, the DICOM
standard or the project's own docs/, never notes kept outside the repository.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
THIS_FILE = Path(__file__).resolve().relative_to(REPO).as_posix()

# References that only make sense on the machine the project was written on.
OUTSIDE_REFERENCES = re.compile(
    r"\.\./shared|/work/|field[-_ ]?notes|spec\s*§|xnat-api\.md",
    re.IGNORECASE,
)


def tracked_files() -> list[str]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: nothing tracked to check")
    listing = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout
    return [name for name in listing.decode().split("\0") if name and name != THIS_FILE]


def test_no_tracked_file_refers_to_documents_outside_the_repository() -> None:
    offenders: list[str] = []
    files = tracked_files()
    for name in files:
        path = REPO / name
        if not path.is_file():
            continue  # deleted in the work tree but still in the index
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary test data
        for number, line in enumerate(text.splitlines(), start=1):
            if OUTSIDE_REFERENCES.search(line):
                offenders.append(f"{name}:{number}: {line.strip()}")
    assert files, "git ls-files listed nothing"
    assert not offenders, (
        "cite XNAT's documentation or source, the DICOM standard or docs/*.md instead of:\n" + "\n".join(offenders)
    )


@pytest.mark.parametrize(
    "line",
    [
        "see ../shared/spec for the rules",
        "as measured in /work/shared/spec/field-notes.md",
        "Nagle costs 40 ms (field notes)",
        "grouping (spec §3.5)",
        "routing (xnat-api.md §7.3)",
    ],
)
def test_the_check_recognises_outside_references(line: str) -> None:
    assert OUTSIDE_REFERENCES.search(line)


@pytest.mark.parametrize(
    "line",
    [
        "The DICOM Part-10 file meta group (PS3.10 §7.1)",
        "XNAT wiki: Image Session Import Service API",
        "xnat-web `SecureResource.getFileWritersAndLoadParams`",
        "see docs/cstore.md",
    ],
)
def test_the_check_lets_real_citations_pass(line: str) -> None:
    assert not OUTSIDE_REFERENCES.search(line)
