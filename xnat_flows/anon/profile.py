"""DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile, with its named options."""

from __future__ import annotations

from collections.abc import Iterable

from xnat_flows.anon.engine import Anonymizer

# Option names (PS3.15 Table E.1-1 column headings), as the CLI and flows spell them.
PROFILE_OPTIONS: tuple[str, ...] = (
    "retain-safe-private",
    "retain-uids",
    "retain-device-identity",
    "retain-institution-identity",
    "retain-patient-characteristics",
    "retain-longitudinal-full-dates",
    "retain-longitudinal-modified-dates",
    "clean-descriptors",
    "clean-structured-content",
    "clean-graphics",
)


def basic_profile(options: Iterable[str] = ()) -> Anonymizer:
    """The Basic Profile with the named options (see :data:`PROFILE_OPTIONS`)."""
    raise NotImplementedError("Basic Profile: in progress (issue 23)")
