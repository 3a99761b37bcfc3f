"""The bytes a C-STORE sends for a file (``cstore.dataset``): the routing copy."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from xnat_flows.transfer.cstore.dataset import with_patient_comments
from xnat_flows.transfer.part10 import dataset_offset


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "MR_small_implicit.dcm",
        "MR_small_RLE.dcm",
        "JPEG2000.dcm",
        "MR_small_bigendian.dcm",
        "image_dfl.dcm",
    ],
)
def test_routing_copy_changes_patient_comments_only_in_every_transfer_syntax(name: str) -> None:
    data = Path(get_testdata_file(name)).read_bytes()
    sent = with_patient_comments(data, "Project:P1 Subject:S1")
    received = pydicom.dcmread(BytesIO(data[: dataset_offset(data)] + sent))  # the file's meta + what was sent
    original = pydicom.dcmread(BytesIO(data))
    assert received.PatientComments == "Project:P1 Subject:S1"
    original.PatientComments = "Project:P1 Subject:S1"
    assert received == original
    assert received.PixelData == original.PixelData
