"""mapReferencedUIDs[prefix, "path", ...] as dicom-edit6 defines it (MapReferencedUIDsMethod and
its test TestMapReferencedUIDsMethod): every UID a path names, at any depth, replaced by a UID
under the prefix, one replacement per distinct original UID, so an image's own UIDs and another
object's references to them agree."""

from __future__ import annotations

import pytest
from anon_helpers import VARIABLES, read, to_part10
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from xnat_flows.anon import AnonError, ScriptError, compile_script
from xnat_flows.anon.functions import mapped_uid

PREFIX = "1.23.4"
IMAGE_1 = "2.25.286464958606692196444730198198599124223"
IMAGE_2 = "2.25.154043429377232606927681981680972422032"
STUDY = "2.25.276185840903524351125970126541016142013"
SERIES = "2.25.298537985984438881272704370944910195420"
FRAME = "2.25.112897175093649388296539326564566382179"
MR = "1.2.840.10008.5.1.4.1.1.4"

SCRIPT = f"""version "6.1"
uidprefix := "{PREFIX}"
mapReferencedUIDs[uidprefix, "(0008,0018)"]
mapReferencedUIDs[uidprefix, "(0020,000E)"]
mapReferencedUIDs[uidprefix, "(0020,000D)"]
mapReferencedUIDs[uidprefix, "(0020,0052)"]
mapReferencedUIDs[uidprefix, "(3006,0010)/(0020,0052)"]
mapReferencedUIDs[uidprefix, "(3006,0010)/(3006,0012)/(0008,1155)"]
mapReferencedUIDs[uidprefix, "(3006,0010)/(3006,0012)/(3006,0014)/(0020,000E)"]
mapReferencedUIDs[uidprefix, "(3006,0010)/(3006,0012)/(3006,0014)/(3006,0016)/(0008,1155)"]
mapReferencedUIDs[uidprefix, "(3006, 0020)/(3006, 0024)"]
"""


def _image(sop_uid: str) -> Dataset:
    ds = Dataset()
    ds.PatientName = "PatientName"
    ds.SOPClassUID = MR
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = SERIES
    ds.FrameOfReferenceUID = FRAME
    return ds


def _item(**values: object) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _rtstruct() -> Dataset:
    """The structure set of dicom-edit6's test: references to both images, three ROIs on one frame."""
    ds = Dataset()
    ds.PatientName = "PatientName"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.77"
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.78"
    contours = Sequence(
        [
            _item(ReferencedSOPClassUID=MR, ReferencedSOPInstanceUID=IMAGE_1),
            _item(ReferencedSOPClassUID=MR, ReferencedSOPInstanceUID=IMAGE_2),
        ]
    )
    series = _item(SeriesInstanceUID=SERIES, ContourImageSequence=contours)
    study = _item(
        ReferencedSOPClassUID="1.2.840.10008.5.1.4.1.1.4",
        ReferencedSOPInstanceUID=STUDY,
        RTReferencedSeriesSequence=Sequence([series]),
    )
    ds.ReferencedFrameOfReferenceSequence = Sequence(
        [_item(FrameOfReferenceUID=FRAME, RTReferencedStudySequence=Sequence([study]))]
    )
    roi_frame = "1.3.12.2.1107.5.2.6.22750.20111117084936000.0.0.0"
    ds.StructureSetROISequence = Sequence(
        [
            _item(ROINumber=n, ReferencedFrameOfReferenceUID=roi_frame, ROIName=name, ROIGenerationAlgorithm="MANUAL")
            for n, name in ((1, "Tum1_LFront"), (2, "Tum2_Vermis"), (3, "Tum3_RFront"))
        ]
    )
    return ds


def _apply(script: str, ds: Dataset) -> Dataset:
    return read(compile_script(script).apply_bytes(to_part10(ds), VARIABLES))


def test_references_in_one_object_follow_the_uids_mapped_in_the_others() -> None:
    img1, img2, rtstruct = (_apply(SCRIPT, ds) for ds in (_image(IMAGE_1), _image(IMAGE_2), _rtstruct()))
    assert img1.StudyInstanceUID != STUDY and img1.StudyInstanceUID.startswith(PREFIX + ".")
    assert img1.StudyInstanceUID == img2.StudyInstanceUID  # remapped consistently
    assert img1.SeriesInstanceUID != SERIES and img1.SeriesInstanceUID == img2.SeriesInstanceUID
    assert img1.SOPInstanceUID != img2.SOPInstanceUID
    frame = rtstruct.ReferencedFrameOfReferenceSequence[0]
    study = frame.RTReferencedStudySequence[0]
    series = study.RTReferencedSeriesSequence[0]
    assert frame.FrameOfReferenceUID == img1.FrameOfReferenceUID
    assert study.ReferencedSOPInstanceUID == img1.StudyInstanceUID
    assert series.SeriesInstanceUID == img1.SeriesInstanceUID
    contours = series.ContourImageSequence
    assert [c.ReferencedSOPInstanceUID for c in contours] == [img1.SOPInstanceUID, img2.SOPInstanceUID]
    assert [c.ReferencedSOPClassUID for c in contours] == [MR, MR]  # class UIDs are not named: kept
    assert rtstruct.PatientName == "PatientName"


def test_every_item_of_a_sequence_gets_the_same_uid_for_the_same_original() -> None:
    rois = _apply(SCRIPT, _rtstruct()).StructureSetROISequence
    mapped = {roi.ReferencedFrameOfReferenceUID for roi in rois}
    assert len(mapped) == 1 and mapped.pop().startswith(PREFIX + ".")
    assert [roi.ROIName for roi in rois] == ["Tum1_LFront", "Tum2_Vermis", "Tum3_RFront"]
    assert [str(roi.ROINumber) for roi in rois] == ["1", "2", "3"]


def test_mapped_uids_are_valid_deterministic_and_depend_on_the_prefix() -> None:
    one = mapped_uid(PREFIX, STUDY)
    assert one == mapped_uid(PREFIX, STUDY) and one != mapped_uid("1.23.5", STUDY) != mapped_uid(PREFIX, SERIES)
    long_root = "1.2.826.0.1.3680043.8.498.123456789.987654321"  # 43 characters
    for prefix in (PREFIX, long_root):
        uid = mapped_uid(prefix, STUDY)
        assert len(uid) <= 64 and uid.startswith(prefix + ".")
        assert not uid[len(prefix) + 1 :].startswith("0") and uid[len(prefix) + 1 :].isdigit()


def test_an_element_two_paths_name_is_mapped_once() -> None:
    twice = f'version "6.1"\nmapReferencedUIDs["{PREFIX}", "(0020,000D)", "*/(0020,000D)"]\n'
    assert _apply(twice, _image(IMAGE_1)).StudyInstanceUID == mapped_uid(PREFIX, STUDY)


def test_a_prefix_from_a_variable_is_checked_when_the_file_is_processed() -> None:
    script = 'version "6.1"\nmapReferencedUIDs[project, "(0020,000D)"]\n'
    with pytest.raises(AnonError, match="line 2: mapReferencedUIDs: 'PROJ1' is not a UID root"):
        compile_script(script).apply_bytes(to_part10(_image(IMAGE_1)), VARIABLES)


@pytest.mark.parametrize(
    ("arguments", "column", "words"),
    [
        ('"1.2.3"', 1, "mapReferencedUIDs takes 2 to 256 arguments, got 1"),
        ('"1.2.3", (0020,000D)', 28, "tag paths as strings"),
        ('"1.2.3", "(0020,000D"', 28, "is not a tag path"),
        ('"1.2.3", "(0002,0010)"', 28, "File Meta Information"),
        ('"01.2", "(0020,000D)"', 19, "is not a UID root"),
        ('"1.2.826.0.1.3680043.8.498.123456789.9876543210", "(0020,000D)"', 19, "too long"),
    ],
)
def test_script_errors_name_the_argument(arguments: str, column: int, words: str) -> None:
    with pytest.raises(ScriptError) as caught:
        compile_script(f'version "6.1"\nmapReferencedUIDs[{arguments}]\n', source="site.das")
    assert words in caught.value.message
    assert (caught.value.line, caught.value.column) == (2, column)
