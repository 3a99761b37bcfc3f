"""``xnat-flows synth`` (owned by the synthetic-data work)."""

from __future__ import annotations


def synth() -> None:
    """Write synthetic DICOM studies."""
    raise NotImplementedError
