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


def test_a_header_read_from_the_first_bytes_is_the_whole_objects_or_none():
    """read_header_head (the importer's shortcut for large tar members): cut anywhere, on every
    file of pydicom's test set, it gives read_header's answer for the whole file, or None (the
    fields routing reads do not all lie within the bytes given)."""
    import warnings
    from pathlib import Path

    from pydicom.data import get_testdata_files

    from xnat_flows.testing import dicomhdr

    answered = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in get_testdata_files("**/*"):
            path = Path(name)
            if not path.is_file():
                continue
            data = path.read_bytes()
            try:
                whole: object = dicomhdr.read_header(data, path.name)
            except dicomhdr.UnparsableDicom as exc:
                whole = str(exc)
            for cut in (0, 131, 200, 300, 500, 700, 1000, 2000, 4096, 32768, len(data)):
                try:
                    head: object = dicomhdr.read_header_head(data[:cut], len(data), path.name)
                except dicomhdr.UnparsableDicom as exc:  # the same refusal, from the same fields
                    head = str(exc)
                if head is not None:
                    assert head == whole, (path.name, cut)
                    answered += cut < len(data)
    assert answered > 100
