"""``alterPixels``: overwrite rectangles of native (uncompressed) pixel data, without decoding it.

Native pixel data is a plain array (PS3.5 section 8.1.1): frame after frame, row after row, each
sample ``BitsAllocated`` bits, colour planes interleaved (Planar Configuration 0) or one after the
other (1). A rectangle is therefore a set of byte ranges, filled with the value's encoding.
Encapsulated (compressed) pixel data would need decoding and re-encoding, which would change every
other pixel's bytes under lossy syntaxes: it is refused with :class:`AnonError`.
"""

from __future__ import annotations

import struct

from xnat_flows.anon.errors import AnonError
from xnat_flows.anon.rawds import EXPLICIT_BE, Instance, PixelEdit

ROWS, COLUMNS, BITS_ALLOCATED = 0x00280010, 0x00280011, 0x00280100
SAMPLES_PER_PIXEL, PLANAR_CONFIGURATION, NUMBER_OF_FRAMES = 0x00280002, 0x00280006, 0x00280008


def _int(instance: Instance, tag: int, default: int | None = None) -> int:
    text = instance.dataset.string(tag)
    if not text:
        if default is None:
            raise AnonError(f"alterPixels needs ({tag >> 16:04X},{tag & 0xFFFF:04X}), which this file lacks")
        return default
    try:
        return int(float(text.split("\\")[0]))
    except ValueError as exc:
        raise AnonError(f"alterPixels: ({tag >> 16:04X},{tag & 0xFFFF:04X}) is not a number: {text!r}") from exc


def apply_pixel_edits(instance: Instance, edits: list[PixelEdit]) -> bytes:
    """The Pixel Data element with every rectangle of ``edits`` filled, as bytes."""
    tail = instance.pixel_tail
    if instance.partial:
        raise AnonError("internal: alterPixels needs the whole header parsed")  # the compiler asks for it
    if not tail:
        raise AnonError("alterPixels: this file has no Pixel Data")
    encoding = instance.body_encoding
    prefix = encoding.prefix
    length = struct.unpack_from(f"{prefix}L", tail, 4 if encoding.implicit else 8)[0]
    header = 8 if encoding.implicit else 12
    if length == 0xFFFFFFFF:
        raise AnonError(
            "alterPixels cannot edit compressed (encapsulated) pixel data without re-encoding it; "
            f"transfer syntax {instance.transfer_syntax}: convert to an uncompressed syntax first"
        )
    rows, columns = _int(instance, ROWS), _int(instance, COLUMNS)
    bits = _int(instance, BITS_ALLOCATED)
    samples = _int(instance, SAMPLES_PER_PIXEL, 1)
    planar = _int(instance, PLANAR_CONFIGURATION, 0)
    frames = _int(instance, NUMBER_OF_FRAMES, 1) or 1
    if bits not in (8, 16, 32):
        raise AnonError(f"alterPixels: Bits Allocated {bits} is not supported (8, 16 or 32)")
    size = bits // 8
    frame_bytes = rows * columns * samples * size
    if frame_bytes * frames > length:
        raise AnonError("alterPixels: Pixel Data is shorter than Rows x Columns x frames says")
    pixels = bytearray(tail[header : header + length])
    big = instance.transfer_syntax == EXPLICIT_BE
    for edit in edits:
        left, right = max(0, edit.left), min(columns, edit.right)
        top, bottom = max(0, edit.top), min(rows, edit.bottom)
        if left >= right or top >= bottom:
            continue
        limit = (1 << bits) - 1
        sample = (edit.value & limit).to_bytes(size, "big" if big else "little")
        for frame in range(frames):
            base = frame * frame_bytes
            if samples == 1 or planar == 0:
                run = sample * (samples * (right - left))
                for row in range(top, bottom):
                    start = base + (row * columns + left) * samples * size
                    pixels[start : start + len(run)] = run
            else:
                plane = rows * columns * size
                run = sample * (right - left)
                for s in range(samples):
                    for row in range(top, bottom):
                        start = base + s * plane + (row * columns + left) * size
                        pixels[start : start + len(run)] = run
    return bytes(tail[:header]) + bytes(pixels) + bytes(tail[header + length :])
