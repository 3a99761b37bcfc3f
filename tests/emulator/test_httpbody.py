"""httpbody: request bodies as the emulator's server reads them."""

from __future__ import annotations

import socket
import tempfile
import threading

import pytest

from xnat_flows.testing.httpbody import BodyError, RequestBody


def _body_over_socket(
    payload: bytes, content_length: int
) -> tuple[RequestBody, socket.socket, socket.socket, threading.Thread]:
    server, client = socket.socketpair()
    server.settimeout(30)  # a blocked read fails the test instead of hanging it
    sender = threading.Thread(target=client.sendall, args=(payload,), daemon=True)  # more than the socket holds
    sender.start()
    reader = server.makefile("rb")
    server.settimeout(None)  # RequestBody splices only from a blocking socket (the server's own rule)
    return RequestBody(reader, content_length, False, server.fileno()), server, client, sender


@pytest.mark.parametrize("spliced", [True, False])
def test_splice_into_writes_the_bodys_next_bytes_and_stops_at_its_end(spliced):
    """Bytes already buffered by the reader, then the socket's, go to the file in order; the next
    request's bytes stay for the next request; without a socket the same bytes are read."""
    body_bytes = bytes(i % 253 for i in range(300_000))
    body, server, client, _ = _body_over_socket(body_bytes + b"GET /next HTTP/1.1\r\n", len(body_bytes))
    if not spliced:
        body = RequestBody(body._rfile, len(body_bytes), False)
    with server, client, tempfile.TemporaryFile() as out:
        assert body.read(1000) == body_bytes[:1000]  # leaves bytes in the reader's buffer
        assert body.can_splice is spliced
        assert body.splice_into(out.fileno(), 10**9) == len(body_bytes) - 1000  # no further than the body
        assert body.exhausted and body.bytes_read == len(body_bytes)
        out.seek(0)
        assert out.read() == body_bytes[1000:]
        assert body._rfile.readline(100) == b"GET /next HTTP/1.1\r\n"
        body.close()


def test_a_connection_closed_inside_a_spliced_body_is_a_body_error():
    body, server, client, sender = _body_over_socket(b"x" * 100_000, 200_000)
    with server, tempfile.TemporaryFile() as out:
        assert body.read(10) == b"x" * 10
        sender.join(30)
        client.shutdown(socket.SHUT_WR)  # the peer writes nothing more
        with pytest.raises(BodyError):
            body.splice_into(out.fileno(), 200_000)
        body.close()
        client.close()
