"""The sender's pieces without a network: context planning, command encoding, Part-10 parsing, statuses."""

from __future__ import annotations

import socket
import struct
import threading
from io import BytesIO

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.filereader import read_dataset

from xnat_flows.transfer.dicom_association import (
    AssociationRejected,
    Rejection,
    StorageAssociation,
    decode_command,
    encode_command,
)
from xnat_flows.transfer.dicom_contexts import (
    MAX_CONTEXTS_PER_ASSOCIATION,
    plan_association_groups,
)
from xnat_flows.transfer.dicom_send import status_meaning

MR, CT = "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT, IMPLICIT = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"


def test_groups_hold_distinct_pairs_within_the_context_limit() -> None:
    pairs = [(f"1.2.3.{n}", ts) for n in range(100) for ts in (EXPLICIT, IMPLICIT)] * 2
    groups = plan_association_groups(pairs)
    assert [len(g.pairs) for g in groups] == [128, 72]
    assert sorted(p for g in groups for p in g.pairs) == sorted(set(pairs))
    assert [g.index for g in groups] == [0, 1]
    assert len(plan_association_groups([(MR, EXPLICIT), (MR, IMPLICIT), (CT, EXPLICIT)], max_contexts=2)) == 2
    with pytest.raises(ValueError):
        plan_association_groups([(MR, EXPLICIT)], max_contexts=MAX_CONTEXTS_PER_ASSOCIATION + 1)


def test_command_sets_round_trip_with_group_length_and_even_uids() -> None:
    encoded = encode_command([(0x1000, b"1.2.3\x00"), (0x0100, struct.pack("<H", 1)), (0x0002, b"1.2.840\x00")])
    fields = decode_command(encoded)
    assert struct.unpack("<I", fields[0x0000])[0] == len(encoded) - 12
    assert list(fields) == [0x0000, 0x0002, 0x0100, 0x1000]  # ascending element order
    decoded = read_dataset(BytesIO(encoded), is_implicit_VR=True, is_little_endian=True)  # pydicom agrees
    assert decoded.CommandField == 1 and decoded.AffectedSOPInstanceUID == "1.2.3"


def test_status_meanings_name_the_category_and_the_text() -> None:
    assert status_meaning(0x0000) == "Success"
    assert status_meaning(0xB000) == "Warning: Coercion of Data Elements"
    assert status_meaning(0xA700) == "Failure: Refused: Out of Resources"
    assert status_meaning(0xC000) == "Failure: Cannot Understand"
    assert status_meaning(None).startswith("no response")


def _one_shot_server(answer: bytes) -> tuple[int, threading.Thread]:
    """A TCP server that reads one A-ASSOCIATE-RQ and answers with the given bytes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            header = conn.recv(6)
            length = struct.unpack(">I", header[2:])[0]
            while length > 0:
                length -= len(conn.recv(length))
            conn.sendall(answer)
        listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread


def test_a_rejection_is_decoded() -> None:
    port, thread = _one_shot_server(struct.pack(">BBIBBBB", 0x03, 0, 4, 0, 1, 1, 7))
    with pytest.raises(AssociationRejected) as info:
        StorageAssociation.open(
            "127.0.0.1", port, called_aet="X", calling_aet="Y", pairs=[(MR, EXPLICIT)], acse_timeout=5
        )
    thread.join(5)
    assert info.value.rejection == Rejection(1, 1, 7)
    assert "called AE title not recognised" in str(info.value)


def test_only_contexts_accepted_in_the_proposed_syntax_count() -> None:
    def context(cid: int, result: int, syntax: str) -> bytes:
        ts = syntax.encode()
        sub = struct.pack(">BBH", 0x40, 0, len(ts)) + ts
        body = bytes([cid, 0, result, 0]) + sub
        return struct.pack(">BBH", 0x21, 0, len(body)) + body

    user = struct.pack(">BBH", 0x51, 0, 4) + struct.pack(">I", 16384)
    items = (
        context(1, 0, EXPLICIT)
        + context(3, 0, EXPLICIT)  # 3 was proposed as implicit: not usable
        + context(5, 4, EXPLICIT)
        + struct.pack(">BBH", 0x50, 0, len(user))
        + user
    )
    body = struct.pack(">HH", 1, 0) + b"X".ljust(16) + b"Y".ljust(16) + bytes(32) + items
    port, thread = _one_shot_server(struct.pack(">BBI", 0x02, 0, len(body)) + body)
    assoc = StorageAssociation.open(
        "127.0.0.1",
        port,
        called_aet="X",
        calling_aet="Y",
        pairs=[(MR, EXPLICIT), (MR, IMPLICIT), (CT, EXPLICIT)],
        acse_timeout=5,
    )
    thread.join(5)
    assert assoc.accepted == {(MR, EXPLICIT): 1}
    assert assoc.peer_max_pdu == 16384
    assoc.abort()
    assert not assoc.is_open


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
    from pathlib import Path

    from xnat_flows.transfer.dicom_dataset import with_patient_comments
    from xnat_flows.transfer.part10 import dataset_offset

    data = Path(get_testdata_file(name)).read_bytes()
    sent = with_patient_comments(data, "Project:P1 Subject:S1")
    received = pydicom.dcmread(BytesIO(data[: dataset_offset(data)] + sent))  # the file's meta + what was sent
    original = pydicom.dcmread(BytesIO(data))
    assert received.PatientComments == "Project:P1 Subject:S1"
    original.PatientComments = "Project:P1 Subject:S1"
    assert received == original
    assert received.PixelData == original.PixelData


def test_the_send_path_imports_no_heavy_library() -> None:
    """Start-up is part of C-STORE throughput (docs/cstore.md): scanning and sending a directory
    must not import pydicom, pynetdicom, httpx, prefect or pydantic (0.03-0.3 s each)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from xnat_flows.transfer.dicom_send import store_instances\n"
        "from xnat_flows.transfer.dicom_resume import store_instances_resumable\n"
        "from xnat_flows.transfer.scan import scan_directory\n"
        "from xnat_flows.transfer.progress import Progress\n"
        "print(sorted(m for m in ('pydicom', 'pynetdicom', 'httpx', 'prefect', 'pydantic')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
