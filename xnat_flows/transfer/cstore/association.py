"""A lean DICOM upper-layer association for the C-STORE sender (PS3.8 PDUs, PS3.7 command sets).

Why not pynetdicom's ``Association`` here: its reactor thread costs ~4 ms of CPU per message
and, under CPU contention, sometimes never sends the last PDU of a message (the SCU then waits
for a response the SCP never gets; docs/cstore.md). This SCU is a plain blocking socket in the
calling thread: one ``sendall`` per PDU, one ``recv`` loop per response, nothing else running.
It does only what a storage SCU needs: associate, C-ECHO, C-STORE, release, abort.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from xnat_flows.transfer.part10 import dataset_offset

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLEMENTATION_CLASS_UID = "2.25.62405182542291675675188163381205211581"  # uuid5 of this SCU's name
IMPLEMENTATION_VERSION = "XNATFLOWS_01"
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"

_ASSOCIATE_RQ, _ASSOCIATE_AC, _ASSOCIATE_RJ = 0x01, 0x02, 0x03
_P_DATA, _RELEASE_RQ, _RELEASE_RP, _ABORT = 0x04, 0x05, 0x06, 0x07
_COMMAND, _LAST = 0x01, 0x02  # message control header bits of a PDV
_C_STORE_RQ, _C_ECHO_RQ = 0x0001, 0x0030
_NO_DATASET, _DATASET_PRESENT = 0x0101, 0x0000


class UpperLayerError(Exception):
    """The association could not be used (connection lost, peer aborted, protocol error)."""


class NoResponse(UpperLayerError):
    """No DIMSE response within the timeout, or the connection ended while waiting for one."""


@dataclass(frozen=True)
class Rejection:
    """An A-ASSOCIATE-RJ: result 1 permanent / 2 transient; source 1 user, 2 ACSE, 3 presentation."""

    result: int
    source: int
    reason: int

    def describe(self) -> str:
        """The rejection in words, e.g. ``permanent: called AE title not recognised``."""
        reasons = {
            (1, 1): "no reason given",
            (1, 2): "application context name not supported",
            (1, 3): "calling AE title not recognised",
            (1, 7): "called AE title not recognised",
            (2, 1): "no reason given",
            (2, 2): "protocol version not supported",
            (3, 1): "temporary congestion",
            (3, 2): "local limit exceeded",
        }
        kind = {1: "permanent", 2: "transient"}.get(self.result, f"result {self.result}")
        return f"{kind}: {reasons.get((self.source, self.reason), f'source {self.source}, reason {self.reason}')}"


class AssociationRejected(UpperLayerError):
    """The receiver rejected the association (A-ASSOCIATE-RJ); ``rejection`` says why."""

    def __init__(self, rejection: Rejection) -> None:
        self.rejection = rejection
        super().__init__(f"association rejected ({rejection.describe()})")


# -- encoding helpers ------------------------------------------------------------------------------
def _uid_bytes(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _item(item_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(payload)) + payload


def _ae(title: str) -> bytes:
    return title.encode("ascii").ljust(16, b" ")


def _implicit_element(group: int, element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", group, element, len(value)) + value


def encode_command(fields: list[tuple[int, bytes]]) -> bytes:
    """A group-0000 command set in Implicit VR Little Endian, with its group length first.

    Args:
        fields: (element, value) pairs of group 0000, in any order; values already encoded.

    Returns:
        The encoded command set, elements in ascending order after the group length.
    """
    body = b"".join(_implicit_element(0x0000, element, value) for element, value in sorted(fields))
    return _implicit_element(0x0000, 0x0000, struct.pack("<I", len(body))) + body


def decode_command(data: bytes) -> dict[int, bytes]:
    """The elements of a group-0000 command set in Implicit VR Little Endian (``encode_command``'s inverse).

    Args:
        data: The command set's bytes, as received.

    Returns:
        Each element's value bytes by element number (group length included).
    """
    fields: dict[int, bytes] = {}
    offset = 0
    while offset + 8 <= len(data):
        _group, element, length = struct.unpack_from("<HHI", data, offset)
        fields[element] = data[offset + 8 : offset + 8 + length]
        offset += 8 + length
    return fields


# -- the association -------------------------------------------------------------------------------
class StorageAssociation:
    """``StorageAssociation.open(...)``, then ``store(...)`` per instance, then ``release()``."""

    def __init__(
        self,
        sock: socket.socket,
        accepted: dict[tuple[str, str], int],
        peer_max_pdu: int,
        dimse_timeout: float,
        acse_timeout: float,
    ) -> None:
        self._sock = sock
        self.accepted = accepted  # (SOP class, transfer syntax) -> presentation context ID
        self.peer_max_pdu = peer_max_pdu
        self.dimse_timeout = dimse_timeout
        self.acse_timeout = acse_timeout
        self._message_id = 0
        self.is_open = True

    @classmethod
    def open(
        cls,
        host: str,
        port: int,
        *,
        called_aet: str,
        calling_aet: str,
        pairs: list[tuple[str, str]],
        max_pdu: int = 131072,
        connect_timeout: float = 30.0,
        acse_timeout: float = 30.0,
        dimse_timeout: float = 30.0,
    ) -> StorageAssociation:
        """Connect and negotiate one presentation context per (SOP class, transfer syntax) pair.

        Raises ``OSError`` for connection problems, ``AssociationRejected`` and ``UpperLayerError``.

        Returns:
            The open association, with the contexts the peer accepted.
        """
        if not 1 <= len(pairs) <= 128:
            raise ValueError("an association carries 1..128 presentation contexts")
        # an ASCII host as bytes: a str makes getaddrinfo import the idna codec (~10 ms of start-up)
        address = host.encode("ascii") if host.isascii() else host
        sock = socket.create_connection((address, port), timeout=connect_timeout)  # type: ignore[arg-type]  # bytes work too
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # Nagle costs ~40 ms per message
            sock.settimeout(acse_timeout)
            proposed = {2 * index + 1: pair for index, pair in enumerate(pairs)}
            sock.sendall(cls._associate_request(called_aet, calling_aet, proposed, max_pdu))
            pdu_type, body = _read_pdu(sock)
            if pdu_type == _ASSOCIATE_RJ:
                raise AssociationRejected(Rejection(body[1], body[2], body[3]))
            if pdu_type == _ABORT:
                raise UpperLayerError("the peer aborted the association request")
            if pdu_type != _ASSOCIATE_AC:
                raise UpperLayerError(f"unexpected PDU type 0x{pdu_type:02X} in answer to A-ASSOCIATE-RQ")
            accepted, peer_max = cls._parse_accept(body, proposed)
        except BaseException:
            sock.close()
            raise
        return cls(sock, accepted, peer_max, dimse_timeout, acse_timeout)

    @staticmethod
    def _associate_request(called: str, calling: str, proposed: dict[int, tuple[str, str]], max_pdu: int) -> bytes:
        items = [_item(0x10, APPLICATION_CONTEXT.encode())]
        for context_id, (sop_class, transfer_syntax) in proposed.items():
            items.append(
                _item(
                    0x20,
                    bytes([context_id, 0, 0, 0])
                    + _item(0x30, sop_class.encode())
                    + _item(0x40, transfer_syntax.encode()),
                )
            )
        user = (
            _item(0x51, struct.pack(">I", max_pdu))
            + _item(0x52, IMPLEMENTATION_CLASS_UID.encode())
            + _item(0x55, IMPLEMENTATION_VERSION.encode())
        )
        items.append(_item(0x50, user))
        body = struct.pack(">HH", 1, 0) + _ae(called) + _ae(calling) + bytes(32) + b"".join(items)
        return struct.pack(">BBI", _ASSOCIATE_RQ, 0, len(body)) + body

    @staticmethod
    def _parse_accept(body: bytes, proposed: dict[int, tuple[str, str]]) -> tuple[dict[tuple[str, str], int], int]:
        accepted: dict[tuple[str, str], int] = {}
        peer_max = 0
        offset = 68  # version, reserved, two AE titles, 32 reserved bytes
        while offset + 4 <= len(body):
            item_type, _, length = struct.unpack_from(">BBH", body, offset)
            payload = body[offset + 4 : offset + 4 + length]
            if item_type == 0x21:
                context_id, result = payload[0], payload[2]
                sub_type, _, sub_length = struct.unpack_from(">BBH", payload, 4)
                syntax = payload[8 : 8 + sub_length].rstrip(b"\x00 ").decode("ascii") if sub_type == 0x40 else ""
                pair = proposed.get(context_id)
                # accept only what we proposed, in the syntax we proposed (a file is sent as encoded)
                if result == 0 and pair is not None and syntax == pair[1]:
                    accepted[pair] = context_id
            elif item_type == 0x50:
                sub = 0
                while sub + 4 <= len(payload):
                    sub_type, _, sub_length = struct.unpack_from(">BBH", payload, sub)
                    if sub_type == 0x51:
                        peer_max = struct.unpack_from(">I", payload, sub + 4)[0]
                    sub += 4 + sub_length
            offset += 4 + length
        return accepted, peer_max

    # -- DIMSE ---------------------------------------------------------------------------------
    def _next_message_id(self) -> int:
        self._message_id = self._message_id % 0xFFFF + 1
        return self._message_id

    def _fragment_size(self) -> int:
        limit = self.peer_max_pdu if self.peer_max_pdu else 1 << 20  # 0: peer has no limit
        return max(limit - 6, 16)  # PDV item length (4) + context ID + control header

    def _send_pdv(self, context_id: int, control: int, fragment: bytes | memoryview) -> None:
        header = struct.pack(">BBIIBB", _P_DATA, 0, len(fragment) + 6, len(fragment) + 2, context_id, control)
        # one syscall and, with TCP_NODELAY, no lone 12-byte segment ahead of the data
        sent = self._sock.sendmsg([header, fragment])
        if sent < len(header) + len(fragment):
            self._sock.sendall((header + bytes(fragment))[sent:])

    def _send_message(self, context_id: int, command: bytes, dataset: bytes | memoryview | None) -> None:
        self._send_pdv(context_id, _COMMAND | _LAST, command)
        if dataset is None:
            return
        step = self._fragment_size()
        view = memoryview(dataset)
        for start in range(0, len(view), step):
            last = start + step >= len(view)
            self._send_pdv(context_id, _LAST if last else 0, view[start : start + step])

    def _await_status(self, message_id: int) -> int:
        """The Status of the response to ``message_id``."""
        self._sock.settimeout(self.dimse_timeout)
        command = bytearray()
        while True:
            try:
                pdu_type, body = _read_pdu(self._sock)
            except TimeoutError:
                raise NoResponse(f"no response within {self.dimse_timeout:g} s") from None
            except OSError as exc:
                raise NoResponse(f"connection lost while waiting for a response: {exc}") from None
            if pdu_type == _ABORT:
                self._close()
                raise NoResponse("the peer aborted the association")
            if pdu_type == _RELEASE_RQ:
                self._close()
                raise NoResponse("the peer released the association")
            if pdu_type != _P_DATA:
                raise UpperLayerError(f"unexpected PDU type 0x{pdu_type:02X} while waiting for a response")
            offset = 0
            while offset + 6 <= len(body):
                item_length, _context_id, control = struct.unpack_from(">IBB", body, offset)
                fragment = body[offset + 6 : offset + 4 + item_length]
                offset += 4 + item_length
                if control & _COMMAND:
                    command += fragment
                    if control & _LAST:
                        fields = decode_command(bytes(command))
                        command.clear()
                        responded = struct.unpack("<H", fields.get(0x0120, b"\x00\x00"))[0]
                        if responded == message_id and 0x0900 in fields:
                            return struct.unpack("<H", fields[0x0900])[0]

    def echo(self) -> int:
        """C-ECHO on the Verification context (the peer must have accepted it); returns the DIMSE status."""
        context_id = next((cid for (sop, _), cid in self.accepted.items() if sop == VERIFICATION_SOP_CLASS), None)
        if context_id is None:
            raise UpperLayerError("the peer did not accept the Verification SOP class")
        message_id = self._next_message_id()
        command = encode_command(
            [
                (0x0002, _uid_bytes(VERIFICATION_SOP_CLASS)),
                (0x0100, struct.pack("<H", _C_ECHO_RQ)),
                (0x0110, struct.pack("<H", message_id)),
                (0x0800, struct.pack("<H", _NO_DATASET)),
            ]
        )
        self._guarded_send(context_id, command, None)
        return self._await_status(message_id)

    def store(self, sop_class: str, transfer_syntax: str, sop_instance_uid: str, dataset: bytes | memoryview) -> int:
        """C-STORE one encoded dataset (no file meta); returns the DIMSE status.

        Raises ``KeyError`` if the pair was not accepted, ``NoResponse`` when no answer came.

        Returns:
            The DIMSE status (0x0000 Success; 0xBxxx Warning; anything else a failure).
        """
        return self.await_status(self.send_store(sop_class, transfer_syntax, sop_instance_uid, dataset))

    def send_store(
        self, sop_class: str, transfer_syntax: str, sop_instance_uid: str, dataset: bytes | memoryview
    ) -> int:
        """The request half of ``store``.

        Sends the C-STORE-RQ and returns its message ID, so the caller can prepare the next instance
        while the peer stores this one.

        Returns:
            The request's message ID, for ``await_status``.
        """
        context_id = self.accepted[(sop_class, transfer_syntax)]
        message_id = self._next_message_id()
        command = encode_command(
            [
                (0x0002, _uid_bytes(sop_class)),
                (0x0100, struct.pack("<H", _C_STORE_RQ)),
                (0x0110, struct.pack("<H", message_id)),
                (0x0700, struct.pack("<H", 0)),  # priority: medium
                (0x0800, struct.pack("<H", _DATASET_PRESENT)),
                (0x1000, _uid_bytes(sop_instance_uid)),
            ]
        )
        self._guarded_send(context_id, command, dataset)
        return message_id

    def await_status(self, message_id: int) -> int:
        """The response half of ``store``: the DIMSE status for ``message_id``."""
        return self._await_status(message_id)

    def store_file(self, path: str | Path, sop_class: str, transfer_syntax: str, sop_instance_uid: str) -> int:
        """C-STORE a Part-10 file's dataset exactly as it is encoded on disk."""
        data = Path(path).read_bytes()
        return self.store(sop_class, transfer_syntax, sop_instance_uid, memoryview(data)[dataset_offset(data) :])

    def _guarded_send(self, context_id: int, command: bytes, dataset: bytes | memoryview | None) -> None:
        if not self.is_open:
            raise UpperLayerError("the association is closed")
        self._sock.settimeout(self.dimse_timeout)
        try:
            self._send_message(context_id, command, dataset)
        except OSError as exc:  # includes a send that blocks past the timeout
            self._close()
            raise NoResponse(f"connection lost while sending: {exc}") from None

    # -- ending -----------------------------------------------------------------------------------
    def release(self) -> None:
        """Release the association politely, then close the socket (a closed association is left alone)."""
        if not self.is_open:
            return
        try:
            self._sock.settimeout(self.acse_timeout)
            self._sock.sendall(struct.pack(">BBII", _RELEASE_RQ, 0, 4, 0))
            while True:  # responses still in flight are discarded until the release answer
                pdu_type, _ = _read_pdu(self._sock)
                if pdu_type in (_RELEASE_RP, _ABORT):
                    break
        except OSError:
            pass
        finally:
            self._close()

    def abort(self) -> None:
        """Abort the association (A-ABORT) and close the socket, for when no orderly release is possible."""
        if not self.is_open:
            return
        try:
            self._sock.sendall(struct.pack(">BBIBBBB", _ABORT, 0, 4, 0, 0, 0, 0))
        except OSError:
            pass
        finally:
            self._close()

    def _close(self) -> None:
        self.is_open = False
        with contextlib.suppress(OSError):
            self._sock.close()


def _read_exact(sock: socket.socket, count: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < count:
        piece = sock.recv(count - len(chunks))
        if not piece:
            raise ConnectionResetError("the peer closed the connection")
        chunks += piece
    return bytes(chunks)


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    pdu_type, _, length = struct.unpack(">BBI", _read_exact(sock, 6))
    return pdu_type, _read_exact(sock, length)
