"""DICOM PS3.15 Annex E Basic Profile and its named options."""

from __future__ import annotations

import pytest
from anon_helpers import make_dataset, part10, read, to_part10

from xnat_flows.anon import PROFILE_OPTIONS, basic_profile
from xnat_flows.anon.functions import hash_uid
from xnat_flows.anon.identifiers import basic_profile_actions


def apply(*options: str, dataset=None):
    return read(basic_profile(options).apply_bytes(to_part10(dataset) if dataset is not None else part10()))


def test_basic_profile_removes_or_replaces_identifiers() -> None:
    original = read(part10())
    ds = apply()
    assert ds.PatientName == ""  # Z
    assert ds.PatientID not in ("", "MRN0001")  # D: a dummy value
    assert "PatientBirthDate" not in ds or ds.PatientBirthDate == ""
    assert "AccessionNumber" not in ds or ds.AccessionNumber == ""
    assert ds.InstitutionName == ds.StationName == "ANONYMIZED"  # X/Z/D: a dummy keeps the object valid
    assert "StudyDescription" not in ds  # X
    assert len(ds.ReferencedStudySequence) == 0  # X/Z: emptied
    assert ds.StudyDate == ""
    assert not [element for element in ds if element.tag.is_private]
    assert "RequestAttributesSequence" not in ds  # X, with everything inside it
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.DeidentificationMethod == "Basic Profile"
    assert ds.PixelData == original.PixelData
    assert ds.Modality == "MR" and ds.Rows == 8  # non-identifying attributes stay


def test_uids_are_hashed_consistently_with_references() -> None:
    ds = apply()
    assert ds.SOPInstanceUID == hash_uid("1.2.826.0.1.3680043.8.498.1.1.1")
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.StudyInstanceUID == hash_uid("1.2.826.0.1.3680043.8.498.2")
    # X/Z/U*: the sequence stays and the UIDs it holds are hashed like the instances they name
    referenced = [item.ReferencedSOPInstanceUID for item in ds.ReferencedImageSequence]
    assert referenced == [hash_uid("1.2.826.0.1.3680043.8.498.1.1.0")]
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4"  # not an identifier


@pytest.mark.parametrize(
    ("option", "kept"),
    [
        (
            "retain-uids",
            {"SOPInstanceUID": "1.2.826.0.1.3680043.8.498.1.1.1", "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.2"},
        ),
        ("retain-longitudinal-full-dates", {"StudyDate": "20240131", "StudyTime": "101500", "SeriesDate": "20240131"}),
        ("retain-patient-characteristics", {"PatientSex": "F", "PatientAge": "044Y", "PatientWeight": "71.5"}),
        ("retain-device-identity", {"StationName": "MRI01", "DateOfLastCalibration": "20231201"}),
        ("retain-institution-identity", {"InstitutionName": "General Hospital", "ClinicalTrialSiteName": "Site 7"}),
        ("clean-descriptors", {"StudyDescription": "Brain Study", "SeriesDescription": "T1 MPRAGE"}),
        ("clean-structured-content", {"ContentSequence": "1 item"}),
        ("clean-graphics", {"GraphicAnnotationSequence": "1 item", "(6000,3000)": "16 bytes"}),
    ],
)
def test_options_keep_their_attributes(option: str, kept: dict[str, str]) -> None:
    plain = apply(dataset=_with_option_attributes())
    ds = apply(option, dataset=_with_option_attributes())
    for keyword, value in kept.items():
        assert _shown(ds, keyword) == value, keyword
        assert _shown(plain, keyword) != value, keyword  # the Basic Profile alone changes it
    assert ds.PatientName == ""
    assert option.replace("-", " ").split()[-1].lower() in ds.DeidentificationMethod[-1].lower()


def _with_option_attributes():
    """The test dataset plus an attribute or two from each option's Table E.1-1 column."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = make_dataset()
    ds.SeriesDate = "20240131"
    ds.PatientWeight = "71.5"
    ds.DateOfLastCalibration = "20231201"
    ds.ClinicalTrialSiteName = "Site 7"
    item = Dataset()
    item.ValueType = "TEXT"
    item.TextValue = "Findings for Doe^Jane"
    ds.ContentSequence = Sequence([item])
    annotation = Dataset()
    annotation.GraphicLayer = "LAYER1"
    ds.GraphicAnnotationSequence = Sequence([annotation])
    ds.add_new(0x60003000, "OW", b"\x01\x02" * 8)
    return ds


def _shown(ds, keyword: str) -> str | None:
    """A value as the test compares it: text, an item count for a sequence, a byte count."""
    from pydicom.datadict import tag_for_keyword

    tag = int(keyword.strip("()").replace(",", ""), 16) if keyword.startswith("(") else tag_for_keyword(keyword)
    if tag not in ds:
        return None
    element = ds[tag]
    if element.VR == "SQ":
        return f"{len(element.value)} item" + ("s" if len(element.value) != 1 else "") if element.value else None
    if isinstance(element.value, bytes):
        return f"{len(element.value)} bytes"
    return str(element.value)


def test_retained_dates_do_not_include_the_birth_date() -> None:
    """Table E.1-1's Rtn. Long. Full Dates column keeps the dates of the procedure, not the
    patient's birth date or time."""
    ds = apply("retain-longitudinal-full-dates")
    assert ds.StudyDate == "20240131"
    assert "PatientBirthDate" not in ds or ds.PatientBirthDate == ""


def test_retain_uids_keeps_the_reference_sequences_the_table_names() -> None:
    ds = apply("retain-uids")
    assert [item.ReferencedSOPInstanceUID for item in ds.ReferencedStudySequence] == [
        "1.2.826.0.1.3680043.8.498.9.1",
        "1.2.826.0.1.3680043.8.498.9.2",
    ]  # X/Z under the Basic Profile: emptied; K under Retain UIDs


@pytest.mark.parametrize(
    ("option", "words"),
    [
        ("retain-safe-private", "Table E.3.10-1"),
        ("retain-longitudinal-modified-dates", "per-subject date offset"),
        ("clean-pixel-data", "Burned In Annotation"),
        ("clean-recognizable-visual-features", "defacing"),
    ],
)
def test_options_the_engine_cannot_apply_are_refused_with_the_reason(option: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        basic_profile([option])


def test_the_option_lists_are_the_tables_columns() -> None:
    """annex_e_options.csv holds every row of each option column of Table E.1-1 (2024b)."""
    from xnat_flows.anon.profile import option_tags

    tags = option_tags()
    sizes = {option: len(tags[option]) for option in tags}
    assert sizes == {
        "retain-uids": 59,
        "retain-device-identity": 57,
        "retain-institution-identity": 10,
        "retain-patient-characteristics": 13,
        "retain-longitudinal-full-dates": 165,
        "retain-longitudinal-modified-dates": 165,
        "clean-descriptors": 125,
        "clean-structured-content": 3,
        "clean-graphics": 1,
    }
    assert 0x00100030 not in tags["retain-longitudinal-full-dates"]  # Patient's Birth Date
    assert 0x00181200 in tags["retain-device-identity"]  # Date of Last Calibration
    assert 0x00120031 in tags["retain-institution-identity"]  # Clinical Trial Site Name


def test_unknown_option_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="retain-uids"):
        basic_profile(["retain-everything"])


def test_digest_names_the_options() -> None:
    digests = {basic_profile([option]).digest for option in PROFILE_OPTIONS}
    assert len(digests) == len(PROFILE_OPTIONS)
    assert (
        basic_profile(["retain-uids", "clean-descriptors"]).digest
        == basic_profile(["clean-descriptors", "retain-uids"]).digest
    )


def test_table_covers_the_attributes_annex_e_names() -> None:
    actions = basic_profile_actions()
    assert len(actions) > 500
    assert actions[0x00100010] == "Z"  # Patient's Name
    assert actions[0x00080018] == "U"  # SOP Instance UID
    assert actions[0x00081030] == "X"  # Study Description


def test_overlay_data_and_curves_are_removed() -> None:
    ds = make_dataset()
    ds.add_new(0x60003000, "OW", b"\x01\x02" * 8)
    ds.add_new(0x60004000, "LT", "overlay comment with a name")
    ds.add_new(0x60000010, "US", 8)
    out = read(basic_profile().apply_bytes(to_part10(ds)))
    assert 0x60003000 not in out and 0x60004000 not in out
    assert 0x60000010 in out  # overlay rows: not identifying


def test_identifiers_inside_kept_sequences_are_cleaned() -> None:
    ds = make_dataset()
    ds.ReferencedImageSequence[0].PatientName = "Deep^Name"
    ds.ReferencedImageSequence[0].add_new(0x00291010, "LO", "private inside")
    out = read(basic_profile().apply_bytes(to_part10(ds)))
    item = out.ReferencedImageSequence[0]
    assert item.PatientName == ""
    assert 0x00291010 not in item
