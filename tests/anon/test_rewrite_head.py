"""``Anonymizer.rewrite_head``: a file rewritten from its first bytes gives, joined to the original's
tail, exactly what ``apply_bytes`` of the whole file gives — or says it needs the whole file."""

from __future__ import annotations

import pytest
from anon_helpers import VARIABLES, make_dataset, pydicom_testdata, to_part10
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from xnat_flows.anon import AnonError, basic_profile, compile_script
from xnat_flows.transfer.deidentify import ChainedAnonymizer

LABELS = compile_script(
    'version "6.1"\n(0010,0010) := subject\n(0010,0020) := session\n'
    "(0020,000D) := hashUID[(0020,000D)]\n(0008,0018) := hashUID[(0008,0018)]\n-(0010,0030)\n"
)
EVERYWHERE = compile_script(
    'version "6.1"\n(0010,0010) := subject\n*/(0008,1150) := hashUID[(0008,1150)]\nremoveAllPrivateTags\n'
)
UNCHANGED = compile_script('version "6.1"\n(0010,0010) = "nobody" ? (0010,0010) := "x"\n')
PROGRAMS = {
    "labels": LABELS,
    "everywhere": EVERYWHERE,
    "profile": basic_profile(),
    "unchanged": UNCHANGED,
    "chain": ChainedAnonymizer((LABELS, basic_profile(["retain-uids"]))),
}
FILES = [
    "CT_small.dcm",  # explicit VR little endian, private tags
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "image_dfl.dcm",  # deflated: always the whole file
    "JPEG2000.dcm",  # encapsulated: the whole file unless the program stops before Pixel Data
    "rtplan.dcm",  # nested sequences, no pixel data
]


def _check_every_prefix(anonymizer, data: bytes, step: int) -> int:
    """For prefixes of every length (in ``step``s): None, or the same bytes as the whole file gives.
    Returns how many prefixes decided it."""
    whole = anonymizer.apply_bytes(data, VARIABLES)
    decided = 0
    for cut in range(1, len(data), step):
        done = anonymizer.rewrite_head(data[:cut], len(data), VARIABLES)
        if done is None:
            continue
        head, tail_start = done
        assert 0 <= tail_start <= cut
        assert head + data[tail_start:] == whole, f"prefix of {cut} bytes"
        decided += 1
    return decided


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_every_prefix_gives_the_whole_files_bytes_or_none(name: str, program: str) -> None:
    data = pydicom_testdata(name)
    decided = _check_every_prefix(PROGRAMS[program], data, step=97)
    if name in ("CT_small.dcm", "MR_small_implicit.dcm") and program in ("labels", "unchanged"):
        assert decided > 0  # native pixel data, a script reading the first groups: its header decides it
    if name == "CT_small.dcm" and program in ("everywhere", "profile"):
        assert decided == 0  # elements follow its Pixel Data: a program reading everything needs them
    if name == "image_dfl.dcm" or (name == "JPEG2000.dcm" and program in ("everywhere", "profile")):
        assert decided == 0  # deflated data, or encapsulated pixel data a program reading everything walks


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_a_large_native_file_is_decided_by_its_header_alone(syntax) -> None:
    data = to_part10(make_dataset(rows=256, columns=256), syntax)  # 128 KB of pixel data
    pixel_start = data.index(b"\xe0\x7f\x10\x00")
    for program in PROGRAMS.values():
        whole = program.apply_bytes(data, VARIABLES)
        done = program.rewrite_head(data[: pixel_start + 12], len(data), VARIABLES)
        assert done is not None
        head, tail_start = done
        assert head + data[tail_start:] == whole
        assert len(head) < 8192  # the header, not the pixel data
    assert _check_every_prefix(LABELS, data, step=331) > 0


def test_an_element_after_pixel_data_needs_the_whole_file() -> None:
    data = to_part10(make_dataset(rows=64, columns=64), ExplicitVRLittleEndian)
    padded = data + b"\xfc\xff\xfc\xff" + b"OB\0\0" + (4).to_bytes(4, "little") + b"\0\0\0\0"  # trailing padding
    pixel_start = padded.index(b"\xe0\x7f\x10\x00")
    assert basic_profile().rewrite_head(padded[: pixel_start + 12], len(padded), VARIABLES) is None
    assert EVERYWHERE.rewrite_head(padded[: pixel_start + 12], len(padded), VARIABLES) is None


def test_a_missing_variable_is_an_error_from_the_head_too() -> None:
    data = to_part10(make_dataset(rows=64, columns=64), ExplicitVRLittleEndian)
    with pytest.raises(AnonError, match="subject"):
        LABELS.rewrite_head(data[:4096], len(data), {"project": "P"})


KEY_TAGS = (0x00080016, 0x00080018, 0x0020000D, 0x0020000E, 0x00200011)


def _values_in(part10: bytes) -> dict[int, bytes]:
    """The key elements' values of a whole file, parsed again from its bytes."""
    from xnat_flows.anon import rawds

    dataset = rawds.parse_part10(part10).dataset
    return {tag: bytes(element.value) for tag in KEY_TAGS if (element := dataset.get(tag)) is not None}


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("program", sorted(set(PROGRAMS) - {"chain"}))
def test_the_values_read_with_the_head_are_the_rewritten_files(name: str, program: str) -> None:
    """``rewrite_head_reading`` gives the key elements as the rewritten file holds them (what the dry
    run groups and checks by), or None; never another value."""
    anonymizer = PROGRAMS[program]
    data = pydicom_testdata(name)
    expected = _values_in(anonymizer.apply_bytes(data, VARIABLES))
    for cut in range(1, len(data), 97):
        done = anonymizer.rewrite_head_reading(data[:cut], len(data), VARIABLES, KEY_TAGS)
        if done is not None and done.values is not None:
            assert done.values == expected, f"prefix of {cut} bytes"


def test_values_beyond_what_the_script_touches_are_read_from_the_verbatim_tail() -> None:
    data = to_part10(make_dataset(rows=256, columns=256), ExplicitVRLittleEndian)
    pixel_start = data.index(b"\xe0\x7f\x10\x00")
    done = LABELS.rewrite_head_reading(data[: pixel_start + 12], len(data), VARIABLES, KEY_TAGS)  # up to (0020,000D)
    assert done is not None and done.values is not None
    whole = LABELS.apply_bytes(data, VARIABLES)
    assert done.values == _values_in(whole)
    assert done.values[0x0020000D] != _values_in(data)[0x0020000D]  # rewritten by the script
    assert done.values[0x0020000E] == _values_in(data)[0x0020000E]  # beyond it: the original's
    # a prefix ending before the Series Instance UID cannot tell it
    cut = data.index(b"\x20\x00\x0e\x00")
    short = LABELS.rewrite_head_reading(data[: cut + 2], len(data), VARIABLES, KEY_TAGS)
    assert short is None or short.values is None
