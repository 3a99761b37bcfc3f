"""XNAT's default site anonymization script runs as published.

fixtures/xnat_default_id.das is the script xnat-web ships as its default
(``DefaultAnonUtils.getDefaultScript()`` reads ``META-INF/xnat/defaults/**/id.das``; XNAT serves
it at ``GET /xapi/anonymize/default``) in its DicomEdit 6 form: comments and statements as in
xnat-web's ``src/main/resources/META-INF/xnat/defaults/id.das``, plus ``version "6.1"``
(docs/anonymization.md, "Not verified against XNAT's sources", says which copy was compared).
"""

from __future__ import annotations

from pathlib import Path

from anon_helpers import VARIABLES, part10, read

from xnat_flows.anon import compile_script

SCRIPT = (Path(__file__).parent / "fixtures" / "xnat_default_id.das").read_text()


def test_default_script_compiles_and_needs_the_variables_xnat_passes() -> None:
    anonymizer = compile_script(SCRIPT, source="id.das")
    assert anonymizer.required_variables == frozenset({"project", "subject", "session"})


def test_default_script_sets_the_three_attributes_and_nothing_else() -> None:
    original = read(part10())
    ds = read(compile_script(SCRIPT).apply_bytes(part10(), VARIABLES))
    assert ds.StudyDescription == "PROJ1"
    assert ds.PatientName == "SUBJ01"
    assert ds.PatientID == "SUBJ01_MR1"
    changed = {
        element.keyword for element in original if element.tag not in ds or ds[element.tag].value != element.value
    }
    assert changed == {"StudyDescription", "PatientName", "PatientID"}
    assert ds.PixelData == original.PixelData


def test_default_script_leaves_study_description_for_unassigned() -> None:
    ds = read(compile_script(SCRIPT).apply_bytes(part10(), {**VARIABLES, "project": "Unassigned"}))
    assert ds.StudyDescription == "Brain Study"
    assert ds.PatientName == "SUBJ01"
