"""DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile, with its named options.

Actions per attribute come from Table E.1-1 (:mod:`xnat_flows.anon.identifiers`); an option
keeps the attributes its Table E.1-1 column marks K or C (``annex_e_options.csv``, every row of
the column): ``retain-uids`` (E.3.9), ``retain-longitudinal-full-dates`` (E.3.6),
``retain-patient-characteristics`` (E.3.4), ``retain-device-identity`` (E.3.5),
``retain-institution-identity`` (E.3.11), ``clean-descriptors`` (E.3.3), ``clean-structured-content``
(E.3.2), ``clean-graphics`` (E.3.1, curves and overlays too). C ("clean") means the value is kept
for a person to clean — the engine cannot tell an identifying phrase in free text, a structured
report or an annotation from a harmless one: ``anon check`` lists what survives.

The options that need knowledge the engine does not have are refused with the reason
(:data:`REFUSED_OPTIONS`): Retain Safe Private (Table E.3.10-1's safe private attributes),
Retain Longitudinal Temporal Information with Modified Dates (a per-subject date offset the user
keeps), Clean Pixel Data and Clean Recognizable Visual Features (what the pixels show).

Where the table gives an IOD-dependent action, the engine (which does not know each IOD's module
types) takes the one that keeps a valid object: Z/D, X/D, X/Z/D -> D; X/Z -> Z; X/Z/U* -> U for
UIDs, the sequence kept for one (its UIDs are then U), else Z. D replaces the value with a dummy of the same VR; U with the attribute's
``hashUID`` (the same UID XNAT's DicomEdit gives it, so references stay consistent across files
and sites); Z empties it (a sequence loses its items); X removes it. Private attributes (odd
groups) are removed, and so are curves (50xx) and overlay data and comments (60xx,3000/4000).
Patient Identity Removed (0012,0062) is set to YES and De-identification Method (0012,0063) names
the profile and options.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources

from xnat_flows.anon.engine import Anonymizer
from xnat_flows.anon.functions import hash_uid
from xnat_flows.anon.identifiers import TABLE_EDITION, basic_profile_actions
from xnat_flows.anon.rawds import Node, dictionary_vr
from xnat_flows.anon.runtime import Context, assign
from xnat_flows.anon.urls import UrlAccess

# Option names as the CLI and flows spell them (PS3.15 Table E.1-1 column headings).
PROFILE_OPTIONS: tuple[str, ...] = (
    "retain-uids",
    "retain-longitudinal-full-dates",
    "retain-patient-characteristics",
    "retain-device-identity",
    "retain-institution-identity",
    "clean-descriptors",
    "clean-structured-content",
    "clean-graphics",
)
_OPTION_TITLES = {
    "retain-uids": "Retain UIDs",
    "retain-longitudinal-full-dates": "Retain Longitudinal Full Dates",
    "retain-patient-characteristics": "Retain Patient Characteristics",
    "retain-device-identity": "Retain Device Identity",
    "retain-institution-identity": "Retain Institution Identity",
    "clean-descriptors": "Clean Descriptors",
    "clean-structured-content": "Clean Structured Content",
    "clean-graphics": "Clean Graphics",
}
# PS3.15 options this engine cannot apply, with what a user should do instead.
REFUSED_OPTIONS: dict[str, str] = {
    "retain-safe-private": "Retain Safe Private needs PS3.15 Table E.3.10-1 (the private attributes known to be "
    "safe), which this engine does not ship; keep the private elements you know are safe with a DicomEdit script's "
    "retainPrivateTags[...]",
    "retain-longitudinal-modified-dates": "Retain Longitudinal Temporal Information with Modified Dates needs a "
    "per-subject date offset that you choose and keep secret; shift dates in a DicomEdit script "
    "(shiftDateByIncrement[(0008,0020), OFFSET]) or use retain-longitudinal-full-dates",
    "clean-pixel-data": "Clean Pixel Data needs to know where identifying text is burned into the pixels; "
    "`xnat-flows anon check` lists files with Burned In Annotation = YES, and a DicomEdit script's alterPixels "
    "blanks a region you name",
    "clean-recognizable-visual-features": "Clean Recognizable Visual Features (faces in the pixels) needs image "
    "processing this engine does not do (e.g. defacing before upload)",
}
PROFILE_VERSION = "2"  # bumped when the profile's output changes for the same input
PATIENT_IDENTITY_REMOVED = 0x00120062
DEIDENTIFICATION_METHOD = 0x00120063

# Dummy values for D, by VR: valid DICOM, and obviously not a patient's.
_DUMMIES = {
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000Y",
    "DS": "0",
    "IS": "0",
    "US": "0",
    "SS": "0",
    "UL": "0",
    "SL": "0",
    "FL": "0",
    "FD": "0",
    "UV": "0",
    "SV": "0",
}


@lru_cache(maxsize=1)
def option_tags() -> dict[str, frozenset[int]]:
    """Option name -> the attributes its Table E.1-1 column keeps (K) or leaves to clean (C)."""
    text = resources.files("xnat_flows.anon").joinpath("annex_e_options.csv").read_text(encoding="utf-8")
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    found: dict[str, set[int]] = {}
    for row in rows:
        found.setdefault(row["option"], set()).add(int(row["tag"], 16))
    return {option: frozenset(tags) for option, tags in found.items()}


def _resolve(action: str, vr: str) -> str:
    """One action for the IOD-dependent codes (see the module docstring)."""
    if action in ("Z/D", "X/D", "X/Z/D"):
        return "D"
    if action == "X/Z":
        return "Z"
    if action == "X/Z/U*":
        # U* on a sequence: keep it; the UIDs inside are replaced by their own U action
        return "U" if vr == "UI" else "K" if vr == "SQ" else "Z"
    return action


class ProfileProgram:
    def __init__(self, options: frozenset[str], digest: str) -> None:
        self.options = options
        self.digest = digest
        actions = basic_profile_actions()
        kept: set[int] = set()
        for option, tags in option_tags().items():
            if option in options:
                kept.update(tags)
        self.actions: dict[int, str] = {}
        for tag, code in actions.items():
            self.actions[tag] = "K" if tag in kept else _resolve(code, dictionary_vr(tag))
        self.keep_graphics = "clean-graphics" in options  # curves and overlays: kept to clean
        titles = ["Basic Profile", *(_OPTION_TITLES[o] for o in PROFILE_OPTIONS if o in options)]
        self.method = "\\".join(titles)

    up_to = None  # the profile looks at every attribute
    # StudyInstanceUID is kept (retain-uids) or replaced by hashUID of itself (action U)
    study_uid_follows_original = True

    def run(self, dataset: Node, context: Context) -> None:
        self._clean(dataset, context)
        dataset.put(PATIENT_IDENTITY_REMOVED, "YES")
        dataset.put(DEIDENTIFICATION_METHOD, self.method)

    def _clean(self, node: Node, context: Context) -> None:
        actions = self.actions
        doomed = []
        for tag in list(node.elements):
            group = tag >> 16
            if group & 1:  # private
                doomed.append(tag)
                continue
            if group & 0xFF00 == 0x5000 or (group & 0xFF00 == 0x6000 and tag & 0xFFFF in (0x3000, 0x4000)):
                if not self.keep_graphics:
                    doomed.append(tag)  # curve data; overlay data and comments (Table E.1-1)
                continue
            action = actions.get(tag, "K")
            if action == "K" and not node.is_sequence(tag):
                continue
            if action == "X":
                doomed.append(tag)
            elif node.is_sequence(tag):
                element = node.get(tag)
                assert element is not None
                items = node.items(element)
                if action in ("Z", "D"):
                    if items:
                        items.clear()
                        element.changed = True
                        node.changed = True
                else:
                    for item in items:
                        self._clean(item, context)
            elif action == "Z":
                if node.has_value(tag):
                    node.put(tag, "")
            elif action == "D":
                vr = node.vr(tag)
                if vr == "UI":
                    self._hash(node, tag, context)
                elif vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN", "AT"):
                    node.put(tag, "")
                else:
                    assign(node, tag, _DUMMIES.get(vr, "ANONYMIZED"), context)
            elif action == "U":
                self._hash(node, tag, context)
        node.delete_many(doomed)

    def _hash(self, node: Node, tag: int, context: Context) -> None:
        value = node.string(tag)
        if value:
            assign(node, tag, "\\".join(hash_uid(uid.strip()) for uid in value.split("\\")), context)


def basic_profile(options: Iterable[str] = ()) -> Anonymizer:
    """The Basic Profile with the named options (see :data:`PROFILE_OPTIONS`); ``ValueError``
    names an option that is not one of them."""
    chosen = frozenset(option.strip().lower() for option in options)
    refused = sorted(chosen & set(REFUSED_OPTIONS))
    if refused:
        raise ValueError("; ".join(f"{name}: {REFUSED_OPTIONS[name]}" for name in refused))
    unknown = sorted(chosen - set(PROFILE_OPTIONS))
    if unknown:
        raise ValueError(f"unknown profile option(s) {', '.join(unknown)}; known: {', '.join(PROFILE_OPTIONS)}")
    identity = "\0".join(["basic-profile", PROFILE_VERSION, TABLE_EDITION, *sorted(chosen)])
    digest = hashlib.sha256(identity.encode()).hexdigest()
    title = "basic profile" + (f" ({', '.join(o for o in PROFILE_OPTIONS if o in chosen)})" if chosen else "")
    return Anonymizer(ProfileProgram(chosen, digest), digest=digest, required_variables=frozenset(), description=title)


PROFILES = ("basic",)


def anonymizer_for(
    *,
    script: str | None = None,
    source: str = "<script>",
    profile: str | None = None,
    options: Iterable[str] = (),
    url_access: UrlAccess | None = None,
) -> Anonymizer:
    """The one way callers (CLI, flows, tasks) turn their choice into an :class:`Anonymizer`:
    a DicomEdit 6 ``script`` text, or a ``profile`` name (``basic``) with profile ``options``.
    Exactly one of the two; ``ValueError`` otherwise, ``ScriptError`` for a script that cannot run.
    ``url_access``: the URLs a script's ``getURL`` may fetch (``anon.urls``)."""
    if (script is None) == (profile is None):
        raise ValueError("choose one: a DicomEdit script or a profile (basic)")
    if script is not None:
        if options:
            raise ValueError("profile options apply to a profile, not to a script")
        from xnat_flows.anon.script import compile_script

        return compile_script(script, source=source, url_access=url_access)
    if profile is None or profile.strip().lower() not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    return basic_profile(options)
