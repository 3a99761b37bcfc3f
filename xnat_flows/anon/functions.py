"""DicomEdit 6's value functions (XNAT's DicomEdit 6 Language Reference, "Functions").

Each takes the evaluated arguments (text, or ``None`` for an absent attribute) and returns text.
The statement functions (``removeAllPrivateTags``, ``retainPrivateTags``, ``alterPixels``) act
on the dataset and live in :mod:`xnat_flows.anon.runtime`.
"""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

UUID_ROOT = "2.25"


@lru_cache(maxsize=1024)  # a study's and a series' UIDs recur in each of their files: hashed once
def hash_uid(value: str) -> str:
    """DicomEdit's ``hashUID``: a ``2.25.`` UID (PS3.5 B.2) from a name-based (version 5,
    SHA-1) UUID of the value's UTF-8 bytes with an empty namespace, so every site hashing the same
    UID gets the same result as XNAT. Same as DicomEdit's HashUID (dicom-edit6), which XNAT runs;
    checked against the published reimplementation used to reproduce XNAT's hashes
    (npm ``dicomedit-uuid`` v5 with an empty namespace, then ``2.25.`` + the UUID as an integer)."""
    digest = bytearray(hashlib.sha1(value.encode("utf-8")).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    return f"{UUID_ROOT}.{int.from_bytes(digest, 'big')}"


def derived_uid(*parts: str) -> str:
    """A ``2.25.`` UID derived from ``parts`` (for ``new UID``, kept deterministic on purpose)."""
    return hash_uid("\x00".join(parts))


UID_MAX = 64  # PS3.5 9.1: a UID is at most 64 characters
_UID_ROOT = re.compile(r"(0|[1-9]\d*)(\.(0|[1-9]\d*))*")
MAPPED_UID_DIGITS = 20  # the least room a mapReferencedUIDs prefix must leave (about 66 bits)


def check_uid_prefix(prefix: str) -> str | None:
    """Why ``prefix`` cannot root ``mapReferencedUIDs``' UIDs, or None when it can."""
    if not _UID_ROOT.fullmatch(prefix):
        return f"{prefix!r} is not a UID root (digits and dots, no leading zeros)"
    if len(prefix) + 1 + MAPPED_UID_DIGITS > UID_MAX:
        return f"UID root {prefix!r} is too long: at most {UID_MAX - 1 - MAPPED_UID_DIGITS} characters leave room for the mapped part"
    return None


def mapped_uid(prefix: str, uid: str) -> str:
    """``mapReferencedUIDs``' UID for ``uid`` under ``prefix``: ``prefix.N``, N from SHA-256 of both,
    as many digits as fit in 64 characters (at most 39, as a UUID's integer). DicomEdit draws a
    random UID under the prefix and remembers it for the run (dicom-edit6 ``MapReferencedUIDsMethod``:
    ``UIDUtils.createUID(prefix)`` kept in a map); deriving it keeps every reference to one UID
    consistent across files, runs and resumed uploads, as there."""
    digits = str(int.from_bytes(hashlib.sha256(f"{prefix}\0{uid}".encode()).digest(), "big"))
    return f"{prefix}.{digits[: min(39, UID_MAX - len(prefix) - 1)]}"


def _text(value: str | None) -> str:
    return "" if value is None else value


def _int(value: str | None, what: str) -> int:
    try:
        return int(float(_text(value).strip()))
    except ValueError as exc:
        raise FunctionError(f"{what} must be a number, got {value!r}") from exc


class FunctionError(ValueError):
    """A function applied to arguments it cannot use (the engine reports it as AnonError)."""


def fn_format(pattern: str | None, *args: str | None) -> str:
    """Java MessageFormat's ``{0}``, ``{1}``... placeholders ('' quotes a literal quote)."""

    def substitute(match: re.Match[str]) -> str:
        index = int(match.group(1))
        if index >= len(args):
            raise FunctionError(f"format: placeholder {{{index}}} has no argument")
        return _text(args[index])

    return re.sub(r"\{(\d+)(?:,[^}]*)?\}", substitute, _text(pattern)).replace("''", "'")


def fn_lowercase(value: str | None) -> str:
    return _text(value).lower()


def fn_uppercase(value: str | None) -> str:
    return _text(value).upper()


def fn_replace(value: str | None, target: str | None, replacement: str | None) -> str:
    """Java ``String.replace``: every literal occurrence."""
    target_text = _text(target)
    return _text(value).replace(target_text, _text(replacement)) if target_text else _text(value)


def fn_substring(value: str | None, begin: str | None, end: str | None = None) -> str:
    """Java ``String.substring(begin, end)``: ``end`` exclusive, clamped to the value's length."""
    text = _text(value)
    start = _int(begin, "substring begin")
    stop = len(text) if end is None else _int(end, "substring end")
    if start < 0 or stop < start:
        raise FunctionError(f"substring[{start}, {stop}] is out of range")
    return text[start:stop]


def fn_match(value: str | None, regex: str | None, group: str | None) -> str:
    """The regex group ``group`` of the whole value matching ``regex`` (Java ``Matcher.matches``);
    empty if it does not match."""
    found = re.fullmatch(_text(regex), _text(value))
    if found is None:
        return ""
    index = _int(group, "match group")
    if index > (found.re.groups or 0):
        raise FunctionError(f"match: regex {regex!r} has no group {index}")
    return found.group(index) or ""


def fn_hash_uid(value: str | None) -> str:
    text = _text(value)
    return hash_uid(text) if text else ""


def fn_url_encode(value: str | None) -> str:
    """Java ``URLEncoder.encode(value, "UTF-8")``: spaces as ``+``."""
    return urllib.parse.quote_plus(_text(value), safe="*-._")


# dicom-edit6 DicomDateTimeShifter.toSeconds: these unit names only (a year is 365 days).
_UNITS = {"years": 365 * 86400, "days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}
_DICOM_DATETIME = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?([+-]\d{4})?")


def _midpoint(fields: list[int | None]) -> dt.datetime:
    """The moment a DICOM date-time of partial precision stands for, as dicom-edit6 computes it
    (``MidPointDateTimeFactory``): each missing field is the middle of its range — a date without a
    time is noon, a month without a day its middle day, an hour without minutes half past."""
    year, month, day, hour, minute, second = fields
    assert year is not None
    if month is None:
        return dt.datetime(year, 7, 1)
    days_in_month = calendar.monthrange(year, month)[1]
    if day is None:
        return dt.datetime(year, month, days_in_month // 2 + 1, 0 if days_in_month % 2 == 0 else 12)
    if hour is None:
        return dt.datetime(year, month, day, 12)
    if minute is None:
        return dt.datetime(year, month, day, hour, 30)
    return dt.datetime(year, month, day, hour, minute, 30 if second is None else second)


def shift_datetime(text: str, amount: int, unit: str, function: str) -> str:
    """A DICOM DA or DT value moved by ``amount`` ``unit`` (dicom-edit6 ``DefaultDicomDateTimeShifter``):
    shifted from its midpoint, written back with the precision it had; fraction and offset kept."""
    factor = _UNITS.get(unit.strip().lower())
    if factor is None:
        raise FunctionError(f"{function}: unknown unit {unit!r} (years, days, hours, minutes, seconds)")
    match = _DICOM_DATETIME.fullmatch(text)
    if match is None:
        raise FunctionError(f"{function}: {text!r} is not a DICOM date or date-time")
    parts = match.groups()[:6]
    try:
        moment = _midpoint([int(g) if g else None for g in parts]) + dt.timedelta(seconds=amount * factor)
    except (ValueError, OverflowError) as exc:
        raise FunctionError(f"{function}: {text!r} cannot be shifted: {exc}") from exc
    digits = 4 + 2 * (sum(1 for g in parts if g) - 1)
    return (
        f"{moment.year:04d}{moment.strftime('%m%d%H%M%S')}"[:digits] + (match.group(7) or "") + (match.group(8) or "")
    )


def fn_shift_date(value: str | None, amount: str | None, unit: str | None = "days") -> str:
    """``shiftDateByIncrement[date, increment, units]``: units default to days (dicom-edit6
    ``ShiftDateByIncrementFunction``). An absent or empty date stays empty (DicomEdit fails the file)."""
    text = _text(value).strip()
    if not text:
        return ""
    return shift_datetime(text, _int(amount, "shiftDateByIncrement increment"), _text(unit), "shiftDateByIncrement")


def fn_shift_datetime(value: str | None, amount: str | None, unit: str | None = "seconds") -> str:
    """``shiftDateTimeByIncrement[datetime, increment, units]``: units default to seconds (dicom-edit6
    ``ShiftDateTimeByIncrementFunction``); a DA or a DT value."""
    text = _text(value).strip()
    if not text:
        return ""
    amount_value = _int(amount, "shiftDateTimeByIncrement increment")
    return shift_datetime(text, amount_value, _text(unit), "shiftDateTimeByIncrement")


@dataclass(frozen=True)
class Function:
    name: str
    minimum: int
    maximum: int
    call: Callable[..., str]
    regex_argument: int | None = None  # which argument is a regex (validated when literal)


VALUE_FUNCTIONS: dict[str, Function] = {
    f.name.lower(): f
    for f in (
        Function("format", 1, 64, fn_format),
        Function("lowercase", 1, 1, fn_lowercase),
        Function("uppercase", 1, 1, fn_uppercase),
        Function("replace", 3, 3, fn_replace),
        Function("substring", 2, 3, fn_substring),
        Function("match", 3, 3, fn_match, regex_argument=1),
        Function("hashUID", 1, 1, fn_hash_uid),
        Function("urlEncode", 1, 1, fn_url_encode),
        Function("shiftDateByIncrement", 2, 3, fn_shift_date),
        Function("shiftDateTimeByIncrement", 2, 3, fn_shift_datetime),
    )
}

# Statement functions: (minimum, maximum) arguments; run by the interpreter.
STATEMENT_FUNCTIONS: dict[str, tuple[str, int, int]] = {
    "removeallprivatetags": ("removeAllPrivateTags", 0, 0),
    "retainprivatetags": ("retainPrivateTags", 1, 256),
    "alterpixels": ("alterPixels", 4, 4),
    "mapreferenceduids": ("mapReferencedUIDs", 2, 256),
}

# getURL (a value from a web service) is compiled apart: only with the user's UrlAccess (anon.urls).
URL_FUNCTION = "geturl"
