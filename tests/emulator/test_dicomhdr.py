"""dicomhdr: the header fields routing and naming read from an instance."""

from __future__ import annotations


def test_the_fast_header_reader_agrees_with_pydicom_on_its_test_files():
    """dicomhdr.read_header reads little-endian Part-10 files itself (up to routing's last tag) and
    hands everything else to pydicom: on every file of pydicom's test set it reads, the fields are
    pydicom's (or the same refusal)."""
    import warnings
    from pathlib import Path

    from pydicom.data import get_testdata_files

    from xnat_flows.testing import dicomhdr

    read_fast = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in get_testdata_files("**/*"):
            path = Path(name)
            if not path.is_file():
                continue
            data = path.read_bytes()
            try:
                dicomhdr._read_until_stop(data)
            except dicomhdr._NeedsPydicom:
                continue
            read_fast += 1
            outcomes = []
            for reader in (dicomhdr.read_header, dicomhdr._read_header_pydicom):
                try:
                    outcomes.append(reader(data, path.name))
                except dicomhdr.UnparsableDicom as exc:
                    outcomes.append(str(exc))
            assert outcomes[0] == outcomes[1], path.name
    assert read_fast > 100
