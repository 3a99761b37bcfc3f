"""The lean upper layer (``cstore.association``) without a receiver: command sets, A-ASSOCIATE answers."""

from __future__ import annotations

import socket
import struct
import threading
from io import BytesIO

import pytest
from pydicom.filereader import read_dataset

from xnat_flows.transfer.cstore.association import (
    AssociationRejected,
    Rejection,
    StorageAssociation,
    decode_command,
    encode_command,
)

MR, CT = "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT, IMPLICIT = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"


def test_command_sets_round_trip_with_group_length_and_even_uids() -> None:
    encoded = encode_command([(0x1000, b"1.2.3\x00"), (0x0100, struct.pack("<H", 1)), (0x0002, b"1.2.840\x00")])
    fields = decode_command(encoded)
    assert struct.unpack("<I", fields[0x0000])[0] == len(encoded) - 12
    assert list(fields) == [0x0000, 0x0002, 0x0100, 0x1000]  # ascending element order
    decoded = read_dataset(BytesIO(encoded), is_implicit_VR=True, is_little_endian=True)  # pydicom agrees
    assert decoded.CommandField == 1 and decoded.AffectedSOPInstanceUID == "1.2.3"


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
