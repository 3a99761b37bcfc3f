"""Read the few DICOM header fields XNAT's gradual importer uses (xnat-web `GradualDicomImporter`)."""

from __future__ import annotations

import io
import re
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
        pattern = re.compile(_ASSIGNMENT.format(key=re.escape(key)), re.IGNORECASE | re.DOTALL)
        for text in self.comment_fields:
            match = pattern.match(text)
            if match and match.group(1):
                return match.group(1)
        return ""


def clean_label(value: str) -> str:
    """XNAT replaces characters outside [A-Za-z0-9_-] in labels (`XnatImagesessiondata.cleanValue`; exact rule uncertain)."""
    return _LABEL_UNSAFE.sub("_", value.strip())


def read_header(data: bytes, name: str = "upload.dcm") -> InstanceHeader:
    """Parse a Part-10 (or raw) DICOM object; raise UnparsableDicom with XNAT's messages."""
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
    if len(data) < 132 and not study_uid:
        raise UnparsableDicom(f"unable to read DICOM object {name}")
    meta = getattr(ds, "file_meta", None)
    sop_class = str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta else ""))
    sop_instance = str(ds.get("SOPInstanceUID", "") or (meta.get("MediaStorageSOPInstanceUID", "") if meta else ""))
    if not study_uid:
        raise UnparsableDicom(f"unable to read DICOM object {name}")
    if not sop_class:
        raise UnparsableDicom(f"object {name} contains no SOP Class UID")
    if not sop_instance:
        raise UnparsableDicom(f"object {name} contains no SOP Instance UID")
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]

    def text(keyword: str) -> str:
        value = ds.get(keyword, "")
        return "" if value is None else str(value).strip()

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
