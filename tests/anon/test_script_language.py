"""One constructed DicomEdit 6 script per language feature, applied to a dataset that has them all."""

from __future__ import annotations

import pytest
from anon_helpers import VARIABLES, part10, read

from xnat_flows.anon import AnonError, compile_script
from xnat_flows.anon.functions import hash_uid


def run(body: str, variables: dict[str, str] | None = None, data: bytes | None = None):
    anonymizer = compile_script('version "6.1"\n' + body)
    return read(anonymizer.apply_bytes(data or part10(), VARIABLES if variables is None else variables))


def test_comments_blank_lines_and_version_only_script_change_nothing() -> None:
    data = part10()
    anonymizer = compile_script('// a comment\n\nversion "6.1"  // trailing comment\n\n// end\n')
    assert anonymizer.apply_bytes(data, {}) == data


def test_assignment_of_a_string_literal_replaces_the_value() -> None:
    assert run('(0010,0010) := "Anon^Person"').PatientName == "Anon^Person"


def test_assignment_creates_an_absent_attribute_with_the_dictionary_vr() -> None:
    ds = run('(0012,0063) := "XNAT DicomEdit 6"')
    assert ds.DeidentificationMethod == "XNAT DicomEdit 6"
    assert ds["DeidentificationMethod"].VR == "LO"


def test_an_empty_assignment_creates_an_absent_attribute_empty_and_leaves_an_empty_one_untouched() -> None:
    ds = run('(0008,1050) := ""')  # Performing Physician's Name: not in the test file
    assert "PerformingPhysicianName" in ds and ds["PerformingPhysicianName"].VR == "PN"
    assert str(ds.PerformingPhysicianName) == ""
    emptied = compile_script('version "6.1"\n(0008,0090) := ""\n').apply_bytes(part10(), {})
    assert compile_script('version "6.1"\n(0008,0090) := ""\n').apply_bytes(emptied, {}) == emptied


def test_assignment_from_another_attribute() -> None:
    assert run("(0008,1030) := (0008,103E)").StudyDescription == "T1 MPRAGE"


def test_deletion_removes_the_attribute() -> None:
    ds = run("-(0010,0030)\n- (0008,0050)")
    assert "PatientBirthDate" not in ds and "AccessionNumber" not in ds


def test_deletion_with_x_wildcards_removes_every_match() -> None:
    ds = run("-(0010,XXXX)")
    assert not [element for element in ds if element.tag.group == 0x0010]
    assert ds.StudyDescription == "Brain Study"


def test_even_and_odd_digit_wildcards() -> None:
    # (0019,...) is odd: "#" matches, "@" does not
    kept = run("-(001@,XXXX)")
    assert (0x0019, 0x100F) in kept
    removed = run("-(001#,XXXX)")
    assert (0x0019, 0x100F) not in removed


def test_builtin_variables_xnat_passes() -> None:
    ds = run("(0010,0010) := subject\n(0010,0020) := session\n(0008,1030) := project\n(0008,0070) := modalityLabel")
    assert (ds.PatientName, ds.PatientID, ds.StudyDescription, ds.Manufacturer) == (
        "SUBJ01",
        "SUBJ01_MR1",
        "PROJ1",
        "MR",
    )


def test_user_variables_are_assigned_then_read() -> None:
    ds = run('site := "S07"\n(0010,0020) := format["{0}-{1}", site, (0010,0020)]')
    assert ds.PatientID == "S07-MRN0001"


def test_a_variable_the_script_assigns_is_not_required() -> None:
    anonymizer = compile_script('version "6.1"\nsession := "X"\n(0010,0020) := session\n(0010,0010) := subject')
    assert anonymizer.required_variables == frozenset({"subject"})


def test_a_missing_variable_refuses_the_file() -> None:
    anonymizer = compile_script('version "6.1"\n(0010,0010) := subject')
    with pytest.raises(AnonError, match="subject"):
        anonymizer.apply_bytes(part10(), {})


@pytest.mark.parametrize(
    ("condition", "applies"),
    [
        ('(0008,0060) = "MR"', True),
        ('(0008,0060) = "CT"', False),
        ('(0008,0060) != "CT"', True),
        ('(0008,103E) ~ "T1.*"', True),
        ('(0008,103E) ~ "T1"', False),  # the whole value must match, as Java's String.matches
        ('(0008,103E) !~ "T2.*"', True),
        ('project != "Unassigned"', True),
        ('(0008,9999) = ""', True),  # an absent attribute compares as empty
    ],
)
def test_conditions(condition: str, applies: bool) -> None:
    ds = run(f'{condition} ? (0010,0010) := "YES"')
    assert (ds.PatientName == "YES") is applies


def test_condition_else_branch() -> None:
    ds = run('(0008,0060) = "CT" ? (0010,0010) := "CT" : (0010,0010) := "OTHER"')
    assert ds.PatientName == "OTHER"


def test_condition_guards_a_deletion() -> None:
    assert "PatientBirthDate" not in run('(0010,0040) = "F" ? -(0010,0030)')


def test_sequence_item_path() -> None:
    ds = run('(0008,1110)[1]/(0008,1155) := "1.2.3"')
    assert ds.ReferencedStudySequence[1].ReferencedSOPInstanceUID == "1.2.3"
    assert ds.ReferencedStudySequence[0].ReferencedSOPInstanceUID == "1.2.826.0.1.3680043.8.498.9.1"


def test_sequence_path_with_every_item() -> None:
    ds = run('(0008,1110)[%]/(0008,1155) := "1.2.3"')
    assert [item.ReferencedSOPInstanceUID for item in ds.ReferencedStudySequence] == ["1.2.3", "1.2.3"]


def test_deleting_a_sequence_item() -> None:
    ds = run("-(0008,1110)[0]")
    assert len(ds.ReferencedStudySequence) == 1
    assert ds.ReferencedStudySequence[0].ReferencedSOPInstanceUID.endswith(".9.2")


def test_star_path_reaches_every_depth_including_the_top() -> None:
    ds = run('*/(0010,0010) := "GONE"')
    assert ds.PatientName == "GONE"
    assert ds.RequestAttributesSequence[0].ScheduledProtocolCodeSequence[0].PatientName == "GONE"


def test_plus_path_reaches_only_nested_levels() -> None:
    ds = run("-+/(0010,0010)")
    assert ds.PatientName == "Doe^Jane"
    assert "PatientName" not in ds.RequestAttributesSequence[0].ScheduledProtocolCodeSequence[0]


def test_nested_sequence_path_two_levels_deep() -> None:
    ds = run('(0040,0275)[0]/(0040,0008)[0]/(0008,0104) := "Protocol"')
    assert ds.RequestAttributesSequence[0].ScheduledProtocolCodeSequence[0].CodeMeaning == "Protocol"


def test_private_tag_by_creator() -> None:
    ds = run('(0019,{SIEMENS MR HEADER}0F) := "clean"')
    block = ds.private_block(0x0019, "SIEMENS MR HEADER")
    assert block[0x0F].value == "clean"


def test_private_tag_by_creator_condition_and_deletion() -> None:
    ds = run('(0019,{SIEMENS MR HEADER}0F) ~ "private.*" ? -(0019,{SIEMENS MR HEADER}0F)')
    assert 0x0F not in ds.private_block(0x0019, "SIEMENS MR HEADER")


def test_remove_all_private_tags() -> None:
    ds = run("removeAllPrivateTags")
    assert not [element for element in ds if element.tag.is_private]


def test_retain_private_tags_keeps_only_those_named_and_their_creator() -> None:
    ds = run("retainPrivateTags[(0019,{SIEMENS MR HEADER}0F)]")
    private = sorted(element.tag for element in ds if element.tag.is_private)
    assert private == [0x00190010, 0x0019100F]


def test_hash_uid_matches_xnat() -> None:
    ds = run("(0020,000D) := hashUID[(0020,000D)]\n(0008,0018) := hashUID[(0008,0018)]")
    assert ds.StudyInstanceUID == hash_uid("1.2.826.0.1.3680043.8.498.2")
    # the File Meta follows the new SOP Instance UID
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID == hash_uid("1.2.826.0.1.3680043.8.498.1.1.1")


def test_hash_uid_reproduces_dicomedit_published_values() -> None:
    # Values XNAT's DicomEdit hashUID gives, as published by a project reproducing them
    # (github.com/bariskanber/xnat_pseudo_anonymizer, README "Example outputs").
    assert hash_uid("apple") == "2.25.277466887773979289579949253661142169968"
    assert hash_uid("orange") == "2.25.317761990493429439180546617639180187065"
    assert hash_uid("719") == "2.25.174902547599179474521637988884184029084"


def test_new_uid_is_a_fresh_uid_and_deterministic_per_instance() -> None:
    first = run("(0020,000E) := new UID").SeriesInstanceUID
    again = run("(0020,000E) := new UID").SeriesInstanceUID
    assert first.startswith("2.25.") and first != "1.2.826.0.1.3680043.8.498.3"
    assert first == again


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('format["{0}_{1}", subject, "v1"]', "SUBJ01_v1"),
        ("lowercase[(0008,103E)]", "t1 mprage"),
        ("uppercase[(0008,1030)]", "BRAIN STUDY"),
        ('replace[(0008,103E), " ", "_"]', "T1_MPRAGE"),
        ("substring[(0008,103E), 0, 2]", "T1"),
        ("substring[(0008,103E), 3]", "MPRAGE"),
        ('match[(0010,4000), "Session: (.*)", 1]', "visit1"),
        ('match[(0010,4000), "nothing(.*)", 1]', ""),
        ('urlEncode["a b&c"]', "a+b%26c"),
        ('shiftDateByIncrement[(0008,0020), "-31"]', "20231231"),
        ('shiftDateTimeByIncrement["20240131101500", "2", "hours"]', "20240131121500"),
    ],
)
def test_value_functions(expression: str, expected: str) -> None:
    assert run(f"(0008,1030) := {expression}").StudyDescription == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        # dicom-edit6 DefaultDicomDateTimeShifter: a partial value is shifted from its midpoint (a
        # date is noon, a month its middle day, an hour half past) and keeps its precision
        ('shiftDateByIncrement[(0008,0020), 13, "hours"]', "20240201"),
        ('shiftDateByIncrement[(0008,0020), 11, "hours"]', "20240131"),
        ('shiftDateByIncrement[(0008,0020), 1, "years"]', "20250130"),  # 365 days
        ('shiftDateByIncrement[(0008,0020), "2"]', "20240202"),  # days by default
        ('shiftDateTimeByIncrement["20240131101500", 90]', "20240131101630"),  # seconds by default
        ('shiftDateTimeByIncrement["202401", 16, "days"]', "202402"),  # from the 16th, noon
        ('shiftDateTimeByIncrement["2024013110", 45, "minutes"]', "2024013111"),  # from 10:30
        ('shiftDateTimeByIncrement["20240131235959.123+0100", 1, "seconds"]', "20240201000000.123+0100"),
        ('shiftDateTimeByIncrement[(0008,0020), -1, "days"]', "20240130"),  # a DA value too
        ("shiftDateByIncrement[(0008,0021), 5]", ""),  # absent: stays empty
    ],
)
def test_shift_functions_follow_dicom_edit6(expression: str, expected: str) -> None:
    assert run(f"(0008,1030) := {expression}").StudyDescription == expected


@pytest.mark.parametrize(
    ("expression", "words"),
    [
        ('shiftDateByIncrement[(0008,0020), 1, "day"]', "unknown unit 'day'"),  # DicomEdit: plural only
        ('shiftDateTimeByIncrement["2024-01-31", 1, "days"]', "not a DICOM date"),
    ],
)
def test_shift_functions_refuse_what_dicom_edit6_refuses(expression: str, words: str) -> None:
    with pytest.raises(AnonError, match=words):
        run(f"(0008,1030) := {expression}")


def test_alter_pixels_fills_the_rectangle_only() -> None:
    before = read(part10())
    ds = run('alterPixels["rectangle", "l=2, t=1, r=4, b=3", "solid", "v=0"]')
    pixels = ds.PixelData
    original = before.PixelData
    for row in range(8):
        for column in range(8):
            offset = (row * 8 + column) * 2
            inside = 1 <= row < 3 and 2 <= column < 4
            expected = b"\0\0" if inside else original[offset : offset + 2]
            assert pixels[offset : offset + 2] == expected, (row, column)


def test_echo_and_describe_are_accepted_and_print_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    ds = run('describe site "Site code"\necho (0010,0010)\n(0010,0010) := "X"')
    assert ds.PatientName == "X"
    assert "Doe" not in capsys.readouterr().out


def test_statements_apply_top_to_bottom() -> None:
    ds = run('(0010,0010) := "first"\n(0008,1030) := (0010,0010)\n(0010,0010) := "second"')
    assert (ds.StudyDescription, ds.PatientName) == ("first", "second")


def test_assigning_a_value_to_a_sequence_is_refused() -> None:
    with pytest.raises(AnonError, match="sequence"):
        run('(0008,1110) := "x"')


def test_a_call_with_literal_arguments_only_gives_its_value_and_its_errors_per_file() -> None:
    """Such a call is worked out once when the script compiles; one its function refuses still
    compiles and fails each file it is applied to, naming the line, as any other call does."""
    assert run('(0010,1010) := format["{0}Y", "042"]').PatientAge == "042Y"
    anonymizer = compile_script('version "6.1"\n(0010,0010) := substring["ABC", "x"]\n')
    for _ in range(2):
        with pytest.raises(AnonError, match="line 2: substring begin must be a number"):
            anonymizer.apply_bytes(part10(), VARIABLES)


def test_new_uid_derives_from_the_original_sop_instance_uid_even_after_the_script_changed_it() -> None:
    """The original SOP Instance UID is read before the first statement when a script uses new UID."""
    from xnat_flows.anon.functions import derived_uid

    data = part10()
    original = read(data).SOPInstanceUID
    anonymizer = compile_script('version "6.1"\n(0008,0018) := hashUID[(0008,0018)]\n(0020,000D) := new UID\n')
    ds = read(anonymizer.apply_bytes(data, VARIABLES))
    assert ds.SOPInstanceUID == hash_uid(original)
    assert ds.StudyInstanceUID == derived_uid(anonymizer.digest, "3:16", original)
