"""The attributes DICOM PS3.15 Annex E Table E.1-1 lists as identifying, with their Basic Profile
action codes (D, Z, X, K, C, U and the IOD-dependent Z/D, X/Z, X/D, X/Z/D, X/Z/U*).

The table itself comes from ``dicom-anonymizer`` (Kitware; BSD-3-Clause), which ships Table
E.1-1 of each DICOM edition as data (``dicomfields_2026c``: the 2026c edition). Only its data is
used; the engine is ours.
"""

from __future__ import annotations

from functools import lru_cache

from pydicom import datadict

TABLE_EDITION = "2026c"  # DICOM PS3.15 edition the action table reproduces

_CATEGORY_ACTIONS = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}


@lru_cache(maxsize=1)
def basic_profile_actions() -> dict[int, str]:
    """Tag -> Basic Profile action code, for every attribute of Table E.1-1 (2026c edition)."""
    from dicomanonymizer.dicom_anonymization_databases import dicomfields_2026c as table

    actions: dict[int, str] = {}
    for category, action in _CATEGORY_ACTIONS.items():
        for entry in getattr(table, category):
            group, element = entry[0], entry[1]
            actions[group << 16 | element] = action
    return actions


@lru_cache(maxsize=1)
def identifying_tags() -> frozenset[int]:
    return frozenset(basic_profile_actions())


class _LazyTags:
    """``tag in IDENTIFYING_TAGS`` without loading the table until a mapping is first kept."""

    def __contains__(self, tag: object) -> bool:
        return tag in identifying_tags()


IDENTIFYING_TAGS = _LazyTags()


def keyword_of(tag: int) -> str:
    """pydicom's keyword for ``tag`` (``PatientID``), or ``(gggg,eeee)`` for one it does not know."""
    return datadict.keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
