"""The interpreter's per-file state (in progress)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Context:
    variables: dict[str, str]
    mapping: Any
    pixel_edits: list[Any] = field(default_factory=list)
