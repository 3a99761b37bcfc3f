"""The header is rewritten without touching pixel data, across pydicom's test files: implicit and
explicit VR, big endian, deflated, JPEG and other encapsulated syntaxes, nested sequences."""

from __future__ import annotations

import io

import pydicom
import pytest
from anon_helpers import VARIABLES, make_dataset, pydicom_testdata, to_part10
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import ImplicitVRLittleEndian

from xnat_flows.anon import AnonError, basic_profile, compile_script

SCRIPT = compile_script(
    'version "6.1"\n'
    "(0010,0010) := subject\n(0010,0020) := session\n"
    "(0020,000D) := hashUID[(0020,000D)]\n(0008,0018) := hashUID[(0008,0018)]\n"
    "-(0010,0030)\n*/(0008,1150) := hashUID[(0008,1150)]\nremoveAllPrivateTags\n"
)

FILES = {
    "CT_small.dcm": "1.2.840.10008.1.2.1",  # explicit VR little endian, private tags
    "MR_small_implicit.dcm": "1.2.840.10008.1.2",
    "MR_small_bigendian.dcm": "1.2.840.10008.1.2.2",
    "image_dfl.dcm": "1.2.840.10008.1.2.1.99",  # deflated
    "JPEG2000.dcm": "1.2.840.10008.1.2.4.91",
    "SC_rgb_jpeg_dcmtk.dcm": "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "MR_small_jpeg_ls_lossless.dcm": "1.2.840.10008.1.2.4.80",
    "JPGExtended.dcm": "1.2.840.10008.1.2.4.51",
    "JPEG2000-embedded-sequence-delimiter.dcm": "1.2.840.10008.1.2.4.91",  # a delimiter inside a fragment
    "MR_small_RLE.dcm": "1.2.840.10008.1.2.5",
    "rtplan.dcm": "1.2.840.10008.1.2",  # deeply nested sequences
    "SC_rgb_rle_2frame.dcm": "1.2.840.10008.1.2.5",  # multi-frame
}


def _read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data), force=True)


@pytest.mark.parametrize("name", sorted(FILES))
@pytest.mark.parametrize("anonymizer", [SCRIPT, basic_profile()], ids=["script", "profile"])
def test_pixel_data_and_transfer_syntax_are_unchanged(name: str, anonymizer) -> None:
    data = pydicom_testdata(name)
    before = _read(data)
    assert before.file_meta.TransferSyntaxUID == FILES[name]
    after = _read(anonymizer.apply_bytes(data, VARIABLES))
    assert after.file_meta.TransferSyntaxUID == FILES[name]
    assert "PixelData" not in before or after.PixelData == before.PixelData
    assert not [element for element in after if element.tag.is_private]
    if anonymizer is SCRIPT:
        assert after.PatientName == "SUBJ01"
        assert "PatientBirthDate" not in after
    # every attribute the program did not name is unchanged
    named = {"PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "SOPInstanceUID"}
    for element in before:
        if anonymizer is SCRIPT and element.keyword not in named and not element.tag.is_private and element.VR != "SQ":
            assert after[element.tag].value == element.value, element.keyword


def test_pixel_bytes_in_the_file_are_the_same_bytes() -> None:
    """Not only the same decoded value: the encoded Pixel Data element is copied verbatim."""
    data = pydicom_testdata("JPEG2000.dcm")
    out = SCRIPT.apply_bytes(data, VARIABLES)
    start = data.index(b"\xe0\x7f\x10\x00")
    assert data[start:] in out


def test_nested_sequences_are_rewritten_inside() -> None:
    data = pydicom_testdata("rtplan.dcm")
    anonymizer = compile_script('version "6.1"\n*/(300A,00C2) := "BEAM"')
    after = _read(anonymizer.apply_bytes(data, {}))
    names = [beam.BeamName for beam in after.BeamSequence]
    assert names and set(names) == {"BEAM"}
    assert after.FractionGroupSequence == _read(data).FractionGroupSequence


def test_same_script_and_input_give_the_same_bytes() -> None:
    data = pydicom_testdata("CT_small.dcm")
    assert SCRIPT.apply_bytes(data, VARIABLES) == SCRIPT.apply_bytes(data, VARIABLES)
    profile = basic_profile()
    assert profile.apply_bytes(data) == basic_profile().apply_bytes(data)


def test_alter_pixels_refuses_compressed_pixel_data() -> None:
    data = pydicom_testdata("JPEG2000.dcm")
    anonymizer = compile_script('version "6.1"\nalterPixels["rectangle", "l=0, t=0, r=4, b=4", "solid", "v=0"]')
    with pytest.raises(AnonError, match="compressed"):
        anonymizer.apply_bytes(data, {})


@pytest.mark.parametrize("name", ["MR_truncated.dcm", "rtplan_truncated.dcm"])
def test_truncated_files_are_refused_not_passed_through(name: str) -> None:
    data = pydicom_testdata(name)
    with pytest.raises(AnonError):
        SCRIPT.apply_bytes(data, VARIABLES)


def test_not_dicom_is_refused() -> None:
    with pytest.raises(AnonError, match="not a DICOM file"):
        SCRIPT.apply_bytes(b"hello, this is not DICOM at all" * 10, VARIABLES)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pixels=st.binary(min_size=2, max_size=512).filter(lambda b: len(b) % 2 == 0),
    # no "\\" (a second value) nor "=" (a PN has at most 3 component groups; pydicom warns at a 4th)
    name=st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126, exclude_characters="\\="), max_size=40),
    implicit=st.booleans(),
    profile=st.booleans(),
)
def test_property_pixel_data_bytes_never_change(pixels: bytes, name: str, implicit: bool, profile: bool) -> None:
    ds = make_dataset(rows=1, columns=len(pixels) // 2)
    ds.PixelData = pixels
    ds.PatientName = name
    data = to_part10(ds, ImplicitVRLittleEndian if implicit else "1.2.840.10008.1.2.1")
    anonymizer = basic_profile() if profile else SCRIPT
    out = anonymizer.apply_bytes(data, VARIABLES)
    assert out.endswith(data[data.index(b"\xe0\x7f\x10\x00") :])
    assert _read(out).PixelData == pixels


@pytest.mark.parametrize("name", sorted(FILES))
def test_a_script_on_low_groups_indexes_only_those_and_gives_the_full_result(name: str) -> None:
    """A script naming only groups up to 0010 leaves the rest of the header unindexed (copied
    verbatim): the result is the same dataset a whole-header parse gives."""
    from xnat_flows.anon import rawds
    from xnat_flows.anon.runtime import Context

    data = pydicom_testdata(name)
    script = compile_script('version "6.1"\n(0010,0010) := subject\n-(0010,0030)\n(0008,0050) := "A1"')
    program = script._program
    assert program.up_to == 0x00100030
    partial = rawds.parse_part10(data, up_to=program.up_to)
    assert max(partial.dataset.elements) <= 0x00100030
    program.run(partial.dataset, Context(dict(VARIABLES)))
    full = rawds.parse_part10(data)
    program.run(full.dataset, Context(dict(VARIABLES)))

    def without_group_lengths(ds: pydicom.Dataset) -> dict[int, object]:
        return {element.tag: element.value for element in ds if element.tag.element != 0}

    from_partial = _read(rawds.write_part10(partial))
    from_full = _read(rawds.write_part10(full))
    assert without_group_lengths(from_partial) == without_group_lengths(from_full)
    assert from_partial.PatientName == "SUBJ01"
