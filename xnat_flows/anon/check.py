"""``anon check``: apply a script or profile in memory to a folder and say what it did.

For each file found the way an upload finds them (:func:`xnat_flows.transfer.scan.scan_directory`),
the program is applied in memory (nothing is written) and the header before and after compared:

* per attribute (a path through sequences, ``ReferencedImageSequence/ReferencedSOPInstanceUID``):
  how many files had it changed, removed or added, with one example;
* identifying attributes of the Basic Profile (PS3.15 Table E.1-1) and private attributes that
  survive unchanged, with the number of files; ``allow`` names those a site keeps on purpose
  (a keyword, a tag ``(gggg,eeee)``, ``private``, or a profile option such as ``retain-uids``);
* files whose Burned In Annotation (0028,0301) is YES: their pixels need a person's review;
* files the program cannot be applied to (:class:`AnonError`): they would not be sent.

The report's ``ok`` is False when identifiers survive that were not allowed, or a file failed.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pydicom
from pydicom.datadict import dictionary_has_tag, dictionary_keyword, dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from xnat_flows.anon.errors import AnonError
from xnat_flows.anon.identifiers import basic_profile_actions, keyword_of

BURNED_IN_ANNOTATION = 0x00280301
_ITEM_INDEX = re.compile(r"\[\d+\]")
PRIVATE = "private attributes"


@dataclass
class AttributeChange:
    attribute: str
    changed: int = 0
    removed: int = 0
    added: int = 0
    example_before: str = ""
    example_after: str = ""


@dataclass
class Survivor:
    attribute: str
    files: int = 0
    example: str = ""


@dataclass
class CheckReport:
    program: str
    digest: str
    files: int = 0
    not_dicom: int = 0
    changes: dict[str, AttributeChange] = field(default_factory=dict)
    survivors: dict[str, Survivor] = field(default_factory=dict)
    allowed: dict[str, Survivor] = field(default_factory=dict)
    burned_in: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    placeholders: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.survivors and not self.failures

    def problems(self) -> str:
        """What makes the report not ok, in one line (names and counts, never a value); empty when ok."""
        parts = []
        if self.survivors:
            parts.append(f"identifying attributes survive: {', '.join(sorted(self.survivors))}")
        if self.failures:
            parts.append(f"{len(self.failures)} file(s) cannot be de-identified")
        return "; ".join(parts)

    def to_dict(self, *, show_values: bool = True) -> dict[str, object]:
        """The report as plain data (``anon check --json``); without ``show_values`` no value from the
        files, before or after, only names and counts."""

        def shown(value: str) -> str | None:
            return value if show_values else None

        return {
            "program": self.program,
            "digest": self.digest,
            "ok": self.ok,
            "files": self.files,
            "not_dicom": self.not_dicom,
            "placeholders": list(self.placeholders),
            "changes": [
                {
                    "attribute": c.attribute,
                    "changed": c.changed,
                    "removed": c.removed,
                    "added": c.added,
                    "example_before": shown(c.example_before),
                    "example_after": shown(c.example_after),
                }
                for c in sorted(self.changes.values(), key=lambda c: c.attribute)
            ],
            "survivors": [
                {"attribute": v.attribute, "files": v.files, "example": shown(v.example)}
                for v in sorted(self.survivors.values(), key=lambda v: v.attribute)
            ],
            "allowed": [
                {"attribute": v.attribute, "files": v.files, "example": shown(v.example)}
                for v in sorted(self.allowed.values(), key=lambda v: v.attribute)
            ],
            "burned_in": list(self.burned_in),
            "failures": [{"file": path, "reason": reason} for path, reason in self.failures],
        }

    def to_text(self, *, show_values: bool = True) -> str:
        return "\n".join(_lines(self, show_values=show_values, markdown=False))

    def to_markdown(self, *, show_values: bool = False) -> str:
        """For a Prefect artifact: original values are not shown unless asked (an artifact is
        stored on the server; the values before de-identification are what it must not keep)."""
        return "\n".join(_lines(self, show_values=show_values, markdown=True))


def _short(value: str, limit: int = 48) -> str:
    value = value.replace("\n", " ")
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _lines(report: CheckReport, *, show_values: bool, markdown: bool) -> list[str]:
    hidden = "(hidden)"
    lines = [
        f"{'# ' if markdown else ''}anon check: {report.program}",
        "",
        f"{report.files} DICOM file(s) checked in memory (nothing written)"
        + (f", {report.not_dicom} other file(s) ignored" if report.not_dicom else "")
        + f"; program digest {report.digest[:12]}",
    ]
    if report.placeholders:
        lines.append(f"variables not given, shown as placeholders: {', '.join(report.placeholders)}")
    lines.append("")
    lines.append(f"{'## ' if markdown else ''}Changes per attribute")
    if markdown:
        lines += ["", "| attribute | changed | removed | added | example |", "|---|---|---|---|---|"]
    for change in sorted(report.changes.values(), key=lambda c: c.attribute):
        before = _short(change.example_before) if show_values else hidden
        example = f"{before} -> {_short(change.example_after)}" if change.changed else ""
        if change.removed and not change.changed:
            example = f"{before} -> (removed)"
        if change.added and not change.changed and not change.removed:
            example = f"(absent) -> {_short(change.example_after)}"
        if markdown:
            lines.append(f"| {change.attribute} | {change.changed} | {change.removed} | {change.added} | {example} |")
        else:
            counts = ", ".join(
                f"{n} {what}"
                for n, what in ((change.changed, "changed"), (change.removed, "removed"), (change.added, "added"))
                if n
            )
            lines.append(f"  {change.attribute}: {counts}; e.g. {example}")
    if not report.changes:
        lines.append("  (no attribute changed)")
    lines.append("")
    lines.append(f"{'## ' if markdown else ''}Identifying attributes that survive (PS3.15 Table E.1-1)")
    for title, group in (("", report.survivors), ("allowed: ", report.allowed)):
        for survivor in sorted(group.values(), key=lambda s: s.attribute):
            example = f" e.g. {_short(survivor.example)}" if show_values and survivor.example else ""
            lines.append(
                f"{'- ' if markdown else '  '}{title}{survivor.attribute} in {survivor.files} file(s){example}"
            )
    if not report.survivors and not report.allowed:
        lines.append(f"{'- ' if markdown else '  '}none")
    if report.burned_in:
        lines.append("")
        lines.append(f"{'## ' if markdown else ''}Burned In Annotation = YES (review the pixels)")
        lines += [f"{'- ' if markdown else '  '}{path}" for path in report.burned_in]
    if report.failures:
        lines.append("")
        lines.append(f"{'## ' if markdown else ''}Files the program cannot be applied to (they would not be sent)")
        lines += [f"{'- ' if markdown else '  '}{path}: {reason}" for path, reason in report.failures]
    lines.append("")
    verdict = "OK" if report.ok else "NOT OK"
    reasons = []
    if report.survivors:
        # the text is the CLI's report, the markdown a flow run's artifact: each says where "allowed" is set
        how = "the allowed attributes: the task's allow, a request's deidentify.allow" if markdown else "--allow NAME"
        reasons.append(f"{len(report.survivors)} identifying attribute(s) survive (allow those kept on purpose: {how})")
    if report.failures:
        reasons.append(f"{len(report.failures)} file(s) cannot be de-identified")
    lines.append(
        f"{'**' if markdown else ''}{verdict}{'**' if markdown else ''}"
        + (f": {'; '.join(reasons)}" if reasons else "")
    )
    return lines


# One element of a header, flattened: (tag, value as read, the dataset holding it). The value as read
# is the raw bytes while pydicom has not decoded them (equal bytes are equal values: nothing is
# decoded for them), a sequence's "N item(s)".
_Flat = tuple[int, object, "Dataset | None"]
_UNDEFINED_LENGTH = 0xFFFFFFFF


def _flatten(ds: Dataset, prefix: str = "") -> Iterable[tuple[str, _Flat]]:
    """(attribute path, element) of every element, into sequences; values decoded only for sequences."""
    for tag in ds.keys():  # noqa: SIM118 - iterating the dataset itself decodes every element
        raw = ds.get_item(tag)
        known = dictionary_has_tag(tag)
        name = prefix + (dictionary_keyword(tag) if known else f"({tag >> 16:04X},{tag & 0xFFFF:04X})")
        vr = getattr(raw, "VR", None)
        maybe_sequence = (
            vr in ("SQ", "UN")  # UN: pydicom reads it with the dictionary's VR, SQ perhaps
            or getattr(raw, "length", 0) == _UNDEFINED_LENGTH
            or (vr is None and (not known or tag >> 16 & 1 or dictionary_VR(tag) == "SQ"))  # implicit VR
        )
        if maybe_sequence:
            try:
                element = ds[tag]
            except (ValueError, TypeError, KeyError, AttributeError, UnicodeError, NotImplementedError):
                yield name, (tag, getattr(raw, "value", None), ds)  # pydicom cannot decode it: compared as read
                continue
            if element.VR == "SQ":
                yield name, (tag, f"{len(element.value)} item(s)", None)
                for index, item in enumerate(element.value):
                    yield from _flatten(item, f"{name}[{index}]/")
                continue
            raw = ds.get_item(tag)
        yield name, (tag, getattr(raw, "value", None) if isinstance(raw, RawDataElement) else raw, ds)


def _text(flat: _Flat) -> str:
    """The element's value as the report shows it (pydicom's decoding)."""
    tag, value, ds = flat
    if ds is None:
        return str(value)  # a sequence's "N item(s)"
    try:
        decoded = ds[tag].value
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeError, NotImplementedError):
        return "<undecodable>"  # pydicom cannot decode it
    if decoded is None:
        return ""
    return f"<{len(decoded)} bytes>" if isinstance(decoded, bytes) else str(decoded)


def _same(was: _Flat, now: _Flat) -> bool:
    """The element has the same value before and after: the same bytes, else the same decoded text."""
    if was[1] == now[1] and type(was[1]) is type(now[1]):
        return True
    return was[0] == now[0] and _text(was) == _text(now)


def _allowed_tags(allow: Iterable[str]) -> tuple[set[int], set[str], bool]:
    """(tags, attribute names, private allowed) from --allow values."""
    from xnat_flows.anon.profile import PROFILE_OPTIONS, ProfileProgram

    tags: set[int] = set()
    names: set[str] = set()
    private = False
    for raw in allow:
        item = raw.strip()
        if not item:
            continue
        if item.lower() in ("private", PRIVATE):
            private = True
        elif item.lower() in PROFILE_OPTIONS:
            program = ProfileProgram(frozenset({item.lower()}), "")
            tags.update(tag for tag, action in program.actions.items() if action == "K")
        elif item.startswith("("):
            group, _, element = item.strip("()").partition(",")
            tags.add(int(group, 16) << 16 | int(element, 16))
        else:
            tag = pydicom.datadict.tag_for_keyword(item)
            if tag is None:
                raise ValueError(
                    f"allowed attribute {item!r}: not a DICOM keyword, a tag (gggg,eeee), 'private' or a profile option"
                )
            tags.add(tag)
            names.add(item)
    return tags, names, private


class CheckedRules(Protocol):
    """What the check needs of the rules: an ``anon.Anonymizer``, or several applied in turn
    (``transfer.deidentify.ChainedAnonymizer``: XNAT's scripts, the user's, a profile)."""

    @property
    def description(self) -> str: ...

    @property
    def digest(self) -> str: ...

    @property
    def required_variables(self) -> frozenset[str]: ...

    def apply_bytes(self, part10: bytes, variables: Mapping[str, str]) -> bytes: ...


def check_folder(
    anonymizer: CheckedRules,
    folder: str | os.PathLike[str],
    variables: Mapping[str, str] | None = None,
    *,
    allow: Iterable[str] = (),
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CheckReport:
    """Apply ``anonymizer`` in memory to the DICOM files under ``folder`` and report (module doc).

    ``progress``: told (files checked, files to check) after each file."""
    from xnat_flows.transfer.scan import scan_directory

    scan = scan_directory(folder)
    files = scan.files[:limit] if limit else scan.files
    named = [(item.relpath, item.path) for item in files]
    report = check_files(anonymizer, named, variables, allow=allow, progress=progress)
    report.not_dicom = len(scan.skipped)
    return report


def check_files(
    anonymizer: CheckedRules,
    files: Iterable[tuple[str, str | os.PathLike[str]]],
    variables: Mapping[str, str] | None = None,
    *,
    allow: Iterable[str] = (),
    into: CheckReport | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CheckReport:
    """``check_folder`` on given files, each as (the name the report gives it, its path): the files
    an upload has planned, for instance. ``into``: a report to add to (several sessions, each with
    its own variables, in one report). ``progress``: told (files checked, files to check) after each file."""
    files = list(files)
    given = dict(variables or {})
    report = into if into is not None else CheckReport(anonymizer.description, anonymizer.digest)
    for name in sorted(anonymizer.required_variables - given.keys()):
        given[name] = name.upper()
        if name not in report.placeholders:
            report.placeholders.append(name)
    allowed_tags, _, allow_private = _allowed_tags(allow)
    actions = basic_profile_actions()
    for checked, (relpath, path) in enumerate(files, 1):
        report.files += 1
        _check_one(report, anonymizer, given, relpath, path, (actions, allowed_tags, allow_private))
        if progress is not None:
            progress(checked, len(files))
    return report


def _check_one(
    report: CheckReport,
    anonymizer: CheckedRules,
    variables: Mapping[str, str],
    relpath: str,
    path: str | os.PathLike[str],
    rules: tuple[dict[int, str], set[int], bool],
) -> None:
    """One file into ``report``: rewritten in memory, both headers read by pydicom and compared."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:  # removed or made unreadable since the scan
        report.failures.append((relpath, f"cannot be read: {exc.strerror or exc}"))
        return
    try:
        out = anonymizer.apply_bytes(data, variables)
    except AnonError as exc:
        report.failures.append((relpath, exc.reason))
        return
    before = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    after = pydicom.dcmread(io.BytesIO(out), stop_before_pixels=True, force=True)
    if _burned_in(before):
        report.burned_in.append(relpath)
    _compare(report, before, after, *rules)


def _burned_in(ds: Dataset) -> bool:
    """Burned In Annotation (0028,0301) is YES, read without decoding the rest of the header."""
    element = ds.get_item(BURNED_IN_ANNOTATION)
    if element is None:
        return False
    value = element.value
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value or "")
    return text.strip(" \0").upper() == "YES"


class PlannedFile(Protocol):
    """A file an upload has planned (``transfer.scan.DicomFile``): its name in the report, its path."""

    @property
    def relpath(self) -> str: ...

    @property
    def path(self) -> Path: ...


def check_sessions(
    anonymizer: CheckedRules,
    sessions: Iterable[tuple[Mapping[str, str], Iterable[PlannedFile]]],
    *,
    allow: Iterable[str] = (),
) -> CheckReport:
    """One report over an upload's planned sessions, each file rewritten with its session's XNAT
    variables (``transfer.deidentify.xnat_variables``; a C-STORE's routing): the gate of
    ``--anon-require-clean`` and of the flows' ``deidentify.require_clean``."""
    allowed = list(allow)
    report = CheckReport(anonymizer.description, anonymizer.digest)
    for variables, files in sessions:
        report = check_files(anonymizer, [(f.relpath, f.path) for f in files], variables, allow=allowed, into=report)
    return report


def _compare(
    report: CheckReport,
    before: Dataset,
    after: Dataset,
    actions: dict[int, str],
    allowed_tags: set[int],
    allow_private: bool,
) -> None:
    old = dict(_flatten(before))
    new = dict(_flatten(after))
    seen_survivors: set[str] = set()
    for path in sorted(old.keys() | new.keys()):
        was, now = old.get(path), new.get(path)
        same = was is not None and now is not None and _same(was, now)
        if not same:
            attribute = _ITEM_INDEX.sub("", path)
            change = report.changes.setdefault(attribute, AttributeChange(attribute))
            if was is not None and now is not None:
                change.changed += 1
            elif was is not None:
                change.removed += 1
            else:
                change.added += 1
            if not change.example_before and not change.example_after:
                change.example_before = _text(was) if was else ""
                change.example_after = _text(now) if now else ""
            continue  # removed, added or replaced
        assert now is not None
        tag = now[0]
        if now[2] is None:
            continue  # a sequence: its contents are checked one by one
        private = bool(tag >> 16 & 1)
        if not private and tag not in actions:
            continue
        name = PRIVATE if private else keyword_of(tag)
        if name in seen_survivors:
            continue
        text = _text(now)
        if not text:
            continue  # empty
        seen_survivors.add(name)
        kept = allow_private if private else tag in allowed_tags
        target = report.allowed if kept else report.survivors
        survivor = target.setdefault(name, Survivor(name))
        survivor.files += 1
        if not survivor.example:
            survivor.example = text
