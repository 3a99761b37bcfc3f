"""Read the few DICOM header fields XNAT's gradual importer uses (xnat-web `GradualDicomImporter`)."""

from __future__ import annotations

import functools
import io
import re
import struct
from dataclasses import dataclass

# XNAT's ContainedAssignmentExtractor pattern (dicom-xnat-util): values are [A-Za-z0-9_-] only.
_ASSIGNMENT = r"(?:\A|.*[\s,;]){key}\s*:\s*([\w\-]*)(?:[\s,;].*\Z|\Z)"
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")
_HEADER_KEYWORDS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "InstanceNumber",
    "SOPClassUID",
    "SOPInstanceUID",
    "Modality",
    "PatientName",
    "PatientID",
    "StudyDate",
    "StudyTime",
    "SeriesDescription",
    "StudyDescription",
    "AccessionNumber",
    "PatientComments",
    "StudyComments",
    "AdditionalPatientHistory",
    "ImageType",
)


class UnparsableDicom(ValueError):
    """The bytes are not a DICOM object the importer can place."""


@dataclass(frozen=True)
class InstanceHeader:
    study_uid: str
    series_uid: str
    series_number: str
    instance_number: str
    sop_class_uid: str
    sop_instance_uid: str
    modality: str
    patient_name: str
    patient_id: str
    study_date: str
    study_time: str
    series_description: str
    study_description: str
    accession_number: str
    comment_fields: tuple[str, ...]  # PatientComments, StudyComments, AdditionalPatientHistory
    derived_secondary: bool

    def assignment(self, key: str) -> str:
        """`Key: value` from the comment tags, first match wins (XNAT's fixed extractors)."""
        if not any(self.comment_fields):
            return ""
        pattern = _assignment_pattern(key)
        for text in self.comment_fields:
            match = pattern.match(text)
            if match and match.group(1):
                return match.group(1)
        return ""


@functools.lru_cache(maxsize=16)
def _assignment_pattern(key: str) -> re.Pattern[str]:
    return re.compile(_ASSIGNMENT.format(key=re.escape(key)), re.IGNORECASE | re.DOTALL)


def clean_label(value: str) -> str:
    """XNAT replaces characters outside [A-Za-z0-9_-] in labels (`XnatImagesessiondata.cleanValue`; exact rule uncertain)."""
    return _LABEL_UNSAFE.sub("_", value.strip())


def read_header(data: bytes, name: str = "upload.dcm") -> InstanceHeader:
    """The fields routing and naming need, read up to routing's last tag only (as xnat-web's
    `GradualDicomImporter` reads an object with a `StopTagInputHandler`); raise UnparsableDicom
    with XNAT's messages.

    Part-10 files in little-endian transfer syntaxes (every common one) are read by a small parser
    of their own; anything else (no preamble, big endian, deflated, non-ASCII or multi-valued text
    where one value is expected, a malformed element) goes through pydicom.
    """
    try:
        values = _read_until_stop(data)
    except _NeedsPydicom:
        return _read_header_pydicom(data, name)
    return _header_from(
        name,
        len(data),
        study_uid=values.get(_STUDY_UID, ""),
        sop_class=values.get(_SOP_CLASS, "") or values.get(_META_SOP_CLASS, ""),
        sop_instance=values.get(_SOP_INSTANCE, "") or values.get(_META_SOP_INSTANCE, ""),
        image_type=[v.upper() for v in values.get(_IMAGE_TYPE, "").split("\\")] if values.get(_IMAGE_TYPE) else [],
        text=lambda keyword: values.get(_TAGS[keyword], "").strip(),
    )


def _header_from(
    name: str, size: int, *, study_uid: str, sop_class: str, sop_instance: str, image_type: list[str], text
) -> InstanceHeader:
    if size < 132 and not study_uid:
        raise UnparsableDicom(f"unable to read DICOM object {name}")
    if not study_uid:
        raise UnparsableDicom(f"unable to read DICOM object {name}")
    if not sop_class:
        raise UnparsableDicom(f"object {name} contains no SOP Class UID")
    if not sop_instance:
        raise UnparsableDicom(f"object {name} contains no SOP Instance UID")
    series_number = text("SeriesNumber")
    return InstanceHeader(
        study_uid=study_uid,
        series_uid=text("SeriesInstanceUID"),
        series_number=series_number.replace("+", "_", 1) if series_number.startswith("+") else series_number,
        instance_number=text("InstanceNumber"),
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        modality=text("Modality").upper(),
        patient_name=text("PatientName"),
        patient_id=text("PatientID"),
        study_date=text("StudyDate"),
        study_time=text("StudyTime"),
        series_description=text("SeriesDescription"),
        study_description=text("StudyDescription"),
        accession_number=text("AccessionNumber"),
        comment_fields=(text("PatientComments"), text("StudyComments"), text("AdditionalPatientHistory")),
        derived_secondary=len(image_type) >= 2 and image_type[0] == "DERIVED" and image_type[1] == "SECONDARY",
    )


def _read_header_pydicom(data: bytes, name: str) -> InstanceHeader:
    import pydicom  # lazy: keeps the pytest plugin import cheap
    from pydicom.errors import InvalidDicomError

    try:
        # specific_tags + defer_size: skip converting (and copying) everything the importer ignores.
        ds = pydicom.dcmread(
            io.BytesIO(data), stop_before_pixels=True, specific_tags=list(_HEADER_KEYWORDS), defer_size=4096
        )
        study_uid = str(ds.get("StudyInstanceUID", "") or "")
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UnparsableDicom(f"unable to read DICOM object {name}") from exc
    meta = getattr(ds, "file_meta", None)

    def text(keyword: str) -> str:
        value = ds.get(keyword, "")
        return "" if value is None else str(value).strip()

    return _header_from(
        name,
        len(data),
        study_uid=study_uid,
        sop_class=str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta else "")),
        sop_instance=str(ds.get("SOPInstanceUID", "") or (meta.get("MediaStorageSOPInstanceUID", "") if meta else "")),
        image_type=[str(v).upper() for v in (ds.get("ImageType") or [])],
        text=text,
    )


class _NeedsPydicom(Exception):
    """The fast reader does not handle this object; pydicom reads it."""


# (group << 16 | element) of what routing and naming read; the reader stops at the first tag past
# the last of them, StudyComments (0032,4000), as XNAT's importer stops past its identifier's tags.
_TAGS = {
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
    "SeriesNumber": 0x00200011,
    "InstanceNumber": 0x00200013,
    "SOPClassUID": 0x00080016,
    "SOPInstanceUID": 0x00080018,
    "Modality": 0x00080060,
    "PatientName": 0x00100010,
    "PatientID": 0x00100020,
    "StudyDate": 0x00080020,
    "StudyTime": 0x00080030,
    "SeriesDescription": 0x0008103E,
    "StudyDescription": 0x00081030,
    "AccessionNumber": 0x00080050,
    "PatientComments": 0x00104000,
    "StudyComments": 0x00324000,
    "AdditionalPatientHistory": 0x001021B0,
    "ImageType": 0x00080008,
}
_STUDY_UID, _SOP_CLASS, _SOP_INSTANCE, _IMAGE_TYPE = (
    _TAGS["StudyInstanceUID"],
    _TAGS["SOPClassUID"],
    _TAGS["SOPInstanceUID"],
    _TAGS["ImageType"],
)
_META_SOP_CLASS, _META_SOP_INSTANCE, _META_TRANSFER_SYNTAX = 0x00020002, 0x00020003, 0x00020010
_WANTED = frozenset(_TAGS.values()) | {_META_SOP_CLASS, _META_SOP_INSTANCE, _META_TRANSFER_SYNTAX}
_STOP = max(_TAGS.values()) + 1
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_IMPLICIT_LE, _EXPLICIT_BE, _DEFLATED = "1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
# one unpack per element header: tag, VR and 2-byte length (explicit VR), tag and 4-byte length (implicit)
_EXPLICIT_HEADER = struct.Struct("<HH2sH").unpack_from
_IMPLICIT_HEADER = struct.Struct("<HHI").unpack_from
_LONG_LENGTH = struct.Struct("<I").unpack_from


def _read_until_stop(data: bytes) -> dict[int, str]:
    """Values of the wanted elements of a little-endian Part-10 object, up to the stop tag."""
    if len(data) < 144 or data[128:132] != b"DICM":
        raise _NeedsPydicom
    values: dict[int, str] = {}
    position = _elements(data, 132, True, values, stop=0x00030000)  # the file meta group, explicit VR LE
    syntax = values.get(_META_TRANSFER_SYNTAX, "")
    if syntax in (_EXPLICIT_BE, _DEFLATED) or not syntax:
        raise _NeedsPydicom
    _elements(data, position, syntax != _IMPLICIT_LE, values, stop=_STOP)
    return values


def _elements(data: bytes, position: int, explicit: bool, values: dict[int, str] | None, stop: int) -> int:
    """Walk elements from ``position`` until ``stop`` (or an item delimiter, or the end); keep the
    wanted ones in ``values`` (None inside sequences); return where the walk ended."""
    end = len(data)
    unpack_explicit, unpack_implicit, unpack_long = _EXPLICIT_HEADER, _IMPLICIT_HEADER, _LONG_LENGTH
    vr = b""
    while position + 8 <= end:
        if explicit:
            group, element, vr, length = unpack_explicit(data, position)
        else:
            group, element, length = unpack_implicit(data, position)
        tag = group << 16 | element
        if tag >= stop and values is not None:
            return position
        if group == 0xFFFE:  # item or delimiter inside a sequence: no VR
            length = unpack_long(data, position + 4)[0]
            position += 8
            if tag in (_ITEM_END, _SEQUENCE_END):
                return position
            if tag != _ITEM:
                raise _NeedsPydicom
            position = _elements(data, position, explicit, None, _STOP) if length == _UNDEFINED else position + length
            continue
        if not explicit:
            position += 8
        elif vr in _LONG_VRS:
            if position + 12 > end:
                raise _NeedsPydicom
            length = unpack_long(data, position + 8)[0]
            position += 12
        elif vr.isalpha() and vr.isupper():
            position += 8
        else:
            raise _NeedsPydicom
        if length == _UNDEFINED:
            if explicit and vr == b"UN":
                raise _NeedsPydicom  # its items are implicit VR: not worth a second code path
            position = _elements(data, position, explicit, None, _STOP)
            continue
        if position + length > end:
            raise _NeedsPydicom
        if values is not None and tag in _WANTED:
            raw = data[position : position + length]
            if not raw.isascii() or (b"\\" in raw and tag != _IMAGE_TYPE):
                raise _NeedsPydicom  # a character set or several values: pydicom's rules apply
            values[tag] = raw.decode("ascii").rstrip("\x00 ")
        position += length
    if values is None:
        raise _NeedsPydicom  # a sequence ran past the end of the object
    return position


def route_project(header: InstanceHeader, known_projects: set[str]) -> str | None:
    """XNAT's default DICOM object identifier, project part (`XnatDefaultDicomObjectIdentifier`, fixed extractors only)."""
    candidates = [header.assignment("Project"), header.study_description, header.accession_number]
    for candidate in candidates:
        if candidate and candidate in known_projects:
            return candidate
    return None


def route_subject(header: InstanceHeader) -> str:
    return header.assignment("Subject") or header.patient_name


def route_session(header: InstanceHeader) -> str:
    return header.assignment("Session") or header.patient_id


def java_string_hash(text: str) -> int:
    """Java's String.hashCode, as XNAT's file namer uses for the SOP hash part."""
    value = 0
    for char in text:
        value = (31 * value + ord(char)) & 0xFFFFFFFF
    return value


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rem = divmod(number, 36)
        out = digits[rem] + out
        if number == 0:
            return out


def xnat_file_name(header: InstanceHeader) -> str:
    """Default template ${StudyInstanceUID}-${SeriesNumber}-${InstanceNumber}-${HashSOPClassUIDWithSOPInstanceUID}.dcm.

    Deterministic per instance, so re-sending an instance replaces its file instead of adding one.
    """
    digest = _base36(java_string_hash(header.sop_class_uid + header.sop_instance_uid))
    return f"{header.study_uid}-{header.series_number or '0'}-{header.instance_number or '0'}-{digest}.dcm"
