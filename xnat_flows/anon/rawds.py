"""A header-only DICOM Part 10 reader and writer, built for rewriting headers fast and exactly.

pydicom parses and re-encodes every element (~1.3 ms to read and ~5 ms to read and write
CT_small.dcm on this project's machines, docs/performance.md); de-identifying on the way out
needs ~10x that speed and must leave pixel data alone. So this module keeps each element as a
span of the original bytes and re-encodes only what a program changed:

* the top-level dataset is indexed element by element (tag, VR, span); values are decoded only
  when asked for, sequences are split into items only when a program walks into them;
* Pixel Data is never parsed: native or encapsulated, its span is copied verbatim (``alterPixels``
  edits a copy of native pixel data, see :func:`write_part10`);
* writing copies runs of untouched elements as one slice; a changed sequence is re-encoded from
  its items, whose untouched elements are again copied verbatim;
* group lengths (gggg,0000) of a dataset that changed are dropped (retired; they would be stale),
  the File Meta group length is recomputed, and the Media Storage SOP Instance/Class UIDs follow
  the dataset's SOP Instance/Class UIDs.

Transfer syntaxes: implicit VR little endian, explicit VR little and big endian, deflated explicit
VR little endian (the body is inflated, rewritten, and deflated again at a fixed level so output
stays deterministic), and every encapsulated (compressed) syntax, whose header is explicit VR
little endian. Element encoding follows DICOM PS3.5 section 7; the value decoding of text uses
pydicom's character set support (PS3.5 section 6.1).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from pydicom import charset as dicom_charset
from pydicom import datadict

from xnat_flows.anon.errors import AnonError

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"

PIXEL_DATA = 0x7FE00010
ITEM = 0xFFFEE000
ITEM_END = 0xFFFEE00D
SEQUENCE_END = 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
SPECIFIC_CHARACTER_SET = 0x00080005
SOP_CLASS_UID = 0x00080016
SOP_INSTANCE_UID = 0x00080018
MEDIA_STORAGE_SOP_CLASS_UID = 0x00020002
MEDIA_STORAGE_SOP_INSTANCE_UID = 0x00020003
TRANSFER_SYNTAX_UID = 0x00020010

# Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 Table 7.1-1).
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
KNOWN_VRS = frozenset(
    [
        "AE",
        "AS",
        "AT",
        "CS",
        "DA",
        "DS",
        "DT",
        "FD",
        "FL",
        "IS",
        "LO",
        "LT",
        "OB",
        "OD",
        "OF",
        "OL",
        "OV",
        "OW",
        "PN",
        "SH",
        "SL",
        "SQ",
        "SS",
        "ST",
        "SV",
        "TM",
        "UC",
        "UI",
        "UL",
        "UN",
        "UR",
        "US",
        "UT",
        "UV",
    ]
)
TEXT_VRS = frozenset(
    ["AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"]
)
# Text whose value is decoded with the Specific Character Set (the others are ASCII by definition).
CHARSET_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
# Python codecs for a Specific Character Set (pydicom's names) whose first code table is ASCII, with
# no code extensions: text that is ASCII encodes to the same bytes in them.
_ASCII_FIRST = frozenset({"iso8859", "latin_1", "UTF8", "utf_8"})
_NO_CODECS: list[str] = []  # what ``encode_value`` is given for a value outside the Specific Character Set
NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "UV": "Q", "SV": "q"}


@dataclass(frozen=True)
class Encoding:
    implicit: bool
    little: bool

    @property
    def prefix(self) -> str:
        return "<" if self.little else ">"


IMPLICIT = Encoding(implicit=True, little=True)
EXPLICIT = Encoding(implicit=False, little=True)
EXPLICIT_BIG = Encoding(implicit=False, little=False)


@lru_cache(maxsize=4096)
def dictionary_vr(tag: int) -> str:
    """The VR an implicit-VR element has by the data dictionary (first of "US or SS" and such)."""
    if tag & 0xFFFF == 0:
        return "UL"  # group length
    try:
        vr = datadict.dictionary_VR(tag)
    except KeyError:
        return "UN"
    return vr.split(" or ")[0] if vr else "UN"


# An element not yet looked at: (vr, source, start, value_start, end, undefined, item_encoding).
Span = tuple[str, bytes, int, int, int, bool, "Encoding | None"]


class Element:
    """One data element: its original bytes (``source[start:end]``, header included) until a
    program changes it; then ``value`` (encoded bytes) or ``items`` hold the new content."""

    __slots__ = (
        "_items",
        "_text",
        "_value",
        "changed",
        "end",
        "item_encoding",
        "source",
        "start",
        "tag",
        "undefined",
        "value_start",
        "vr",
    )

    def __init__(
        self,
        tag: int,
        vr: str,
        source: bytes,
        start: int,
        value_start: int,
        end: int,
        undefined: bool,
        item_encoding: Encoding | None,
    ) -> None:
        self.tag = tag
        self.vr = vr
        self.source = source
        self.start = start
        self.end = end
        self.undefined = undefined
        self.item_encoding = item_encoding  # set for sequences (SQ, or UN of undefined length)
        self.value_start = value_start
        self._value: bytes | None = None  # the new encoded value, once a program set one
        self._items: list[Node] | None = None
        self._text: str | None = None  # the value as text, once read (not for CHARSET_VRS: see Node.string)
        self.changed = False

    @property
    def value(self) -> bytes | memoryview:
        """The encoded value: the original span until a program set a new one."""
        if self._value is not None:
            return self._value
        return memoryview(self.source)[self.value_start : self.end - (8 if self.undefined else 0)]

    def raw(self) -> bytes:
        """``value`` as bytes: one copy of the original span, not a view then a copy."""
        if self._value is not None:
            return self._value
        return self.source[self.value_start : self.end - (8 if self.undefined else 0)]

    @property
    def is_sequence(self) -> bool:
        return self.item_encoding is not None and self.tag != PIXEL_DATA

    def items(self, charsets: list[str] | None = None) -> list[Node]:
        """The sequence's items, parsed on first use (empty for a non-sequence); ``charsets``:
        the enclosing dataset's, which items inherit."""
        if self._items is None:
            if not self.is_sequence:
                self._items = []
            else:
                assert self.item_encoding is not None
                self._items = _parse_items(self.raw(), self.item_encoding, self.tag, charsets)
        return self._items

    def subtree_changed(self) -> bool:
        return self.changed or (self._items is not None and any(item.subtree_changed() for item in self._items))

    def set_value(self, encoded: bytes, vr: str | None = None) -> None:
        self._value = encoded
        self._text = None
        if vr is not None:
            self.vr = vr
        self.changed = True
        self._items = None
        self.item_encoding = None
        self.undefined = False


class Node:
    """A dataset (the top level or one sequence item): elements by tag, in file order."""

    __slots__ = ("added", "changed", "charsets", "elements", "encoding", "parent_charsets")

    def __init__(
        self, elements: dict[int, Element | Span], encoding: Encoding, parent_charsets: list[str] | None
    ) -> None:
        self.elements = elements
        self.encoding = encoding
        self.changed = False
        self.added = False  # an element was created: tags are no longer in file order
        self.parent_charsets = parent_charsets
        self.charsets: list[str] | None = None

    # --- reading -----------------------------------------------------------------------------
    def get(self, tag: int) -> Element | None:
        entry = self.elements.get(tag)
        if entry is None or isinstance(entry, Element):
            return entry
        element = Element(tag, *entry)  # first use of an element: from its span
        self.elements[tag] = element
        return element

    def __iter__(self) -> Iterator[Element]:
        return iter([element for tag in list(self.elements) if (element := self.get(tag)) is not None])

    def __contains__(self, tag: int) -> bool:
        return tag in self.elements

    def is_sequence(self, tag: int) -> bool:
        """Whether the element ``tag`` (present) is a sequence, without building its Element."""
        entry = self.elements[tag]
        if isinstance(entry, tuple):
            return entry[6] is not None and tag != PIXEL_DATA
        return entry.is_sequence

    def vr(self, tag: int) -> str:
        entry = self.elements[tag]
        return entry[0] if isinstance(entry, tuple) else entry.vr

    def has_value(self, tag: int) -> bool:
        entry = self.elements[tag]
        if isinstance(entry, tuple):
            return entry[4] - (8 if entry[5] else 0) > entry[3]
        return len(entry.value) > 0

    def delete_many(self, tags: list[int]) -> None:
        for tag in tags:
            del self.elements[tag]
        if tags:
            self.changed = True
            if SPECIFIC_CHARACTER_SET in tags:
                self.charsets = None

    def items(self, element: Element) -> list[Node]:
        """The items of one of this dataset's sequences (they inherit its character set)."""
        return element.items(self.encodings())

    def encodings(self) -> list[str]:
        """Python codecs for this dataset's Specific Character Set (an item inherits its parent's)."""
        if self.charsets is None:
            element = self.get(SPECIFIC_CHARACTER_SET)
            if element is None:
                self.charsets = self.parent_charsets or ["iso8859"]
            else:
                names = element.raw().decode("ascii", "replace").strip(" \0").split("\\")
                self.charsets = dicom_charset.convert_encodings([n.strip() for n in names] or [""])
        return self.charsets

    def string(self, tag: int) -> str | None:
        """The element's value as DicomEdit sees it: text (multiple values joined by backslash),
        numbers as decimal text; ``None`` if the element is absent."""
        element = self.get(tag)
        if element is None:
            return None
        if element._text is not None:
            return element._text
        if element.vr in CHARSET_VRS:  # its text depends on the Specific Character Set, which may change
            return decode_value(element, self.encoding, self.encodings())
        # UIDs, dates, codes, numbers: read several times a run (the SOP UIDs by the engine itself)
        element._text = decode_value(element, self.encoding, ())
        return element._text

    # --- changing ----------------------------------------------------------------------------
    def put(self, tag: int, text: str, vr: str | None = None) -> None:
        """Set the element's value from text (creating it, with the dictionary's VR, if absent)."""
        element = self.get(tag)
        if element is not None and element.is_sequence:
            raise AnonError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) is a sequence; a script cannot assign text to it")
        target_vr = element.vr if element is not None else (vr or _creation_vr(tag))
        if target_vr == "SQ":
            raise AnonError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) is a sequence; a script cannot assign text to it")
        # only text in the Specific Character Set needs the dataset's codecs
        encodings = self.encodings() if target_vr in CHARSET_VRS else _NO_CODECS
        encoded = encode_value(text, target_vr, self.encoding, encodings)
        created = element is None
        if element is None:
            element = Element(tag, target_vr, b"", 0, 0, 0, False, None)
            self.elements[tag] = element
            self.added = True
        # a memoryview of the original compares with the bytes without copying them; an element
        # just created is a change even when empty (``(0008,1050) := ""`` on a file without it)
        if not created and element.changed is False and element.vr == target_vr and element.value == encoded:
            return  # same bytes: leave the original span (keeps untouched files byte-identical)
        element.set_value(encoded, target_vr)
        if tag == SPECIFIC_CHARACTER_SET:
            self.charsets = None
        self.changed = True

    def delete(self, tag: int) -> bool:
        if self.elements.pop(tag, None) is None:
            return False
        self.changed = True
        if tag == SPECIFIC_CHARACTER_SET:
            self.charsets = None
        return True

    def subtree_changed(self) -> bool:
        return self.changed or any(
            isinstance(element, Element) and element._items is not None and element.subtree_changed()
            for element in self.elements.values()
        )

    # --- private blocks (PS3.5 section 7.8.1) ----------------------------------------------------
    def private_block(self, group: int, creator: str) -> int | None:
        """The block byte ``nn`` that ``creator`` reserved in ``group`` ((gggg,00nn) = creator)."""
        wanted = creator.strip()
        for nn in range(0x10, 0x100):
            element = self.get((group << 16) | nn)
            if element is not None and element.raw().decode("latin-1").strip(" \0") == wanted:
                return nn
        return None

    def reserve_private_block(self, group: int, creator: str) -> int:
        found = self.private_block(group, creator)
        if found is not None:
            return found
        for nn in range(0x10, 0x100):
            if (group << 16) | nn not in self.elements:
                self.put((group << 16) | nn, creator, "LO")
                return nn
        raise AnonError(f"group {group:04X} has no free private block for {creator!r}")


@dataclass
class Instance:
    """A parsed Part 10 file: the parts written back verbatim and the dataset a program edits."""

    preamble: bytes  # 128 bytes + b"DICM", or b"" for a file without one
    meta: Node | None
    dataset: Node
    transfer_syntax: str
    body_encoding: Encoding
    pixel_tail: bytes  # the Pixel Data element and anything after it, verbatim
    meta_sop_before: tuple[str | None, str | None] = field(default=(None, None))
    source: bytes | None = None  # the input file, returned as is when a program changed nothing
    has_trailing: bool = False  # elements followed Pixel Data (trailing padding, signatures)
    partial: bool = False  # parsed only up to a tag: ``pixel_tail`` starts with unindexed elements
    tail_start: int = 0  # where the verbatim tail begins in the (undeflated) input


def _creation_vr(tag: int) -> str:
    vr = dictionary_vr(tag)
    if vr == "UN" and tag >> 16 & 1:
        return "LO"  # an unknown private attribute a script creates: text
    return vr if vr != "UN" else "LO"


# --- parsing ---------------------------------------------------------------------------------------


_UL_LE = struct.Struct("<L")
_UL_BE = struct.Struct(">L")
_TAG_LE = struct.Struct("<HH")
_TAG_BE = struct.Struct(">HH")
_EXPLICIT_SHORT_LE = struct.Struct("<HH2sH")
_EXPLICIT_SHORT_BE = struct.Struct(">HH2sH")
_IMPLICIT_LE = struct.Struct("<HHL")
_IMPLICIT_BE = struct.Struct(">HHL")
_SHORT_VR_NAMES = {vr.encode("ascii"): vr for vr in KNOWN_VRS - LONG_VRS}
_LONG_VR_NAMES = {vr.encode("ascii"): vr for vr in LONG_VRS}


def _truncated(tag: int, where: int) -> AnonError:
    return AnonError(f"truncated DICOM data at byte {where} (element ({tag >> 16:04X},{tag & 0xFFFF:04X}))")


def parse_dataset(
    data: bytes,
    pos: int,
    end: int,
    encoding: Encoding,
    *,
    stop_at_pixels: bool = False,
    stop_after: int | None = None,
    until_item_end: bool = False,
    parent_charsets: list[str] | None = None,
) -> tuple[Node, int]:
    """Index the elements of ``data[pos:end]``. Returns the node and where parsing stopped: at
    Pixel Data (``stop_at_pixels``), at the first tag above ``stop_after``, after an Item
    Delimitation Item (``until_item_end``), or at ``end``."""
    last_tag = 0xFFFFFFFF if stop_after is None else stop_after
    elements: dict[int, Element | Span] = {}
    little = encoding.little
    implicit = encoding.implicit
    ul = _UL_LE if little else _UL_BE
    short = _EXPLICIT_SHORT_LE if little else _EXPLICIT_SHORT_BE
    implicit_struct = _IMPLICIT_LE if little else _IMPLICIT_BE
    vr_of = dictionary_vr
    short_vrs = _SHORT_VR_NAMES
    if end - pos < 8 and pos < end:
        raise _truncated(0, pos)
    short_unpack = short.unpack_from
    short_vr_of = short_vrs.get
    while pos < end:
        if not implicit:
            # Fast path, most elements: a short explicit VR (never a sequence) before Pixel Data.
            group, elem, raw_vr, length = short_unpack(data, pos)
            vr = short_vr_of(raw_vr)
            if vr is not None and group < 0x7FE0:
                tag = group << 16 | elem
                if tag <= last_tag:
                    value_end = pos + 8 + length
                    if value_end + 8 > end and value_end != end:
                        raise _truncated(tag, pos)
                    elements[tag] = (vr, data, pos, pos + 8, value_end, False, None)
                    pos = value_end
                    continue
        start = pos
        if implicit:
            group, elem, length = implicit_struct.unpack_from(data, pos)
            tag = group << 16 | elem
            vr = vr_of(tag) if group != 0xFFFE else "NONE"
            value_start = pos + 8
        else:
            group, elem, raw_vr, length = short.unpack_from(data, pos)
            tag = group << 16 | elem
            vr = short_vrs.get(raw_vr)
            if vr is not None:
                value_start = pos + 8
            elif group == 0xFFFE:
                length = ul.unpack_from(data, pos + 4)[0]
                vr = "NONE"
                value_start = pos + 8
            else:
                vr = _LONG_VR_NAMES.get(raw_vr, "UN")
                if pos + 12 > end:
                    raise _truncated(tag, pos)
                length = ul.unpack_from(data, pos + 8)[0]
                value_start = pos + 12
        if tag == ITEM_END and until_item_end:
            return Node(elements, encoding, parent_charsets), pos + 8
        if (stop_at_pixels and tag == PIXEL_DATA) or tag > last_tag:
            break
        item_encoding: Encoding | None = None
        if length == UNDEFINED:
            if vr == "UN" and not implicit:
                item_encoding = IMPLICIT  # PS3.5 6.2.2: UN of undefined length is implicit VR LE inside
            elif tag == PIXEL_DATA:
                item_encoding = encoding  # encapsulated: never parsed, only skipped
            else:
                vr = "SQ" if implicit else vr
                item_encoding = encoding
            value_end = _skip_sequence(data, value_start, end, item_encoding, tag)
            elements[tag] = (vr, data, start, value_start, value_end, True, item_encoding)
            pos = value_end
        else:
            value_end = value_start + length
            if value_end > end or (value_end + 8 > end and value_end != end):
                raise _truncated(tag, start)
            elements[tag] = (vr, data, start, value_start, value_end, False, encoding if vr == "SQ" else None)
            pos = value_end
    if until_item_end:
        raise AnonError("a sequence item ends without its Item Delimitation Item")
    return Node(elements, encoding, parent_charsets), pos


def _walk_items(
    data: bytes,
    pos: int,
    end: int,
    encoding: Encoding,
    tag: int,
    *,
    items: list[Node] | None = None,
    charsets: list[str] | None = None,
    until_delimiter: bool = True,
) -> int:
    """Walk the items of a sequence value from ``pos``: with ``items``, parse each into a Node
    appended to it. Returns the offset after the Sequence Delimitation Item (an undefined-length
    value: ``until_delimiter``), or ``end``. An undefined-length item is parsed even when only
    skipped: only its elements tell where it ends."""
    little = encoding.little
    tag_struct = _TAG_LE if little else _TAG_BE
    ul = _UL_LE if little else _UL_BE
    while pos < end:
        if pos + 8 > end:
            raise _truncated(tag, pos)
        group, elem = tag_struct.unpack_from(data, pos)
        item_tag = group << 16 | elem
        length = ul.unpack_from(data, pos + 4)[0]
        pos += 8
        if item_tag == SEQUENCE_END:
            return pos
        if item_tag != ITEM:
            raise AnonError(
                f"malformed sequence ({tag >> 16:04X},{tag & 0xFFFF:04X}): expected an item at byte {pos - 8}"
            )
        node: Node | None
        if length == UNDEFINED:
            node, pos = parse_dataset(data, pos, end, encoding, until_item_end=True, parent_charsets=charsets)
        else:
            if pos + length > end:
                raise _truncated(tag, pos - 8)
            node = (
                parse_dataset(data, pos, pos + length, encoding, parent_charsets=charsets)[0]
                if items is not None
                else None
            )
            pos += length
        if items is not None and node is not None:
            items.append(node)
    if until_delimiter:
        raise _truncated(tag, pos)
    return pos


def _skip_sequence(data: bytes, pos: int, end: int, encoding: Encoding, tag: int) -> int:
    """Offset just past the Sequence Delimitation Item of an undefined-length value at ``pos``."""
    return _walk_items(data, pos, end, encoding, tag)


def _parse_items(value: bytes, encoding: Encoding, tag: int, parent_charsets: list[str] | None = None) -> list[Node]:
    """The items of a sequence value (without its Sequence Delimitation Item)."""
    items: list[Node] = []
    _walk_items(value, 0, len(value), encoding, tag, items=items, charsets=parent_charsets, until_delimiter=False)
    return items


def _transfer_syntax_encoding(uid: str) -> Encoding:
    if uid == IMPLICIT_LE:
        return IMPLICIT
    if uid == EXPLICIT_BE:
        return EXPLICIT_BIG
    return EXPLICIT  # explicit LE, deflated (after inflating) and every encapsulated syntax


def _guess_encoding(data: bytes, pos: int) -> Encoding:
    """A file without File Meta: explicit VR if the bytes after the first tag read as a VR."""
    if len(data) >= pos + 6 and data[pos + 4 : pos + 6].decode("latin-1") in KNOWN_VRS:
        return EXPLICIT_BIG if data[pos] == 0 and data[pos + 1] != 0 else EXPLICIT
    return IMPLICIT


def parse_part10(data: bytes, *, up_to: int | None = None, file_size: int | None = None) -> Instance:
    """Index a DICOM file (Part 10, or a bare dataset as some scanners export) for rewriting.

    ``up_to``: the highest top-level tag the program can read or write. Elements above it are not
    indexed: from the first of them to the end, the file is copied as one verbatim tail (a script
    that touches groups 0008-0010 reads a few dozen elements, not the whole header).
    ``file_size``: ``data`` is only the first bytes of a file that long (``parse_part10_head``):
    the instance's ``pixel_tail`` is then empty and ``tail_start`` says where the tail begins."""
    data = bytes(data)
    preamble = b""
    pos = 0
    if len(data) >= 132 and data[128:132] == b"DICM":
        preamble = data[:132]
        pos = 132
    meta: Node | None = None
    transfer_syntax = ""
    if len(data) >= pos + 6 and data[pos : pos + 2] == b"\x02\x00":
        meta_end = pos
        # File Meta is explicit VR little endian and ends where group 0002 ends.
        while meta_end + 8 <= len(data) and data.startswith(b"\x02\x00", meta_end):
            vr = data[meta_end + 4 : meta_end + 6].decode("latin-1")
            if vr in LONG_VRS:
                meta_end += 12 + _UL_LE.unpack_from(data, meta_end + 8)[0]
            else:
                meta_end += 8 + struct.unpack_from("<H", data, meta_end + 6)[0]
        if meta_end > len(data):
            raise AnonError("truncated DICOM File Meta Information")
        meta, _ = parse_dataset(data, pos, meta_end, EXPLICIT)
        transfer_syntax = (meta.string(TRANSFER_SYNTAX_UID) or "").strip()
        pos = meta_end
    elif not preamble and (len(data) < 8 or not _looks_like_dataset(data)):
        raise AnonError("not a DICOM file (no DICM preamble and no dataset at its start)")
    body = data
    body_start = pos
    if transfer_syntax == DEFLATED_LE and file_size is not None:
        raise _NeedWholeFile  # the deflated dataset is rewritten as a whole
    if transfer_syntax == DEFLATED_LE:
        try:
            body = zlib.decompress(data[pos:], -15)
        except zlib.error as exc:
            raise AnonError(f"deflated dataset cannot be inflated: {exc}") from exc
        body_start = 0
    encoding = _transfer_syntax_encoding(transfer_syntax) if transfer_syntax else _guess_encoding(body, body_start)
    if (
        not encoding.implicit
        and len(body) >= body_start + 6
        and body[body_start + 4 : body_start + 6].decode("latin-1") not in KNOWN_VRS
    ):
        encoding = (
            IMPLICIT if encoding.little else encoding
        )  # File Meta says explicit, the dataset is implicit (pydicom copes too)
    if up_to is not None:
        up_to = max(up_to, SOP_INSTANCE_UID)  # the File Meta follows the SOP UIDs
    dataset, stop = parse_dataset(body, body_start, len(body), encoding, stop_at_pixels=True, stop_after=up_to)
    if file_size is not None:
        _check_head(body, stop, encoding, up_to, file_size)
    tail = body[stop:] if file_size is None else b""
    instance = Instance(
        preamble=preamble,
        meta=meta,
        dataset=dataset,
        transfer_syntax=transfer_syntax,
        body_encoding=encoding,
        pixel_tail=tail,
        source=data if file_size is None else None,
        tail_start=stop,
    )
    instance.meta_sop_before = (dataset.string(SOP_CLASS_UID), dataset.string(SOP_INSTANCE_UID))
    if file_size is not None:
        instance.partial = not body.startswith(_pixel_tag(encoding), stop)
    elif tail and up_to is not None and not tail.startswith(_pixel_tag(encoding)):
        instance.partial = True  # the tail holds unindexed elements, then Pixel Data: copied verbatim
    elif tail:
        _check_tail(instance, body, stop)
    return instance


def parse_part10_head(prefix: bytes, size: int, *, up_to: int | None = None) -> tuple[Instance, int] | None:
    """``parse_part10`` of a file of ``size`` bytes from its first bytes, ``prefix``: the instance
    (its dataset the elements before the verbatim tail) and the offset of that tail in the file.
    The file rewritten is then ``write_part10(instance)`` + the file from that offset, the same
    bytes ``parse_part10`` of the whole file gives, without reading or copying the pixel data.

    None when ``prefix`` does not decide it: a deflated dataset, the elements the program reads
    reaching beyond ``prefix``, or Pixel Data that is encapsulated or followed by other elements
    (which a whole-file parse indexes). The caller then reads the whole file."""
    if len(prefix) >= size:
        return None
    try:
        instance = parse_part10(prefix, up_to=up_to, file_size=size)
    except (_NeedWholeFile, AnonError, struct.error, ValueError, IndexError):
        return None
    return instance, instance.tail_start


class _NeedWholeFile(Exception):
    """``parse_part10`` of a prefix: the prefix cannot decide how the file is rewritten."""


def _pixel_element_reaches(body: bytes, stop: int, encoding: Encoding, size: int) -> bool:
    """The element at ``stop`` is Pixel Data of a defined length ending exactly at ``size``."""
    header = 8 if encoding.implicit else 12
    if stop + header > len(body):
        return False
    length = (_UL_LE if encoding.little else _UL_BE).unpack_from(body, stop + header - 4)[0]
    return length != UNDEFINED and stop + header + length == size


def _check_head(prefix: bytes, stop: int, encoding: Encoding, up_to: int | None, size: int) -> None:
    """Whether a file's first bytes decide its rewrite (``parse_part10_head``): the first element
    not indexed is within them, and a parse that stopped at Pixel Data under a program reading
    everything would index nothing after it."""
    if stop + 12 > len(prefix):
        raise _NeedWholeFile  # the parse ran to the prefix's end: what follows is not known
    stopped_at_pixels = prefix.startswith(_pixel_tag(encoding), stop)
    if (up_to is None or stopped_at_pixels) and not _pixel_element_reaches(prefix, stop, encoding, size):
        raise _NeedWholeFile  # a whole-file parse would index what follows Pixel Data


_PIXEL_TAG = {True: struct.pack("<HH", 0x7FE0, 0x0010), False: struct.pack(">HH", 0x7FE0, 0x0010)}


def _pixel_tag(encoding: Encoding) -> bytes:
    return _PIXEL_TAG[encoding.little]


def _looks_like_dataset(data: bytes) -> bool:
    group = struct.unpack_from("<H", data, 0)[0]
    return group in (0x0008, 0x0010, 0x0018, 0x0020, 0x0028, 0x0800) or data[4:6].decode("latin-1") in KNOWN_VRS


def _check_tail(instance: Instance, body: bytes, stop: int) -> None:
    """Elements after Pixel Data (Data Set Trailing Padding, signatures) are parsed too, so a
    program sees and can delete them; the tail is then Pixel Data alone plus those elements."""
    node, _ = parse_dataset(body, stop, len(body), instance.body_encoding)
    pixel = node.get(PIXEL_DATA)
    assert pixel is not None
    del node.elements[PIXEL_DATA]
    instance.pixel_tail = body[pixel.start : pixel.end]
    for tag, element in node.elements.items():
        instance.dataset.elements[tag] = element
        instance.has_trailing = True


# --- values ----------------------------------------------------------------------------------------


def decode_value(element: Element, encoding: Encoding, encodings: Sequence[str]) -> str:
    vr = element.vr
    raw = element.raw()
    if element.is_sequence:
        return ""
    if vr in TEXT_VRS:
        if vr in CHARSET_VRS:
            text = dicom_charset.decode_bytes(raw, encodings, {0x5C, 0x5E, 0x3D} if vr == "PN" else {0x5C})
        else:
            text = raw.decode("ascii", "replace")
        return text.rstrip(" \0") if vr not in ("LT", "ST", "UT") else text.rstrip(" \0")
    fmt = NUMBER_FORMATS.get(vr)
    if fmt is not None:
        size = struct.calcsize(fmt)
        count = len(raw) // size
        values = struct.unpack(f"{encoding.prefix}{count}{fmt}", raw[: count * size])
        return "\\".join(_number_text(v) for v in values)
    if vr == "AT":
        words = struct.unpack(f"{encoding.prefix}{len(raw) // 2}H", raw[: len(raw) // 2 * 2])
        return "\\".join(f"({words[i]:04X},{words[i + 1]:04X})" for i in range(0, len(words) - 1, 2))
    # OB/OW/UN...: private text often hides in UN; decode it as text for conditions.
    return raw.decode("latin-1").rstrip(" \0")


def _number_text(value: float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def encode_value(text: str, vr: str, encoding: Encoding, encodings: list[str]) -> bytes:
    if vr in TEXT_VRS:
        if vr not in CHARSET_VRS:
            raw = text.encode("ascii", "replace")
        elif text.isascii() and encodings[0] in _ASCII_FIRST:
            raw = text.encode("ascii")  # what pydicom's encode_string gives for it, without its dispatch
        else:
            raw = dicom_charset.encode_string(text, encodings)
        if len(raw) % 2:
            raw += b"\0" if vr == "UI" else b" "
        return raw
    fmt = NUMBER_FORMATS.get(vr)
    if fmt is not None:
        parts = [p for p in text.split("\\") if p.strip() != ""]
        try:
            numbers = [float(p) if fmt in "fd" else int(float(p)) for p in parts]
            return struct.pack(f"{encoding.prefix}{len(numbers)}{fmt}", *numbers)
        except (ValueError, struct.error) as exc:
            raise AnonError(f"{text!r} is not a valid {vr} value") from exc
    raw = text.encode("latin-1", "replace")
    return raw + b"\0" if len(raw) % 2 else raw


# --- writing ---------------------------------------------------------------------------------------


# element headers by byte order: implicit VR, explicit with a 4-byte length, explicit with a 2-byte one
_HEADERS = {
    little: (struct.Struct(f"{order}HHL"), struct.Struct(f"{order}HH2s2xL"), struct.Struct(f"{order}HH2sH"))
    for little, order in ((True, "<"), (False, ">"))
}
_VR_BYTES = {vr: vr.encode("ascii") for vr in KNOWN_VRS}


def _header(tag: int, vr: str, length: int, encoding: Encoding) -> bytes:
    implicit, long_form, short_form = _HEADERS[encoding.little]
    group, elem = tag >> 16, tag & 0xFFFF
    if encoding.implicit:
        return implicit.pack(group, elem, length)
    vr_bytes = _VR_BYTES.get(vr) or vr.encode("ascii")
    if vr in LONG_VRS:
        return long_form.pack(group, elem, vr_bytes, length)
    if length > 0xFFFF:
        raise AnonError(f"value of ({group:04X},{elem:04X}) is too long for VR {vr} ({length} bytes)")
    return short_form.pack(group, elem, vr_bytes, length)


def _item_header(tag: int, length: int, encoding: Encoding) -> bytes:
    return struct.pack(f"{encoding.prefix}HHL", tag >> 16, tag & 0xFFFF, length)


def encode_node(node: Node, out: list[bytes | memoryview], only: Callable[[int], bool] | None = None) -> None:
    """Append the encoded elements of ``node`` to ``out``: untouched runs as original slices."""
    encoding = node.encoding
    entries = sorted(node.elements.items()) if node.added else list(node.elements.items())
    if only is not None:
        entries = [(tag, entry) for tag, entry in entries if only(tag)]
    changed = node.changed
    run_source: bytes | None = None
    run_start = run_end = 0
    for tag, entry in entries:
        if changed and not tag & 0xFFFF and tag >> 16 != 0x0002:
            continue  # a stale group length in a dataset that changed (retired element)
        if isinstance(entry, tuple):  # never looked at: its original span
            source, start, end = entry[1], entry[2], entry[4]
        elif not entry.changed and not (entry._items is not None and entry.subtree_changed()):
            source, start, end = entry.source, entry.start, entry.end
        else:
            if run_source is not None:
                out.append(memoryview(run_source)[run_start:run_end])
                run_source = None
            _encode_element(entry, encoding, out)
            continue
        if run_source is source and run_end == start:
            run_end = end
        else:
            if run_source is not None:
                out.append(memoryview(run_source)[run_start:run_end])
            run_source, run_start, run_end = source, start, end
    if run_source is not None:
        out.append(memoryview(run_source)[run_start:run_end])


def _encode_element(element: Element, encoding: Encoding, out: list[bytes | memoryview]) -> None:
    if element._items is not None and element.item_encoding is not None:
        item_encoding = element.item_encoding
        parts: list[bytes | memoryview] = []
        for item in element._items:
            item_parts: list[bytes | memoryview] = []
            encode_node(item, item_parts)
            item_bytes = b"".join(item_parts)
            parts.append(_item_header(ITEM, len(item_bytes), item_encoding))
            parts.append(item_bytes)
        value = b"".join(parts)
        vr = element.vr if element.vr in ("SQ", "UN") else "SQ"
        if element.undefined:
            out.append(_header(element.tag, vr, UNDEFINED, encoding))
            out.append(value)
            out.append(_item_header(SEQUENCE_END, 0, item_encoding))
        else:
            out.append(_header(element.tag, vr, len(value), encoding))
            out.append(value)
        return
    raw_value = element.value
    out.append(_header(element.tag, element.vr, len(raw_value), encoding))
    out.append(raw_value)


def write_part10(instance: Instance, *, pixel_edits: list[PixelEdit] | None = None) -> bytes:
    """Encode ``instance`` back into a file: same preamble, File Meta (SOP UIDs synchronised),
    transfer syntax and pixel data (unless ``pixel_edits``)."""
    dataset = instance.dataset
    if not pixel_edits and instance.source is not None and unchanged(instance):
        return instance.source  # nothing changed: the input, byte for byte (deflated too)
    out: list[bytes | memoryview] = []
    if instance.meta is not None:
        meta = instance.meta
        for dataset_tag, meta_tag, before in (
            (SOP_CLASS_UID, MEDIA_STORAGE_SOP_CLASS_UID, instance.meta_sop_before[0]),
            (SOP_INSTANCE_UID, MEDIA_STORAGE_SOP_INSTANCE_UID, instance.meta_sop_before[1]),
        ):
            value = dataset.string(dataset_tag)
            if value is not None and value != before and meta_tag in meta:
                meta.put(meta_tag, value)  # the program changed the UID: the File Meta follows
        meta_parts: list[bytes | memoryview] = []
        if meta.changed:
            meta.changed = False  # keep (0002,0000) in the walk; it is recomputed below
            meta.elements.pop(0x00020000, None)
            encode_node(meta, meta_parts)
            meta_bytes = b"".join(meta_parts)
            meta_parts = [_header(0x00020000, "UL", 4, EXPLICIT), struct.pack("<L", len(meta_bytes)), meta_bytes]
        else:
            encode_node(meta, meta_parts)
        out.append(instance.preamble)
        out.extend(meta_parts)
    else:
        out.append(instance.preamble)
    body: list[bytes | memoryview] = []
    encode_node(dataset, body, (lambda tag: tag < PIXEL_DATA) if instance.has_trailing else None)
    tail: bytes | memoryview = instance.pixel_tail
    if pixel_edits:
        from xnat_flows.anon.pixels import apply_pixel_edits

        tail = apply_pixel_edits(instance, pixel_edits)
    # Elements that followed Pixel Data in the input (trailing padding...) are in ``dataset`` and
    # sorted after it by tag: split the body there.
    if instance.transfer_syntax == DEFLATED_LE:
        plain = _join_body(instance, body, tail)
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        out.append(compressor.compress(plain) + compressor.flush())
        if len(out[-1]) % 2:
            out.append(b"\0")
    else:
        out.append(_join_body(instance, body, tail))
    return b"".join(out)


def unchanged(instance: Instance) -> bool:
    """The program changed nothing: the file is sent as it is."""
    if instance.dataset.subtree_changed():
        return False
    sop = (instance.dataset.string(SOP_CLASS_UID), instance.dataset.string(SOP_INSTANCE_UID))
    return sop == instance.meta_sop_before and (instance.meta is None or not instance.meta.changed)


def _join_body(instance: Instance, body: list[bytes | memoryview], tail: bytes | memoryview) -> bytes:
    dataset = instance.dataset
    if not instance.has_trailing:
        return b"".join([*body, tail])
    # Rare (trailing padding, digital signatures): the two halves around Pixel Data.
    second: list[bytes | memoryview] = []
    encode_node(dataset, second, lambda tag: tag > PIXEL_DATA)
    return b"".join([*body, tail, *second])


@dataclass(frozen=True)
class PixelEdit:
    """A rectangle of native pixel data to overwrite (``alterPixels``): columns ``left..right-1``,
    rows ``top..bottom-1`` of every frame, set to ``value``."""

    left: int
    top: int
    right: int
    bottom: int
    value: int
