"""DicomEdit tag patterns and paths, resolved against a :class:`~xnat_flows.anon.rawds.Node`.

* ``(gggg,eeee)``: hex digits; ``X``/``x`` any digit, ``@`` an even digit, ``#`` an odd digit.
* ``(gggg,{creator}ee)``: a private element named by its block's Private Creator (PS3.5 7.8.1),
  whichever block ``nn`` the creator reserved in this dataset.
* ``a[i]/b``: element ``b`` in item ``i`` (0-based) of sequence ``a``; ``a[%]/b`` or ``a/b``: in
  every item; ``*/b``: ``b`` at any depth, the top level included; ``+/b``: at any depth below it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from xnat_flows.anon.rawds import Node

_TAG_TEXT = re.compile(
    r"\(\s*(?P<group>[0-9A-Fa-fXx@#]{4})\s*,\s*(?:(?P<element>[0-9A-Fa-fXx@#]{4})|\{(?P<creator>[^}]*)\}\s*(?P<low>[0-9A-Fa-fXx@#]{2}))\s*\)"
)


def _digits(text: str) -> tuple[int, int, int, int]:
    """(value, mask, even_mask, odd_mask) of a run of pattern digits, most significant first."""
    value = mask = even = odd = 0
    for ch in text.upper():
        value, mask, even, odd = value << 4, mask << 4, even << 4, odd << 4
        if ch == "X":
            continue
        if ch == "@":
            even |= 1
        elif ch == "#":
            odd |= 1
        else:
            value |= int(ch, 16)
            mask |= 0xF
    return value, mask, even, odd


@dataclass(frozen=True)
class TagPattern:
    text: str
    value: int  # digits that must match, under ``mask``
    mask: int
    even: int  # bits that must be 0 (an even digit)
    odd: int  # bits that must be 1 (an odd digit)
    creator: str | None  # private block named by its creator: the element byte is ``value & 0xFF``

    @classmethod
    def parse(cls, text: str) -> TagPattern:
        match = _TAG_TEXT.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"not a tag: {text}")
        group = match["group"]
        if match["creator"] is not None:
            g_value, g_mask, g_even, g_odd = _digits(group)
            l_value, l_mask, l_even, l_odd = _digits(match["low"])
            return cls(
                text,
                g_value << 16 | l_value,
                g_mask << 16 | l_mask,
                g_even << 16 | l_even,
                g_odd << 16 | l_odd,
                match["creator"].strip(),
            )
        value, mask, even, odd = _digits(group + match["element"])
        return cls(text, value, mask, even, odd, None)

    @property
    def exact(self) -> int | None:
        """The one tag this pattern names, if it has no wildcard and no creator."""
        if self.creator is None and self.mask == 0xFFFFFFFF:
            return self.value
        return None

    @property
    def is_private(self) -> bool:
        return self.creator is not None or (self.mask & 0x00010000 != 0 and self.value & 0x00010000 != 0)

    def matches(self, tag: int) -> bool:
        return tag & self.mask == self.value and tag & self.even == 0 and tag & self.odd == self.odd

    def tags_in(self, node: Node) -> list[int]:
        """The tags of ``node``'s elements this pattern matches."""
        exact = self.exact
        if exact is not None:
            return [exact] if exact in node.elements else []
        if self.creator is None:
            return [tag for tag in node.elements if self.matches(tag)]
        found = []
        for tag in node.elements:
            group = tag >> 16
            if not group & 1 or tag & 0xFFFF < 0x1000:
                continue
            pattern_tag = (tag & 0xFFFF0000) | (tag & 0xFF)
            if not self.matches(pattern_tag):
                continue
            block = (tag >> 8) & 0xFF
            if node.private_block(group, self.creator) == block:
                found.append(tag)
        return found

    def creation_tag(self, node: Node) -> int | None:
        """The tag an assignment creates when absent: an exact public tag, or a private one whose
        creator's block exists or can be reserved; ``None`` for a wildcard."""
        exact = self.exact
        if exact is not None:
            return exact
        if self.creator is not None and self.mask == 0xFFFF00FF:
            group = self.value >> 16
            block = node.reserve_private_block(group, self.creator)
            return group << 16 | block << 8 | (self.value & 0xFF)
        return None


@dataclass(frozen=True)
class TagStep:
    pattern: TagPattern
    index: int | None  # None: every item (or the element itself when last); an int: that item


@dataclass(frozen=True)
class Levels:
    minimum: int  # 0 for ``*``, 1 for ``+``


Step = TagStep | Levels


@dataclass(frozen=True)
class Path:
    text: str
    steps: tuple[Step, ...]

    @property
    def exact_tag(self) -> int | None:
        """The tag of a one-step path naming one public tag (most of a script's paths)."""
        if len(self.steps) == 1:
            step = self.steps[0]
            if isinstance(step, TagStep) and step.index is None:
                return step.pattern.exact
        return None

    @property
    def last(self) -> TagStep:
        step = self.steps[-1]
        assert isinstance(step, TagStep)
        return step

    def targets(self, node: Node, *, create: bool = False) -> Iterator[tuple[Node, int]]:
        """(dataset, tag) pairs the path names: existing elements, plus, with ``create``, the
        element an exact final tag names where it is absent."""
        yield from _walk(node, self.steps, create)

    def items_named(self, node: Node) -> Iterator[tuple[Node, int, int]]:
        """For a path ending in ``seq[i]``: (dataset, sequence tag, item index) to act on an item."""
        last = self.last
        assert last.index is not None
        for parent, tag in _walk(node, (*self.steps[:-1], TagStep(last.pattern, None)), False):
            element = parent.get(tag)
            if element is not None and element.is_sequence and last.index < len(parent.items(element)):
                yield parent, tag, last.index


def _walk(node: Node, steps: tuple[Step, ...], create: bool) -> Iterator[tuple[Node, int]]:
    step = steps[0]
    rest = steps[1:]
    if isinstance(step, Levels):
        # A `*` or `+` path changes attributes where they exist; it never creates them in every
        # dataset it passes through.
        if step.minimum == 0:
            yield from _walk(node, rest, False)
        for element in node:
            if element.is_sequence:
                for item in node.items(element):
                    yield from _walk(item, (Levels(0), *rest), False)
        return
    if not rest:
        tags = step.pattern.tags_in(node)
        if tags:
            yield from ((node, tag) for tag in tags)
        elif create:
            tag = step.pattern.creation_tag(node)
            if tag is not None:
                yield node, tag
        return
    for tag in step.pattern.tags_in(node):
        found = node.get(tag)
        if found is None or not found.is_sequence:
            continue
        items = node.items(found)
        chosen = items if step.index is None else items[step.index : step.index + 1]
        for item in chosen:
            yield from _walk(item, rest, create)
