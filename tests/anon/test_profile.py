"""DICOM PS3.15 Annex E Basic Profile and its named options."""

from __future__ import annotations

import pytest
from anon_helpers import make_dataset, part10, read, to_part10

from xnat_flows.anon import PROFILE_OPTIONS, basic_profile
from xnat_flows.anon.functions import hash_uid
from xnat_flows.anon.identifiers import basic_profile_actions


def apply(*options: str):
    return read(basic_profile(options).apply_bytes(part10()))


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
        (
            "retain-longitudinal-full-dates",
            {"StudyDate": "20240131", "StudyTime": "101500", "PatientBirthDate": "19800101"},
        ),
        ("retain-patient-characteristics", {"PatientSex": "F", "PatientAge": "044Y"}),
        ("retain-device-identity", {"StationName": "MRI01"}),
        ("retain-institution-identity", {"InstitutionName": "General Hospital"}),
        ("clean-descriptors", {"StudyDescription": "Brain Study", "SeriesDescription": "T1 MPRAGE"}),
    ],
)
def test_options_keep_their_attributes(option: str, kept: dict[str, str]) -> None:
    plain = apply()
    ds = apply(option)
    for keyword, value in kept.items():
        assert ds.get(keyword) == value, keyword
        assert plain.get(keyword) != value, keyword  # the Basic Profile alone changes it
    assert ds.PatientName == ""
    assert option.replace("-", " ").split()[-1].lower() in ds.DeidentificationMethod[-1].lower()


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
