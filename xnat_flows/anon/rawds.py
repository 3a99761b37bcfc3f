"""Header-only Part 10 reader/writer (in progress)."""

from __future__ import annotations

from typing import Any


def parse_part10(data: bytes) -> Any:
    raise NotImplementedError("in progress (issue 23)")


def write_part10(instance: Any, *, pixel_edits: list[Any]) -> bytes:
    raise NotImplementedError("in progress (issue 23)")
