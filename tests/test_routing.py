"""Routing a dropped folder to project/subject/session: templates, sidecar precedence, label rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from orchestration_helpers import write_session

from xnat_flows.routing import (
    RoutingError,
    clean_label,
    first_dicom_file,
    route_folder,
    template_fields,
)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "scanner-export-1"
    write_session(root, patient_id="P001", study_date="20240115", series=1, instances=1)
    return root


def test_default_templates_read_the_dicom_header(folder: Path) -> None:
    route = route_folder(folder, "TEST")
    assert (route.project, route.subject, route.session) == ("TEST", "P001", "P001_20240115")
    assert route.sources == {"project": "parameter", "subject": "template", "session": "template"}
    assert route.dicom_file == "series1/IM0001"


def test_folder_field_and_literal_text(folder: Path) -> None:
    route = route_folder(folder, "TEST", subject_template="SUBJ-{PatientID}", session_template="{folder}")
    assert route.subject == "SUBJ-P001"
    assert route.session == "scanner-export-1"


def test_labels_are_cleaned_the_way_xnat_does(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    write_session(folder, patient_id="Doe^John 01", study_date="20240115", series=1, instances=1)
    route = route_folder(folder, "TEST")
    assert route.subject == "Doe_John_01"
    assert route.session == "Doe_John_01_20240115"
    assert clean_label(" a.b/c:d ") == "a_b_c_d"


def test_sidecar_overrides_every_field(folder: Path) -> None:
    (folder / "xnat.json").write_text(json.dumps({"project": "OTHER", "subject": "S 9", "session": "S9_MR"}))
    route = route_folder(folder, "TEST")
    assert (route.project, route.subject, route.session) == ("OTHER", "S_9", "S9_MR")
    assert route.sources == {"project": "sidecar", "subject": "sidecar", "session": "sidecar"}
    assert route.dicom_file is None  # nothing left to read from the header


def test_partial_sidecar_keeps_templates_for_the_rest(folder: Path) -> None:
    (folder / "xnat.json").write_text(json.dumps({"session": "BASELINE"}))
    route = route_folder(folder, "TEST")
    assert (route.subject, route.session) == ("P001", "BASELINE")
    assert route.sources["subject"] == "template" and route.sources["session"] == "sidecar"


def test_sidecar_name_is_configurable(folder: Path) -> None:
    (folder / "routing.json").write_text(json.dumps({"subject": "FROMFILE"}))
    assert route_folder(folder, "TEST", sidecar_name="routing.json").subject == "FROMFILE"
    assert route_folder(folder, "TEST").subject == "P001"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"subjekt": "x"}), "subjekt"),
        (json.dumps({"subject": 5}), "subject"),
    ],
)
def test_bad_sidecar_is_a_clear_error(folder: Path, content: str, message: str) -> None:
    (folder / "xnat.json").write_text(content)
    with pytest.raises(RoutingError, match=message):
        route_folder(folder, "TEST")


def test_empty_header_field_names_the_field_and_the_fix(tmp_path: Path) -> None:
    folder = tmp_path / "anon"
    write_session(folder, patient_id="", series=1, instances=1)
    with pytest.raises(RoutingError, match="PatientID is empty") as caught:
        route_folder(folder, "TEST")
    assert "sidecar" in caught.value.hint


def test_unknown_template_field_is_rejected(folder: Path) -> None:
    with pytest.raises(RoutingError, match="PatientName_typo"):
        route_folder(folder, "TEST", subject_template="{PatientName_typo}")
    assert template_fields("{PatientID}_{StudyDate}_{PatientID}") == ["PatientID", "StudyDate"]


def test_invalid_project_is_not_rewritten(folder: Path) -> None:
    with pytest.raises(RoutingError, match="invalid XNAT project ID 'MY PROJ'"):
        route_folder(folder, "MY PROJ")


def test_folder_without_dicom_fails_unless_the_sidecar_routes_it(tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("not dicom")
    with pytest.raises(RoutingError, match="no DICOM file"):
        route_folder(folder, "TEST")
    (folder / "xnat.json").write_text(json.dumps({"subject": "S1", "session": "S1_A"}))
    assert route_folder(folder, "TEST").session == "S1_A"


def test_first_dicom_skips_hidden_and_non_dicom_files(folder: Path) -> None:
    (folder / "aaa.txt").write_text("x" * 200)
    (folder / ".hidden").write_bytes(b"\0" * 128 + b"DICM")
    assert first_dicom_file(folder) == folder / "series1" / "IM0001"
