"""``xnat-flows demo``: the README's main job."""

from __future__ import annotations


def demo() -> None:
    """Start the emulator, upload a synthetic study through the flow, verify it."""
    raise NotImplementedError
