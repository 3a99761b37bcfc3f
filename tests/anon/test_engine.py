"""The engine's contract beyond the language: character sets, threads, apply_dataset, no-op."""

from __future__ import annotations

import threading

import pytest
from anon_helpers import VARIABLES, make_dataset, read, to_part10

from xnat_flows.anon import basic_profile, compile_script

SCRIPT = compile_script(
    'version "6.1"\n(0010,0010) := format["{0}^{1}", subject, (0010,0010)]\n(0008,0018) := hashUID[(0008,0018)]'
)


def test_non_ascii_values_in_the_dataset_character_set() -> None:
    for charset, encoding in (("ISO_IR 100", "latin-1"), ("ISO_IR 192", "utf-8")):
        ds = make_dataset()
        ds.SpecificCharacterSet = charset
        ds.PatientName = "Müller^Jürgen"
        data = to_part10(ds)
        assert "Müller".encode(encoding) in data
        out = compile_script('version "6.1"\n(0010,0010) ~ "Müller.*" ? (0008,1030) := "Zoë"').apply_bytes(data, {})
        after = read(out)
        assert after.StudyDescription == "Zoë"
        assert "Zoë".encode(encoding) in out


def test_threads_share_one_anonymizer_and_get_serial_results() -> None:
    files = []
    for number in range(16):
        ds = make_dataset()
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.1.7.{number}"
        ds.PatientName = f"Patient^{number}"
        files.append(to_part10(ds))
    expected = [SCRIPT.apply_bytes(data, VARIABLES) for data in files]
    results: dict[int, bytes] = {}

    def work(index: int) -> None:
        for _ in range(20):
            results[index] = SCRIPT.apply_bytes(files[index], VARIABLES)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(len(files))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [results[index] for index in range(len(files))] == expected
    assert len(set(expected)) == len(files)


def test_apply_dataset_in_place() -> None:
    ds = make_dataset()
    ds.file_meta = read(to_part10(make_dataset())).file_meta
    basic_profile().apply_dataset(ds)
    assert ds.PatientName == "" and ds.PatientIdentityRemoved == "YES"
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.PixelData == make_dataset().PixelData


def test_a_program_that_changes_nothing_returns_the_same_bytes() -> None:
    data = to_part10(make_dataset())
    unchanged = compile_script('version "6.1"\n(0008,0060) = "CT" ? -(0010,0010)\n(0010,0040) := "F"')
    assert unchanged.apply_bytes(data, {}) == data


@pytest.mark.filterwarnings("ignore:Failed to encode value")  # text a character set cannot hold: both replace
def test_text_is_encoded_as_pydicom_encodes_it_in_every_character_set() -> None:
    """The engine's shortcut for ASCII text gives pydicom's bytes, and non-ASCII text still goes
    through pydicom's character set support."""
    from pydicom import charset

    from xnat_flows.anon.rawds import EXPLICIT, encode_value

    for specific in ("", "ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 6\\ISO 2022 IR 87", "ISO_IR 13", "GB18030"):
        encodings = charset.convert_encodings(specific.split("\\"))
        for text in ("Doe^John", "SUBJ01_MR1", "Müller^Jürgen", "山田^太郎"):
            try:
                expected = charset.encode_string(text, encodings)
            except UnicodeError:
                continue
            expected += b" " * (len(expected) % 2)
            assert encode_value(text, "PN", EXPLICIT, encodings) == expected, (specific, text)


def test_a_value_read_then_changed_reads_as_changed() -> None:
    """Text read from an element is remembered until a program sets the element."""
    from xnat_flows.anon import rawds

    instance = rawds.parse_part10(to_part10(make_dataset()))
    node = instance.dataset
    before = node.string(rawds.SOP_INSTANCE_UID)
    assert before and node.string(rawds.SOP_INSTANCE_UID) == before
    node.put(rawds.SOP_INSTANCE_UID, "1.2.3.4")
    assert node.string(rawds.SOP_INSTANCE_UID) == "1.2.3.4"
    assert read(rawds.write_part10(instance)).SOPInstanceUID == "1.2.3.4"
