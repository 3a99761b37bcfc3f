"""Presentation contexts for C-STORE, derived from the files to send.

A context pairs one SOP class with the transfer syntaxes offered for it, and the peer accepts at
most one syntax per context. Because ``send_c_store(path)`` sends a file's bytes as they are,
every (SOP class, transfer syntax) pair in the data gets a context of its own, so each file
finds a context in exactly its own syntax. An association carries at most 128 contexts; data
with more pairs is split into association groups.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

MAX_CONTEXTS_PER_ASSOCIATION = 128

SyntaxPair = tuple[str, str]  # (SOP class UID, transfer syntax UID)


@dataclass(frozen=True)
class AssociationGroup:
    """The contexts one association proposes; files whose pair is in ``pairs`` travel on it."""

    index: int
    pairs: tuple[SyntaxPair, ...]


def plan_association_groups(
    pairs: Iterable[SyntaxPair], max_contexts: int = MAX_CONTEXTS_PER_ASSOCIATION
) -> list[AssociationGroup]:
    """Distinct pairs, in a stable order, packed into groups of at most ``max_contexts``.

    Pairs of the same SOP class stay together where possible so a group mixes few classes.

    Args:
        pairs: The (SOP class, transfer syntax) pair of every file to send; repeats are fine.
        max_contexts: Contexts per association, 1 to 128 (PS3.8: context IDs are odd, 1-255).

    Returns:
        The association groups, numbered from 0.

    Raises:
        ValueError: ``max_contexts`` out of range.
    """
    if not 1 <= max_contexts <= MAX_CONTEXTS_PER_ASSOCIATION:
        raise ValueError(f"max_contexts must be 1..{MAX_CONTEXTS_PER_ASSOCIATION}")
    distinct = sorted(set(pairs))
    return [
        AssociationGroup(index=number, pairs=tuple(distinct[start : start + max_contexts]))
        for number, start in enumerate(range(0, len(distinct), max_contexts))
    ]
