"""Request bodies for the emulator's stdlib HTTP server: Content-Length or chunked, and multipart.

Bodies are streamed (never held whole in memory): httpx sends generator bodies chunked, and
DICOM-zip uploads can be gigabytes.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Protocol

_CHUNK = 1024 * 1024


class BodyError(Exception):
    """Malformed framing: the connection cannot be reused."""


class MalformedMultipart(ValueError):
    """A complete body that is not valid multipart/form-data (XNAT answers 400)."""


class LineReader(Protocol):
    """What a request body is read from: the connection's ``rfile`` (or its throttled wrapper)."""

    def read(self, size: int, /) -> bytes: ...

    def readline(self, size: int, /) -> bytes: ...


class RequestBody:
    """A readable view of one request body, honouring Content-Length or chunked framing."""

    def __init__(self, rfile: LineReader, content_length: int | None, chunked: bool) -> None:
        self._rfile = rfile
        self._chunked = chunked
        self._remaining = content_length or 0  # bytes left in the body (or current chunk)
        self._done = not chunked and self._remaining == 0
        self._pushback = b""
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    @property
    def exhausted(self) -> bool:
        return self._done and not self._pushback

    def is_empty(self) -> bool:
        """True when the body carries no bytes at all (peeks at the first chunk if needed)."""
        if self._pushback:
            return False
        first = self.read(1)
        if first:
            self._pushback = first
            self.bytes_read -= 1
        return not first

    def _next_chunk_size(self) -> None:
        line = self._rfile.readline(65537)
        if not line:
            raise BodyError("connection closed inside chunked body")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise BodyError(f"bad chunk size line {line!r}") from exc
        if size == 0:
            while True:  # trailers, up to the empty line
                trailer = self._rfile.readline(65537)
                if trailer in (b"\r\n", b"\n", b""):
                    break
            self._done = True
        self._remaining = size

    def read(self, size: int = -1) -> bytes:
        if self._pushback:
            if size is None or size < 0:
                head, self._pushback = self._pushback, b""
                self.bytes_read += len(head)
                return head + self.read(-1)
            head, self._pushback = self._pushback[:size], self._pushback[size:]
            self.bytes_read += len(head)
            return head
        if size is None or size < 0:
            parts: list[bytes] = []
            while True:
                part = self.read(_CHUNK)
                if not part:
                    return b"".join(parts)
                parts.append(part)
        # One framed read per call (short reads allowed, like a socket): avoids re-buffering copies.
        if self._done or size == 0:
            return b""
        if self._remaining == 0:
            if not self._chunked:
                self._done = True
                return b""
            self._next_chunk_size()
            if self._done:
                return b""
        data = self._rfile.read(min(size, self._remaining))
        if not data:
            raise BodyError("connection closed inside body")
        self._remaining -= len(data)
        if self._remaining == 0:
            if self._chunked:
                self._rfile.readline(3)  # CRLF after the chunk data
            else:
                self._done = True
        self.bytes_read += len(data)
        return data

    def read_up_to(self, limit: int) -> bytes:
        """The whole body, or its first ``limit`` bytes (``read`` may return less than asked)."""
        parts: list[bytes] = []
        left = limit
        while left > 0:
            part = self.read(min(left, _CHUNK))
            if not part:
                break
            parts.append(part)
            left -= len(part)
        return b"".join(parts)

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


@dataclass
class FilePart:
    field_name: str
    filename: str
    content_type: str
    path: Path


@dataclass
class MultipartForm:
    fields: dict[str, list[str]] = field(default_factory=dict)
    files: list[FilePart] = field(default_factory=list)

    def cleanup(self) -> None:
        for part in self.files:
            part.path.unlink(missing_ok=True)


def _parse_headers(raw: bytes) -> tuple[str, dict[str, str], str]:
    message = Message()
    for line in raw.decode("latin-1").split("\r\n"):
        if ":" in line:
            key, value = line.split(":", 1)
            message[key.strip()] = value.strip()
    disposition = message.get("Content-Disposition", "")
    params: dict[str, str] = {}
    for item in disposition.split(";")[1:]:
        if "=" in item:
            key, value = item.split("=", 1)
            params[key.strip().lower()] = value.strip().strip('"')
    return disposition, params, message.get("Content-Type", "application/octet-stream")


def parse_multipart(body: RequestBody, boundary: str, tmp_dir: Path) -> MultipartForm:
    """Stream a multipart/form-data body: fields into memory, files into temp files under tmp_dir.

    A body that ends cleanly but is not valid multipart raises MalformedMultipart (nothing is left
    behind); a connection cut inside the body raises BodyError from the reads."""
    form = MultipartForm()
    try:
        _parse_parts(body, boundary, tmp_dir, form)
    except BaseException:
        form.cleanup()
        raise
    return form


def _parse_parts(body: RequestBody, boundary: str, tmp_dir: Path, form: MultipartForm) -> None:
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    buffer = b"\r\n"  # lets the first delimiter match the same pattern as the rest
    while delimiter not in buffer:
        more = body.read(_CHUNK)
        if not more:
            raise MalformedMultipart("multipart body without its boundary")
        buffer += more
    buffer = buffer[buffer.index(delimiter) + len(delimiter) :]
    tmp_dir.mkdir(parents=True, exist_ok=True)
    while True:
        while len(buffer) < 2:
            buffer += body.read(_CHUNK) or b"--"
        if buffer.startswith(b"--"):
            return
        while b"\r\n\r\n" not in buffer:
            more = body.read(_CHUNK)
            if not more:
                raise MalformedMultipart("multipart part without the end of its headers")
            buffer += more
        header_blob, buffer = buffer[2:].split(b"\r\n\r\n", 1)
        _, params, ctype = _parse_headers(header_blob)
        is_file = "filename" in params
        sink = tempfile.NamedTemporaryFile(dir=tmp_dir, prefix="mp-", delete=False) if is_file else None  # noqa: SIM115 - closed below
        if sink is not None:  # registered at once, so that cleanup() removes it whatever happens next
            form.files.append(
                FilePart(params.get("name", ""), params.get("filename") or "upload", ctype, Path(sink.name))
            )
        value = bytearray()
        try:
            while True:
                index = buffer.find(delimiter)
                if index >= 0:
                    content, buffer = buffer[:index], buffer[index + len(delimiter) :]
                    (sink.write(content) if sink else value.extend(content))
                    break
                keep = len(delimiter)
                if len(buffer) > keep:
                    content, buffer = buffer[:-keep], buffer[-keep:]
                    (sink.write(content) if sink else value.extend(content))
                more = body.read(_CHUNK)
                if not more:
                    raise MalformedMultipart("multipart part without its closing boundary")
                buffer += more
        finally:
            if sink is not None:
                sink.close()
        if sink is None:
            form.fields.setdefault(params.get("name", ""), []).append(value.decode("utf-8", "replace"))


def write_all(fd: int, data: bytes) -> None:
    """All of ``data`` to the file ``fd`` (``os.write`` may write less than it is given)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
