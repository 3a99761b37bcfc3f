"""The :class:`Anonymizer`: a compiled script or profile applied to one DICOM instance at a time.

``apply_bytes`` parses the Part 10 header with :mod:`xnat_flows.anon.rawds` (elements kept as
their original bytes; pixel data never decoded), runs the program on that tree and writes the
header back, copying every untouched element, the pixel data and the transfer syntax verbatim.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

import pydicom

from xnat_flows.anon import rawds
from xnat_flows.anon.errors import AnonError
from xnat_flows.anon.rawds import Node
from xnat_flows.anon.runtime import Context


class MappingRecorder(Protocol):
    """Receives each identifying value the program replaced (see :class:`MappingCsv`)."""

    def record(self, attribute: str, original: str, replacement: str) -> None: ...


class Program(Protocol):
    """What a compiled script or a profile is to the engine."""

    def run(self, dataset: Node, context: Context) -> None: ...

    @property
    def up_to(self) -> int | None:
        """The highest top-level tag the program reads or writes; ``None``: any."""


@dataclass(frozen=True, slots=True)
class HeadRewrite:
    """``Anonymizer.rewrite_head_reading``'s answer: the file rewritten is ``head`` followed by
    the original from ``tail_start`` on; ``values``: the encoded values of the elements asked for
    (absent ones left out), None when the first bytes do not hold them all (read the file then)."""

    head: bytes
    tail_start: int
    values: dict[int, bytes] | None


def _top_level_values(
    instance: rawds.Instance, prefix: bytes, tags: Collection[int], up_to: int | None
) -> dict[int, bytes] | None:
    """The rewritten dataset's values of ``tags`` (top level, none a sequence); None when they are not
    all known from ``prefix``. Tags beyond ``up_to`` (those the program neither reads nor writes) are
    not in the dataset the program ran on but in the verbatim tail: they are read from there."""
    reach = None if up_to is None else max(up_to, rawds.SOP_INSTANCE_UID)
    nodes = {tag: instance.dataset for tag in tags}
    if reach is not None and max(tags) > reach:
        try:
            rest, stop = rawds.parse_dataset(
                prefix,
                instance.tail_start,
                len(prefix),
                instance.body_encoding,
                stop_at_pixels=True,
                stop_after=max(tags),
            )
        except (AnonError, struct.error):
            return None
        if stop >= len(prefix):
            return None  # the tags asked for may come after the bytes read
        nodes.update({tag: rest for tag in tags if tag > reach})
    values: dict[int, bytes] = {}
    for tag, node in nodes.items():
        element = node.get(tag)
        if element is None:
            continue
        if element.is_sequence or element.undefined:
            return None
        values[tag] = element.raw()
    return values


class Anonymizer:
    """A compiled, validated de-identification program. Immutable and thread-safe: one instance
    serves every upload thread.

    Attributes:
        digest: stable identity of the program and the engine's semantics (hex SHA-256). The same
            digest and the same input give the same output bytes, so a resume journal keyed on
            (file, digest) knows what was sent.
        required_variables: the externally supplied names the program reads (``project``,
            ``subject``, ``session``, ...) and does not assign itself.
        description: what to call it in messages and artifacts (``site.das``, ``basic profile``).
    """

    def __init__(self, program: Program, *, digest: str, required_variables: frozenset[str], description: str) -> None:
        self._program = program
        self.digest = digest
        self.required_variables = required_variables
        self.description = description

    @property
    def study_uid_follows_original(self) -> bool:
        """The rewritten StudyInstanceUID depends on the original one and the given variables alone.

        Decided from the program before any file is read (``anon.analysis``): the files of one
        study keep one study, which the first file shows.
        """
        return bool(getattr(self._program, "study_uid_follows_original", False))

    def apply_bytes(
        self,
        part10: bytes,
        variables: Mapping[str, str] | None = None,
        *,
        mapping: MappingRecorder | None = None,
    ) -> bytes:
        """The de-identified file: ``part10`` (a whole DICOM file) in, a whole file out.

        Raises :class:`AnonError` when the bytes are not DICOM, a required variable is missing,
        or ``alterPixels`` meets compressed pixel data. Never returns the input unchanged on error.
        """
        context = Context(self._check_variables(variables), mapping)
        try:
            instance = rawds.parse_part10(part10, up_to=self._program.up_to)
        except (struct.error, ValueError, IndexError) as exc:  # malformed beyond what the parser names
            raise AnonError(f"not a readable DICOM file: {exc}") from exc
        self._program.run(instance.dataset, context)
        return rawds.write_part10(instance, pixel_edits=context.pixel_edits)

    def rewrite_head(
        self, prefix: bytes, size: int, variables: Mapping[str, str] | None = None
    ) -> tuple[bytes, int] | None:
        """``apply_bytes`` of a file of ``size`` bytes from its first bytes, ``prefix``, without
        reading the rest: ``(head, tail_start)`` such that the de-identified file is ``head`` followed
        by the original from ``tail_start`` on — the same bytes ``apply_bytes`` of the whole file
        gives. None when ``prefix`` does not decide it (the header reaches beyond it, deflated or
        encapsulated data, ``alterPixels``): use ``apply_bytes`` on the whole file then.

        Raises :class:`AnonError` as ``apply_bytes`` does (a missing variable, a script that
        cannot be applied to this file)."""
        done = self.rewrite_head_reading(prefix, size, variables)
        return None if done is None else (done.head, done.tail_start)

    def rewrite_head_reading(
        self, prefix: bytes, size: int, variables: Mapping[str, str] | None = None, tags: Collection[int] = ()
    ) -> HeadRewrite | None:
        """``rewrite_head``, and the values of the top-level elements ``tags`` as the rewritten file
        holds them, read from the dataset the program ran on (not parsed again from the bytes)."""
        context = Context(self._check_variables(variables), None)
        parsed = rawds.parse_part10_head(prefix, size, up_to=self._program.up_to)
        if parsed is None:
            return None
        instance, tail_start = parsed
        self._program.run(instance.dataset, context)
        if context.pixel_edits:
            return None
        values = _top_level_values(instance, prefix, tags, self._program.up_to) if tags else None
        if rawds.unchanged(instance):
            return HeadRewrite(b"", 0, values)
        return HeadRewrite(rawds.write_part10(instance), tail_start, values)

    def apply_dataset(
        self,
        ds: pydicom.Dataset,
        variables: Mapping[str, str] | None = None,
        *,
        mapping: MappingRecorder | None = None,
    ) -> None:
        """Apply in place to a pydicom dataset (for ``anon check`` and tests; slower than
        ``apply_bytes``, which the transports use)."""
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=False)
        out = self.apply_bytes(buffer.getvalue(), variables, mapping=mapping)
        result = pydicom.dcmread(io.BytesIO(out), force=True)
        ds.clear()
        ds.update(result)
        if hasattr(result, "file_meta"):
            ds.file_meta = result.file_meta

    def _check_variables(self, variables: Mapping[str, str] | None) -> dict[str, str]:
        given = dict(variables or {})  # a copy: the script may assign variables of its own
        if self.required_variables <= given.keys():
            return given
        missing = sorted(name for name in self.required_variables if name not in given)
        if missing:
            raise AnonError(f"{self.description} needs the variable(s) {', '.join(missing)}, which were not given")
        return given

    def __repr__(self) -> str:
        return f"Anonymizer({self.description!r}, digest={self.digest[:12]})"
