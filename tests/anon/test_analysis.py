"""anon.analysis: what a script provably does to StudyInstanceUID, decided before any file is read.

Shown only when true: each script judged to keep one study per original study is applied to two
instances of one study that differ in every other attribute, and they must come out in one study.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from anon_helpers import VARIABLES, make_dataset, read, to_part10

from xnat_flows.anon import basic_profile, compile_script

DEFAULT_SITE_SCRIPT = (Path(__file__).parent / "fixtures" / "xnat_default_id.das").read_text()

FOLLOWS = {
    "no rule for it": "(0010,0010) := subject",
    "hashUID of itself": "(0020,000D) := hashUID[(0020,000D)]",
    "a literal": '(0020,000D) := "1.2.3.4"',
    "a given variable, through a user variable": "uid := hashUID[project]\n(0020,000D) := uid",
    "itself with a variable": '(0020,000D) := hashUID[format["{0}.{1}", (0020,000D), session]]',
    "under a condition on a variable": 'project != "Unassigned" ? (0020,000D) := hashUID[(0020,000D)]',
    "under a condition on itself": '(0020,000D) ~ "1\\..*" ? (0020,000D) := hashUID[(0020,000D)]',
    "other UIDs hashed, private tags removed": "(0020,000E) := new UID\n(0008,0018) := hashUID[(0008,0018)]\n"
    "removeAllPrivateTags",
    "a nested path that cannot be it": "(0008,1110)[0]/(0008,1155) := hashUID[(0008,1155)]",
}

NOT_SHOWN = {
    "new UID (per instance)": "(0020,000D) := new UID",
    "another attribute's value": "(0020,000D) := hashUID[(0020,000E)]",
    "a variable read from another attribute": "who := (0010,0010)\n(0020,000D) := hashUID[who]",
    "a variable assigned under a per-file condition": 'x := "1.2"\n(0008,0060) = "CT" ? x := "1.3"\n(0020,000D) := x',
    "a condition on another attribute": '(0008,0060) = "MR" ? (0020,000D) := "1.2.3"',
    "deleted": "-(0020,000D)",
    "a wildcard reaching it": '(0020,000X) := "1.2"',
    "a path at any depth": '*/(0020,000D) := "1.2"',
    "mapped under a prefix read from the file": 'mapReferencedUIDs[(0008,0080), "(0020,000D)"]',
}


def _script(body: str) -> str:
    return f'version "6.1"\n{body}\n'


@pytest.mark.parametrize("body", FOLLOWS.values(), ids=FOLLOWS.keys())
def test_a_script_keeping_one_study_per_original_study_is_recognised(body: str) -> None:
    anonymizer = compile_script(_script(body))
    assert anonymizer.study_uid_follows_original
    first = make_dataset()
    second = make_dataset()  # the same study; every other attribute the scripts read differs
    second.SOPInstanceUID, second.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1.1.2", "1.2.826.0.1.3680043.8.498.33"
    second.Modality, second.PatientName, second.InstitutionName = "CT", "Other^Name", "Other Hospital"
    studies = {read(anonymizer.apply_bytes(to_part10(ds), VARIABLES)).StudyInstanceUID for ds in (first, second)}
    assert len(studies) == 1


@pytest.mark.parametrize("body", NOT_SHOWN.values(), ids=NOT_SHOWN.keys())
def test_a_script_whose_study_may_differ_per_file_is_not(body: str) -> None:
    assert not compile_script(_script(body)).study_uid_follows_original


def test_xnats_default_site_script_and_the_basic_profile_keep_one_study() -> None:
    assert compile_script(DEFAULT_SITE_SCRIPT).study_uid_follows_original
    assert basic_profile().study_uid_follows_original
    assert basic_profile(["retain-uids"]).study_uid_follows_original
