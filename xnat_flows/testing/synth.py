"""Synthetic DICOM studies that look like a scanner export, written fast and deterministically.

Speed comes from encoding one header per series with pydicom and then, per instance, only
patching fixed-width placeholders (SOP Instance UID, Instance Number, slice position) in those
bytes and appending the pixel data: by default a head phantom (smooth tissue regions whose size
follows the slice position, plus noise) that compresses about as real MR/CT does (gzip: ~2-3x;
random bytes do not compress at all, which would make every compression figure dishonest), or
seeded random bytes (``pixels="random"``). Every UID is a ``2.25.`` UID derived from a
seeded RNG, always 38 digits long, so patching never changes any element length.
"""

from __future__ import annotations

import hashlib
import io
import math
import random
import shutil
import sys
import tempfile
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Literal

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SOP_CLASS_BY_MODALITY = {"MR": MR_IMAGE_STORAGE, "CT": CT_IMAGE_STORAGE}

# Fixed-width placeholders patched per instance. Each is unique in an encoded header.
_UID_DIGITS = 38  # 10**37 <= n < 10**38 < 2**128: a valid 2.25 UID of constant length
_SOP_PLACEHOLDER = "2.25." + "9" * _UID_DIGITS
_INSTANCE_NUMBER_PLACEHOLDER = "99999998"  # IS, 8 characters
_POSITION_PLACEHOLDER = "-77777.7777"  # DS, 11 characters (used in ImagePositionPatient and SliceLocation)
_PIXEL_HEADER_EXPLICIT_OW = b"\xe0\x7f\x10\x00OW\x00\x00"  # (7FE0,0010) OW + reserved; 4-byte length follows
_HEADER_ALLOWANCE = 2048  # rough size of the non-pixel part, so files land near ``instance_kb``


@dataclass(frozen=True)
class SynthInstance:
    path: Path
    study_uid: str
    series_uid: str
    series_number: int
    sop_instance_uid: str
    sop_class_uid: str
    size: int


@dataclass
class SynthManifest:
    root: Path
    files: list[SynthInstance] = field(default_factory=list)
    junk: list[Path] = field(default_factory=list)

    @property
    def study_uids(self) -> list[str]:
        return list(dict.fromkeys(f.study_uid for f in self.files))

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class SynthRouting:
    """What to write into PatientComments so XNAT routes the study (xnat-web `XnatDefaultDicomObjectIdentifier`)."""

    project: str
    subject: str | None = None
    session: str | None = None

    def comment(self, study_index: int) -> str:
        parts = [f"Project:{self.project}"]
        if self.subject:
            parts.append(f"Subject:{self.subject}")
        if self.session:
            # Distinct studies must not merge into one session.
            parts.append(f"Session:{self.session}" + (f"_{study_index + 1}" if study_index else ""))
        return " ".join(parts)


RoutingSpec = SynthRouting | Mapping[str, str] | str | None


def _as_routing(routing: RoutingSpec) -> SynthRouting | None:
    if routing is None or isinstance(routing, SynthRouting):
        return routing
    if isinstance(routing, str):
        return SynthRouting(project=routing)
    return SynthRouting(project=routing["project"], subject=routing.get("subject"), session=routing.get("session"))


class _UidSource:
    """Deterministic 2.25 UIDs of constant length from a seeded RNG."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def __call__(self) -> str:
        return f"2.25.{self._rng.randrange(10 ** (_UID_DIGITS - 1), 10**_UID_DIGITS)}"


def _image_shape(instance_kb: int) -> tuple[int, int]:
    """Rows and columns of a 16-bit image whose file is close to ``instance_kb`` KiB."""
    pixels = max(64, (instance_kb * 1024 - _HEADER_ALLOWANCE) // 2)
    columns = max(8, 1 << int(math.log2(math.isqrt(pixels))))
    rows = max(1, pixels // columns)
    return rows, columns


def _series_template(
    *,
    modality: str,
    patient_id: str,
    patient_name: str,
    study_uid: str,
    study_date: str,
    study_id: str,
    series_uid: str,
    series_number: int,
    frame_uid: str,
    rows: int,
    columns: int,
    patient_comments: str | None,
) -> Dataset:
    sop_class = SOP_CLASS_BY_MODALITY[modality]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(_SOP_PLACEHOLDER)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "XNATFLOWS_SYNTH"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = _SOP_PLACEHOLDER
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
    ds.StudyTime = "093000"
    ds.SeriesTime = f"09{30 + series_number % 30:02d}00"
    ds.ContentTime = ds.SeriesTime
    ds.AccessionNumber = f"ACC{study_id}"
    ds.Modality = modality
    ds.Manufacturer = "XNATFLOWS"
    ds.InstitutionName = "Synthetic Imaging Centre"
    ds.ReferringPhysicianName = "Ref^Doctor"
    ds.StationName = "SYNTH01"
    ds.StudyDescription = f"Synthetic {modality} study"
    ds.SeriesDescription = f"{'T1_MPRAGE' if modality == 'MR' else 'HEAD_AXIAL'}_{series_number}"
    ds.ManufacturerModelName = "Synthesizer"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    if patient_comments:
        ds.PatientComments = patient_comments
    ds.BodyPartExamined = "HEAD"
    ds.SliceThickness = "1.0"
    if modality == "MR":
        ds.ScanningSequence = "GR"
        ds.SequenceVariant = "SP"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.RepetitionTime = "2300"
        ds.EchoTime = "2.98"
        ds.MagneticFieldStrength = "3"
        ds.FlipAngle = "9"
    else:
        ds.KVP = "120"
        ds.ConvolutionKernel = "STANDARD"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = study_id
    ds.SeriesNumber = series_number
    ds.InstanceNumber = _INSTANCE_NUMBER_PLACEHOLDER
    ds.ImagePositionPatient = ["-120.0", "-120.0", _POSITION_PLACEHOLDER]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = _POSITION_PLACEHOLDER
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.PixelSpacing = ["0.9375", "0.9375"]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if modality == "CT":
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    return ds


def _encode_header(ds: Dataset) -> bytes:
    """Preamble + file meta + dataset (without PixelData) as bytes; checks every placeholder is present."""
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    header = buffer.getvalue()
    expected = {_SOP_PLACEHOLDER: 2, _INSTANCE_NUMBER_PLACEHOLDER: 1, _POSITION_PLACEHOLDER: 2}
    for placeholder, count in expected.items():
        found = header.count(placeholder.encode())
        if found != count:  # pragma: no cover - guards the patching scheme
            raise AssertionError(f"placeholder {placeholder!r} found {found} times, expected {count}")
    return header


def _patch_header(header: bytes, sop_uid: str, instance_number: int, position: float) -> bytes:
    return (
        header.replace(_SOP_PLACEHOLDER.encode(), sop_uid.encode())
        .replace(_INSTANCE_NUMBER_PLACEHOLDER.encode(), f"{instance_number:<8d}".encode())
        .replace(_POSITION_PLACEHOLDER.encode(), f"{position:<11.4f}"[:11].encode())
    )


PixelKind = Literal["phantom", "random"]
_NOISE_SD = 20.0  # MR-like noise in stored values; the background keeps a noise floor, as in real images
# |N(0, _NOISE_SD)| as whole numbers, one value per byte: a random byte read through this table is
# half-normal noise (256 equally likely quantiles), so the noise costs one C-speed translate.
_HALF_NORMAL_NOISE = bytes(int(NormalDist(0.0, _NOISE_SD).inv_cdf(0.5 + (k + 0.5) / 512)) for k in range(256))


def _random_bytes(rng: random.Random, length: int) -> bytes:
    """``length`` seeded random bytes: SHAKE-128's output keyed from ``rng``, about twice as fast as
    ``rng.randbytes`` (numpy's speed) and as deterministic."""
    return hashlib.shake_128(rng.randbytes(16)).digest(length)


def _u16_bytes(values: Iterable[int]) -> bytes:
    """Unsigned 16-bit little-endian pixels."""
    pixels = array("H", values)
    if sys.byteorder == "big":
        pixels.byteswap()
    return pixels.tobytes()


class _Phantom:
    """Slices of a head phantom: skull, brain, ventricles (ellipses scaled with the slice's
    height) over a noisy background, as unsigned 16-bit little-endian pixels.

    The noisy pixels of each region are drawn once (the background, skull and ventricles as pools
    four images long, the brain as four noisy copies of its image) and a slice copies each row's
    spans from them, between the columns where the ellipses cross the row: the constant regions
    from a random offset per slice, the brain from a random copy per row, so consecutive files
    share no whole-image byte runs a compressor could find. Standard library only, so numpy is
    no dependency of the package: ``bench/bench_synth.py`` writes 2,000 x 256 KB in ~1.2x the
    time of the numpy version this replaced, with the same zlib ratio (1.98x vs 1.97x).
    """

    _COPIES = 4

    def __init__(self, rows: int, columns: int, rng: random.Random) -> None:
        self._rows, self._columns = rows, columns
        self._rng = rng
        size = rows * columns
        y_values = [(row - rows / 2) / (rows / 2) for row in range(rows)]  # -1..1 down the image
        # Rows at -y and +y cross the ellipses in the same columns: their spans are worked out once.
        rows_at: dict[float, list[int]] = {}
        for row, y in enumerate(y_values):
            rows_at.setdefault(abs(y), []).append(row * 2 * columns)
        self._row_pairs = [((y / 0.92) ** 2, (y / 0.32) ** 2, offsets) for y, offsets in rows_at.items()]
        cos_x = [math.cos(9 * (column - columns / 2) / (columns / 2)) for column in range(columns)]
        # smooth grey/white variation inside the brain
        brain = _u16_bytes(int(600 + cx * math.cos(7 * y) * 40) for y in y_values for cx in cos_x)
        # memoryviews: a row's span is copied from them without an intermediate bytes object
        self._background, self._skull, self._ventricles = (
            memoryview(self._plus_noise(_u16_bytes([value]) * (self._COPIES * size))) for value in (0, 900, 250)
        )
        self._brain = memoryview(self._plus_noise(brain * self._COPIES))

    def _plus_noise(self, pixels: bytes) -> bytes:
        """``pixels`` (16-bit) plus half-normal noise, added as two integers: every sum stays below
        2**16, so no pixel carries into the next."""
        noise = bytearray(len(pixels))
        noise[0::2] = _random_bytes(self._rng, len(pixels) // 2).translate(_HALF_NORMAL_NOISE)  # low bytes
        total = int.from_bytes(pixels, "little") + int.from_bytes(noise, "little")
        return total.to_bytes(len(pixels), "little")

    def slice(self, fraction: float) -> bytes:
        """The slice at ``fraction`` (0..1) of the way through the head."""
        area = max(0.05, math.sin(math.pi * min(max(fraction, 0.02), 0.98))) ** 2
        columns = self._columns
        half = columns / 2
        row_bytes = 2 * columns
        image_bytes = row_bytes * self._rows
        pick = self._rng.randrange
        background, skull, ventricles = (2 * pick((self._COPIES - 1) * image_bytes // 2) for _ in range(3))
        image = bytearray(self._background[background : background + image_bytes])
        floor, ceil, sqrt = math.floor, math.ceil, math.sqrt
        brain_copies = iter(self._rng.randbytes(self._rows))  # which noisy copy of the brain each row reads
        for y_head, y_ventricles, rows in self._row_pairs:
            # Each region is an ellipse, so it crosses a row in a span of columns symmetric about the
            # centre (never reaching the image's edge: 0.78 * sqrt(area) < 1), the ventricles in two
            # spans about x = +-0.13 (one when they meet), kept inside the brain's.
            head = area - y_head  # (x / 0.78)**2 + (y / 0.92)**2 < area
            if head <= 0:
                continue
            reach = 0.78 * sqrt(head) * half
            head_first, head_end = 2 * floor(half - reach) + 2, 2 * ceil(half + reach)
            brain = 0.82 * area - y_head
            reach = 0.78 * sqrt(max(brain, 0.0)) * half
            first, end = 2 * floor(half - reach) + 2, 2 * ceil(half + reach)
            inside = area - y_ventricles  # (|x| - 0.13)**2 / 0.09**2 + (y / 0.32)**2 < area
            spans: tuple[tuple[float, float], ...] = ()
            if brain > 0 and inside > 0:
                reach = 0.09 * sqrt(inside)
                inner, outer = 0.13 - reach, 0.13 + reach
                spans = ((-outer, outer),) if inner < 0 else ((-outer, -inner), (inner, outer))
            ventricle_spans = [
                (max(first, 2 * (floor(half + low * half) + 1)), min(end, 2 * ceil(half + high * half)))
                for low, high in spans
            ]
            for row in rows:
                image[row + head_first : row + head_end] = self._skull[
                    skull + row + head_first : skull + row + head_end
                ]
                if brain > 0:
                    copy = (next(brain_copies) % self._COPIES) * image_bytes
                    image[row + first : row + end] = self._brain[copy + row + first : copy + row + end]
                for low_byte, high_byte in ventricle_spans:
                    if low_byte < high_byte:
                        image[row + low_byte : row + high_byte] = self._ventricles[
                            ventricles + row + low_byte : ventricles + row + high_byte
                        ]
        return bytes(image)


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if index < extra else 0) for index in range(parts)]


def write_studies(
    out_dir: str | Path,
    *,
    studies: int = 1,
    series: int = 3,
    instances: int = 30,
    instance_kb: int = 64,
    seed: int = 0,
    junk: bool = False,
    modality: str = "MR",
    patient_id: str | None = None,
    routing: RoutingSpec = None,
    pixels: PixelKind = "phantom",
) -> SynthManifest:
    """Write ``studies`` studies, each with ``instances`` instances spread over ``series`` series.

    Layout: ``OUT/PATIENT/STUDY/SERIES_n/IM000123`` (the last series of each study uses ``.dcm``
    names). The same arguments always produce the same bytes. ``pixels``: ``"phantom"`` (compresses
    like real images) or ``"random"`` (incompressible).
    """
    if pixels not in ("phantom", "random"):
        raise ValueError(f"pixels must be 'phantom' or 'random', not {pixels!r}")
    modality = modality.upper()
    if modality not in SOP_CLASS_BY_MODALITY:
        raise ValueError(f"modality must be one of {sorted(SOP_CLASS_BY_MODALITY)}, not {modality!r}")
    if studies < 1 or series < 1 or instances < 1 or instance_kb < 1:
        raise ValueError("studies, series, instances and instance_kb must all be at least 1")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    new_uid = _UidSource(rng)
    pixel_rng = random.Random(f"pixels-{seed}")  # a stream of its own: the UIDs do not depend on the pixels
    route = _as_routing(routing)
    rows, columns = _image_shape(instance_kb)
    phantom = _Phantom(rows, columns, pixel_rng) if pixels == "phantom" else None
    pixel_length = rows * columns * 2
    pixel_element_header = _PIXEL_HEADER_EXPLICIT_OW + pixel_length.to_bytes(4, "little")
    manifest = SynthManifest(root=root)

    for study_index in range(studies):
        pid = patient_id or f"SYN{seed:04d}P{study_index + 1:03d}"
        study_uid = new_uid()
        frame_uid = new_uid()
        study_date = f"2024{1 + study_index % 12:02d}{1 + seed % 28:02d}"
        study_dir = root / _safe_component(pid) / f"STUDY_{study_date}_{study_index + 1:03d}"
        series_counts = [n for n in _split(instances, min(series, instances)) if n]
        for series_index, count in enumerate(series_counts):
            series_number = series_index + 1
            series_uid = new_uid()
            template = _series_template(
                modality=modality,
                patient_id=pid,
                patient_name=f"Synthetic^{pid}",
                study_uid=study_uid,
                study_date=study_date,
                study_id=f"{study_index + 1}",
                series_uid=series_uid,
                series_number=series_number,
                frame_uid=frame_uid,
                rows=rows,
                columns=columns,
                patient_comments=route.comment(study_index) if route else None,
            )
            header = _encode_header(template)
            series_dir = study_dir / f"SERIES_{series_number}"
            series_dir.mkdir(parents=True, exist_ok=True)
            suffix = ".dcm" if series_index == len(series_counts) - 1 and len(series_counts) > 1 else ""
            for instance_index in range(count):
                sop_uid = new_uid()
                body = _patch_header(header, sop_uid, instance_index + 1, -80.0 + instance_index * 1.0)
                path = series_dir / f"IM{instance_index + 1:06d}{suffix}"
                with open(path, "wb") as handle:
                    handle.write(body)
                    handle.write(pixel_element_header)
                    if phantom is not None:
                        handle.write(phantom.slice((instance_index + 0.5) / count))
                    else:
                        handle.write(_random_bytes(pixel_rng, pixel_length))
                manifest.files.append(
                    SynthInstance(
                        path=path,
                        study_uid=study_uid,
                        series_uid=series_uid,
                        series_number=series_number,
                        sop_instance_uid=sop_uid,
                        sop_class_uid=SOP_CLASS_BY_MODALITY[modality],
                        size=len(body) + len(pixel_element_header) + pixel_length,
                    )
                )
    if junk:
        manifest.junk = _write_junk(root, manifest, new_uid)
    return manifest


def _safe_component(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text) or "PATIENT"


# A minimal, well-formed one-page PDF: the kind of report scanners drop next to the images.
_PDF_BYTES = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
    b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 200 200]>>endobj\n"
    b"trailer<</Root 1 0 R>>\n%%EOF\n"
)

DICOMDIR_MAX_FILES = 250  # pydicom's DICOMDIR build grows superlinearly: ~1 s for 200 files, ~6 s for 500


def _write_junk(root: Path, manifest: SynthManifest, new_uid: _UidSource) -> list[Path]:
    """The clutter of a real export: DICOMDIR, hidden files, side files and truncated instances."""
    junk: list[Path] = []
    first = manifest.files[0]
    series_dir = first.path.parent

    def put(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        junk.append(path)

    put(root / ".DS_Store", b"\x00\x00\x00\x01Bud1" + bytes(1024))
    put(series_dir / f"._{first.path.name}", b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64))
    put(root / "README.txt", b"Exported by the synthetic scanner console.\nDo not edit.\n")
    put(first.path.parent.parent / "report.pdf", _PDF_BYTES)

    # Truncated copies of real instances under fresh UIDs: one cut in the pixel data (pydicom
    # still reads it, only the size check notices), one cut inside the header.
    template = first.path.read_bytes()
    sop = new_uid()
    renamed = template.replace(first.sop_instance_uid.encode(), sop.encode())
    put(series_dir / "IM900001", renamed[: len(renamed) - max(2, (len(renamed) - 2048) // 2)])
    put(series_dir / "IM900002", renamed[:300])

    if len(manifest.files) <= DICOMDIR_MAX_FILES:
        put(root / "DICOMDIR", _dicomdir_bytes(manifest, file_set_uid=new_uid()))
    return junk


def _dicomdir_bytes(manifest: SynthManifest, *, file_set_uid: str) -> bytes:
    """A DICOMDIR built by pydicom's FileSet over the written instances.

    pydicom assigns its own file IDs (PT000000/ST000000/...), so the records name paths of
    pydicom's layout rather than ours; for an uploader it is the file a scanner export contains
    and must be skipped (Media Storage SOP Class 1.2.840.10008.1.3.10).
    """
    from pydicom.fileset import FileSet

    fileset = FileSet()
    fileset.ID = "SYNTH"
    fileset.UID = UID(file_set_uid)  # pydicom would draw a random one: keep the output deterministic
    for item in manifest.files:
        fileset.add(str(item.path))
    with tempfile.TemporaryDirectory(prefix="synth-dicomdir-") as scratch:
        fileset.write(scratch)
        data = (Path(scratch) / "DICOMDIR").read_bytes()
        shutil.rmtree(scratch, ignore_errors=True)
    return data
