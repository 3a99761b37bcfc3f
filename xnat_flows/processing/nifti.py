"""DICOM -> NIfTI with dcm2niix (Chris Rorden's converter), named BIDS-style.

``find_dcm2niix`` prefers the PyPI wheel (``pip install 'xnat-flows[processing]'``), then a
``dcm2niix`` on PATH (Debian's package). ``convert_series`` runs it on one scan's DICOM folder
in a scratch directory and renames what it wrote after BIDS: ``sub-<subject>_ses-<session>
_acq-<series>_run-<scan>_<suffix>`` with ``.nii.gz``, its JSON sidecar (``-b y``) and, for
diffusion, ``.bval``/``.bvec``. Suffixes follow the BIDS specification's common names where the
scan's type or series description says which (``T1w``, ``T2w``, ``FLAIR``, ``bold``, ``dwi``);
other scans keep their modality (``MR`` -> ``mr``), a name a curator renames when building a
dataset. dcm2niix's own postfixes for one series that yields several volumes (``_e2`` for a
second echo, ``_ph`` for phase, ``_i00002``...) are kept before the suffix, so no two outputs share a name.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from pydantic import BaseModel, Field

from xnat_flows.client.errors import XnatError
from xnat_flows.processing.scratch import ToolFailedError, last_lines, run_tool

INSTALL_HINT = (
    "Install the processing extra where the flow runs: pip install 'xnat-flows[processing]' "
    "(the dcm2niix wheel), or Debian's package: apt-get install dcm2niix"
)
_STEM = "converted"  # what dcm2niix is told to call its output (-f); renamed afterwards
_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]")
_OUTPUT_SUFFIXES = (".nii.gz", ".nii", ".json", ".bval", ".bvec")


class ToolNotInstalledError(XnatError):
    """A processing tool is missing on this host."""

    default_hint = INSTALL_HINT


class ConversionError(ToolFailedError):
    """dcm2niix could not convert a scan (its message says why)."""


class ConvertedScan(BaseModel):
    files: list[str] = Field(description="Names of the files written (NIfTI, JSON sidecar, bval/bvec)")
    log: str = Field(default="", description="The end of dcm2niix's output")


def find_dcm2niix() -> str:
    """The dcm2niix executable: the wheel's, else one on PATH; ``ToolNotInstalledError`` otherwise."""
    try:
        import dcm2niix  # the PyPI wheel ships the binary inside the package

        if Path(dcm2niix.bin).is_file():
            return str(dcm2niix.bin)
    except ImportError:
        pass
    found = shutil.which("dcm2niix")
    if found:
        return found
    raise ToolNotInstalledError("dcm2niix is not installed on this worker")


def bids_label(value: str) -> str:
    """A BIDS label: letters and digits only (BIDS forbids '_' and '-' inside labels)."""
    return _NOT_ALNUM.sub("", value) or "x"


def bids_suffix(scan_type: str, series_description: str = "", modality: str = "") -> str:
    """The BIDS suffix a scan's type or description names; the modality in lower case otherwise."""
    text = f"{scan_type} {series_description}".lower()
    if "flair" in text:
        return "FLAIR"
    if re.search(r"dwi|dti|diff", text):
        return "dwi"
    if re.search(r"bold|fmri|rest|task", text):
        return "bold"
    if re.search(r"t1|mprage|spgr", text):
        return "T1w"
    if re.search(r"t2", text):
        return "T2w"
    return bids_label(modality).lower() or "scan"


def bids_stem(subject: str, session: str, scan_id: str, series: str) -> str:
    """``sub-<subject>_ses-<session>[_acq-<series>]_run-<scan>`` (labels cleaned to letters and digits)."""
    parts = [f"sub-{bids_label(subject)}", f"ses-{bids_label(session)}"]
    if series and bids_label(series) != "x":
        parts.append(f"acq-{bids_label(series)}")
    parts.append(f"run-{bids_label(scan_id)}")
    return "_".join(parts)


def convert_series(
    dicom_dir: Path, out_dir: Path, *, stem: str, suffix: str, compress: bool = True, timeout: float = 3600.0
) -> ConvertedScan:
    """Convert the DICOM files under ``dicom_dir`` into ``out_dir`` named ``{stem}_{suffix}.*``.

    ``ConversionError`` with dcm2niix's own message when it fails or writes no NIfTI (for
    instance files that are not images); ``ToolNotInstalledError`` when there is no dcm2niix.
    """
    binary = find_dcm2niix()
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [binary, "-b", "y", "-z", "y" if compress else "n", "-f", _STEM, "-o", str(out_dir), str(dicom_dir)]
    try:
        run = run_tool(args, out_dir, timeout=timeout, check=False)
    except ToolFailedError as exc:
        raise ConversionError(exc.message, hint="") from None
    written = sorted(p for p in out_dir.iterdir() if p.name.startswith(_STEM) and p.name.endswith(_OUTPUT_SUFFIXES))
    volumes = [p for p in written if p.name.endswith((".nii.gz", ".nii"))]
    if run.returncode != 0 or not volumes:
        for path in written:
            path.unlink()
        raise ConversionError(f"dcm2niix (exit {run.returncode}): {last_lines(run.output)}", hint="")
    names = []
    for path in written:
        ext = next(e for e in _OUTPUT_SUFFIXES if path.name.endswith(e))
        extra = bids_label(path.name[len(_STEM) : -len(ext)]) if path.name[len(_STEM) : -len(ext)] else ""
        name = f"{stem}_{extra}_{suffix}{ext}" if extra else f"{stem}_{suffix}{ext}"
        path.rename(out_dir / name)
        names.append(name)
    return ConvertedScan(files=sorted(names), log=run.output[-1000:])
