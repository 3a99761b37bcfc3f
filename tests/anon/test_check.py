"""``anon check``: the report, the CLI (exit codes) and the Prefect task used as a gate."""

from __future__ import annotations

from pathlib import Path

import pytest
from anon_helpers import make_dataset, to_part10
from typer.testing import CliRunner

from xnat_flows.anon import basic_profile, compile_script
from xnat_flows.anon.check import check_folder
from xnat_flows.cli.main import app

DEFAULT = (Path(__file__).parent / "fixtures" / "xnat_default_id.das").read_text()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "export"
    (root / "series1").mkdir(parents=True)
    for number in range(3):
        ds = make_dataset()
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.1.1.{number + 10}"
        ds.InstanceNumber = number + 1
        if number == 2:
            ds.BurnedInAnnotation = "YES"
        (root / "series1" / f"IM{number}").write_bytes(to_part10(ds))  # extensionless, as scanners write
    (root / "notes.txt").write_text("not DICOM")
    return root


def test_report_counts_changes_and_lists_survivors(folder: Path) -> None:
    report = check_folder(compile_script(DEFAULT), folder, {"project": "P1", "subject": "S1", "session": "S1_MR1"})
    assert report.files == 3 and report.not_dicom == 1
    assert report.changes["PatientName"].changed == 3
    assert (report.changes["PatientName"].example_before, report.changes["PatientName"].example_after) == (
        "Doe^Jane",
        "S1",
    )
    assert set(report.changes) == {"PatientName", "PatientID", "StudyDescription"}
    assert {"PatientBirthDate", "AccessionNumber", "StudyInstanceUID", "private attributes"} <= set(report.survivors)
    assert report.survivors["PatientBirthDate"].files == 3
    assert report.burned_in == ["series1/IM2"]
    assert not report.ok


def _pydicom_test_files() -> list[tuple[str, str]]:
    import pydicom

    root = Path(pydicom.__file__).parent / "data" / "test_files"
    return [(str(path.relative_to(root)), str(path)) for path in sorted(root.rglob("*")) if path.is_file()]


@pytest.mark.parametrize("rules", ["default", "profile", "private"])
def test_comparing_bytes_first_gives_the_report_decoding_every_value_gives(rules: str, mocker) -> None:
    """The check decodes an element only where the bytes differ (the report's values); equal bytes
    are equal values. Across pydicom's test files (transfer syntaxes, character sets, sequences,
    private sequences, files the rules cannot be applied to), the report is the one made by
    decoding and comparing every value."""
    import warnings

    from xnat_flows.anon import check

    anonymizer = {
        "default": lambda: compile_script(DEFAULT),
        "profile": basic_profile,
        "private": lambda: compile_script('version "6.1"\nremoveAllPrivateTags\n(0008,1110)[0]/(0008,1155) := "1.2"'),
    }[rules]()
    files = _pydicom_test_files()
    variables = {"project": "P1", "subject": "S1", "session": "S1_MR1"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the odd files it reads
        fast = check.check_files(anonymizer, files, variables).to_dict()
        decoding_all = mocker.patch.object(
            check, "_same", side_effect=lambda was, now: was[0] == now[0] and check._text(was) == check._text(now)
        )
        slow = check.check_files(anonymizer, files, variables).to_dict()
    assert decoding_all.called and fast["files"] == len(files) > 100
    assert fast["changes"] and (fast["survivors"] or rules == "profile")
    assert fast == slow


def test_progress_is_told_after_each_file(folder: Path) -> None:
    seen: list[tuple[int, int]] = []
    report = check_folder(basic_profile(), folder, progress=lambda checked, total: seen.append((checked, total)))
    assert report.files == 3 and seen == [(1, 3), (2, 3), (3, 3)]


def test_identifiers_inside_sequences_are_found(folder: Path) -> None:
    report = check_folder(compile_script('version "6.1"\n-(0010,0010)'), folder, {})
    assert report.changes["PatientName"].removed == 3
    # the one in RequestAttributesSequence/ScheduledProtocolCodeSequence survives
    assert "PatientName" in report.survivors


def test_profile_leaves_no_identifier(folder: Path) -> None:
    report = check_folder(basic_profile(), folder)
    assert report.survivors == {}
    assert report.ok
    assert "PatientIdentityRemoved" in report.changes


def test_allow_accepts_keywords_tags_private_and_options(folder: Path) -> None:
    report = check_folder(
        basic_profile(["retain-uids", "retain-longitudinal-full-dates"]),
        folder,
        allow=["retain-uids", "StudyDate", "(0008,0030)", "PatientBirthDate"],
    )
    assert report.ok, report.to_text()
    assert {"StudyInstanceUID", "StudyDate", "StudyTime"} <= set(report.allowed)
    assert "PatientBirthDate" not in report.allowed  # Retain Longitudinal dates keeps no birth date


def test_placeholders_for_variables_not_given(folder: Path) -> None:
    report = check_folder(compile_script(DEFAULT), folder, {"project": "P1"})
    assert report.placeholders == ["session", "subject"]
    assert report.changes["PatientName"].example_after == "SUBJECT"


def test_markdown_hides_original_values(folder: Path) -> None:
    report = check_folder(compile_script(DEFAULT), folder, {"project": "P1", "subject": "S1", "session": "X"})
    markdown = report.to_markdown()
    assert "Doe^Jane" not in markdown and "MRN0001" not in markdown and "19800101" not in markdown
    assert "PatientName" in markdown and "PatientBirthDate" in markdown
    assert "Doe^Jane" in report.to_text()


def test_files_the_program_cannot_apply_to_are_listed(folder: Path) -> None:
    import warnings

    from pydicom.data import get_testdata_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        jpeg = Path(str(get_testdata_file("JPEG2000.dcm")))
    (folder / "compressed.dcm").write_bytes(jpeg.read_bytes())
    script = compile_script('version "6.1"\nalterPixels["rectangle", "l=0, t=0, r=4, b=4", "solid", "v=0"]')
    report = check_folder(script, folder, allow=["private"])
    assert [path for path, _ in report.failures] == ["compressed.dcm"]
    assert "compressed" in report.failures[0][1]
    assert not report.ok
    assert "cannot be de-identified" in report.to_text()


def cli(*args: str):
    return CliRunner().invoke(app, ["anon", "check", *args])


def test_cli_exit_codes(folder: Path, tmp_path: Path) -> None:
    script = tmp_path / "id.das"
    script.write_text(DEFAULT)
    survived = cli(
        str(folder), "--script", str(script), "--var", "subject=S1", "--var", "session=S1_MR1", "--var", "project=P"
    )
    assert survived.exit_code == 1, survived.output
    assert "PatientName: 3 changed; e.g. Doe^Jane -> S1" in survived.output
    assert "Burned In Annotation = YES" in survived.output and "series1/IM2" in survived.output
    clean = cli(str(folder), "--profile", "basic")
    assert clean.exit_code == 0, clean.output
    assert clean.output.rstrip().endswith("OK")


def test_cli_script_error_exits_2_with_line_and_column(folder: Path, tmp_path: Path) -> None:
    script = tmp_path / "bad.das"
    script.write_text('version "6.1"\n(0010,0010) := nosuch[(0010,0010)]\n')
    for spelling in ("--script", "--anon-script"):  # anon check's own, and session upload's
        result = cli(str(folder), spelling, str(script))
        assert result.exit_code == 2
        assert f"{script}:2:16: unknown function nosuch" in result.output
        assert "nothing was checked (fix the script and run the check again)" in result.output


def test_cli_hide_values(folder: Path, tmp_path: Path) -> None:
    script = tmp_path / "id.das"
    script.write_text(DEFAULT)
    result = cli(str(folder), "--script", str(script), "--hide-values")
    assert "Doe^Jane" not in result.output and "MRN0001" not in result.output


def test_cli_json_for_scripts_that_gate_on_it(folder: Path, tmp_path: Path) -> None:
    import json

    script = tmp_path / "id.das"
    script.write_text(DEFAULT)
    args = [str(folder), "--anon-script", str(script), "-P", "P1", "-S", "S1", "-E", "S1_MR1", "--json"]
    shown = cli(*args)
    assert shown.exit_code == 1  # the same exit codes as the text report
    report = json.loads(shown.output)
    assert report["ok"] is False and report["files"] == 3 and report["not_dicom"] == 1
    name = next(c for c in report["changes"] if c["attribute"] == "PatientName")
    assert (name["changed"], name["example_before"], name["example_after"]) == (3, "Doe^Jane", "S1")
    assert {"PatientBirthDate", "AccessionNumber"} <= {v["attribute"] for v in report["survivors"]}
    assert report["burned_in"] == ["series1/IM2"] and report["placeholders"] == []
    hidden = cli(*args, "--hide-values")
    assert "Doe^Jane" not in hidden.output and "MRN0001" not in hidden.output  # no value, before or after
    assert json.loads(hidden.output)["survivors"] == [{**v, "example": None} for v in report["survivors"]]


def test_cli_needs_one_of_script_or_profile(folder: Path) -> None:
    assert cli(str(folder)).exit_code == 2


def test_cli_takes_the_uploads_options_and_labels(folder: Path, tmp_path: Path) -> None:
    """What `session upload --anon-script F -P -S -E` would apply, checked with the same words."""
    script = tmp_path / "id.das"
    script.write_text(DEFAULT)
    result = cli(str(folder), "--anon-script", str(script), "-P", "P1", "-S", "S1", "-E", "S1_MR1")
    assert result.exit_code == 1, result.output  # the default script leaves dates and UIDs
    assert "PatientName: 3 changed; e.g. Doe^Jane -> S1" in result.output
    assert "PatientID: 3 changed; e.g. MRN0001 -> S1_MR1" in result.output
    assert "StudyDescription: 3 changed" in result.output and "-> P1" in result.output
    assert "placeholder" not in result.output  # every variable the script reads was given
    overridden = cli(str(folder), "--anon-script", str(script), "-S", "S1", "--var", "subject=S2")
    assert "Doe^Jane -> S2" in overridden.output  # --var has the last word


def test_cli_profile_options_in_either_form_give_the_same_rules(folder: Path) -> None:
    listed = cli(str(folder), "--anon-profile", "basic,retain-uids")
    repeated = cli(str(folder), "--profile", "basic", "--option", "retain-uids")
    digest = [line for line in listed.output.splitlines() if "program digest" in line]
    assert digest and digest == [line for line in repeated.output.splitlines() if "program digest" in line]
    assert listed.exit_code == repeated.exit_code == 1  # the UIDs it retains are identifying
    assert cli(str(folder), "--anon-profile", "basic,retain-uids", "--allow", "retain-uids").exit_code == 0
    alone = cli(str(folder), "--option", "retain-uids")
    assert alone.exit_code == 2 and "--option goes with --profile basic" in alone.output
    unknown = cli(str(folder), "--anon-profile", "basic,keep-everything")
    assert unknown.exit_code == 2 and "nothing was checked" in unknown.output


def test_cli_checks_a_script_and_the_profile_together_in_the_uploads_order(folder: Path, tmp_path: Path) -> None:
    script = tmp_path / "id.das"
    script.write_text(DEFAULT)
    result = cli(str(folder), "--anon-script", str(script), "--anon-profile", "basic", "-S", "S1", "-E", "E1")
    assert result.exit_code == 0, result.output  # the profile after the script leaves no identifier
    assert result.output.startswith(f"anon check: {script}, then basic profile")
