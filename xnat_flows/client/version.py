"""XNAT version strings ("1.9.2.1", "1.8.3-SNAPSHOT") compared as numbers."""

from __future__ import annotations

import re

DIRECT_ARCHIVE_MIN_VERSION = "1.8.3"


def parse_version(text: str) -> tuple[int, ...] | None:
    """Leading dotted numbers of ``text`` as a tuple, or ``None`` when there are none.

    Args:
        text: A version as XNAT reports it, e.g. ``1.8.10.1`` or ``1.9.0-SNAPSHOT``.

    Returns:
        The numbers, e.g. ``(1, 8, 10, 1)``, or ``None``.
    """
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", text or "")
    if not match:
        return None
    return tuple(int(part) for part in match.group(1).split("."))


def at_least(version: str, minimum: str) -> bool | None:
    """Whether ``version`` is ``minimum`` or newer.

    Args:
        version: The server's version text (empty when unknown).
        minimum: The version to compare with, e.g. ``1.8.3``.

    Returns:
        ``True``/``False`` when both parse, ``None`` when either does not.
    """
    have, need = parse_version(version), parse_version(minimum)
    if have is None or need is None:
        return None
    width = max(len(have), len(need))
    return have + (0,) * (width - len(have)) >= need + (0,) * (width - len(need))
