"""Datasets the de-identification tests build: every feature a script can touch, small."""

from __future__ import annotations

import io

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

VARIABLES = {"project": "PROJ1", "subject": "SUBJ01", "session": "SUBJ01_MR1", "modalityLabel": "MR"}


def make_dataset(*, rows: int = 8, columns: int = 8) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1.1.1"
    ds.StudyDate = "20240131"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC123"
    ds.Modality = "MR"
    ds.InstitutionName = "General Hospital"
    ds.ReferringPhysicianName = "Ref^Doctor"
    ds.StationName = "MRI01"
    ds.StudyDescription = "Brain Study"
    ds.SeriesDescription = "T1 MPRAGE"
    ds.ReferencedStudySequence = Sequence([Dataset(), Dataset()])
    ds.ReferencedStudySequence[0].ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    ds.ReferencedStudySequence[0].ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.9.1"
    ds.ReferencedStudySequence[1].ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    ds.ReferencedStudySequence[1].ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.9.2"
    image = Dataset()
    image.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    image.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1.1.0"
    ds.ReferencedImageSequence = Sequence([image])
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "MRN0001"
    ds.PatientBirthDate = "19800101"
    ds.PatientSex = "F"
    ds.PatientAge = "044Y"
    ds.PatientComments = "Session: visit1"
    # nested: Request Attributes Sequence -> item -> Scheduled Protocol Code Sequence -> item
    inner = Dataset()
    inner.CodeValue = "P1"
    inner.CodingSchemeDesignator = "99LOCAL"
    inner.CodeMeaning = "Brain protocol"
    inner.PatientName = "Hidden^Name"  # an identifier deep inside a sequence
    request = Dataset()
    request.RequestedProcedureID = "RP42"
    request.ScheduledProtocolCodeSequence = Sequence([inner])
    ds.RequestAttributesSequence = Sequence([request])
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.3"
    ds.SeriesNumber = 5
    ds.InstanceNumber = 1
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.4"
    ds.BurnedInAnnotation = "NO"
    block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    block.add_new(0x0F, "LO", "private secret")
    block.add_new(0x10, "LO", "another")
    other = ds.private_block(0x0029, "ACME 1.0", create=True)
    other.add_new(0x01, "LO", "acme value")
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(256)) * (rows * columns * 2 // 256) + bytes(rows * columns * 2 % 256)
    return ds


def to_part10(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta = meta
    buffer = io.BytesIO()
    ds.save_as(
        buffer, enforce_file_format=True, implicit_vr=transfer_syntax == ImplicitVRLittleEndian, little_endian=True
    )
    return buffer.getvalue()


def part10(**kwargs: int) -> bytes:
    return to_part10(make_dataset(**kwargs))


def read(data: bytes) -> Dataset:
    import pydicom

    return pydicom.dcmread(io.BytesIO(data))


def pydicom_testdata(name: str) -> bytes:
    """The bytes of one of pydicom's test files (the test is skipped where it is not installed)."""
    import warnings
    from pathlib import Path

    import pytest
    from pydicom.data import get_testdata_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} not available")
    return Path(str(path)).read_bytes()
