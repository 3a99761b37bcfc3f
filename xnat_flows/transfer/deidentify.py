"""De-identification on the way out.

Every file is rewritten by a DicomEdit script (or the Basic Profile) as it streams into a request,
for every transport — DICOM-zip, gradual-DICOM, C-STORE and the inbox — through the one file source
they share (``scan.read_exactly``; the C-STORE sender's ``cstore.dataset.dataset_to_send``).

The originals are never modified and no copy of the study is written: ``deidentify_files``
applies the script once to every file before anything is sent (a dry run, in memory, one file
at a time) — to the file's first bytes only (``HEAD_PROBE``, then ``HEAD_BYTES``) when they hold the whole header
the script reads (``anon.Anonymizer.rewrite_head``), the pixel data neither read nor copied then,
else to the whole file — and returns ``DicomFile`` entries that describe the *rewritten* instance — its size
and its SOP, series and study UIDs as the script makes them (``anon.Anonymizer.rewrite_head_reading``
gives them from the dataset it rewrote; the rewritten bytes are not parsed again) — each carrying a ``Rewrite`` that
tells the file source how to make those bytes again from the original while it streams.
Grouping into sessions, the destination check, the resume journal and verification therefore
all work on what is sent, not on what is on disk.

While sending, a file's bytes are made again from the original without running the script a
second time: the dry run keeps the rewritten header (``Rewrite.head``, the bytes before the tail the
rewritten file shares with the original — the pixel data, which the engine copies verbatim) and the
send streams it, then the original's tail, read anew from where it starts (not the header before it,
which the dry run read) and checked unchanged (size, modification time) before its last chunk.
The headers kept are bounded (``HEAD_CACHE_BYTES``); beyond that the script runs again while
sending, which is as good because the engine is deterministic (the same script, variables and
input give the same bytes; ``hashUID``, never a random UID) — and a second application that gives
other bytes stops the request before its last chunk (``read_exactly``), so a torn or mixed
instance never reaches XNAT.

A file the script cannot be applied to is listed (``Deidentified.refused``) and never sent —
neither rewritten nor, above all, as its original — and the upload then ends as a failure.

DICOM-zip, when the script's rewritten StudyInstanceUID provably depends on the original one and
XNAT's variables alone (``anon.analysis``; XNAT's default site script, the Basic Profile and most
site scripts): the dry run is not made for the whole session before the first request but batch by
batch, each batch's just before its request, while the earlier batches stream and XNAT imports them
(``StreamedDeidentification``). The session's study comes from its first file, before anything is
sent, and each file's is compared with it before its request; the files are rewritten in the
session's order whichever batch asks first, so the same files are refused, with the same journal
records, as by a whole dry run. ``session.upload_batch_resumable`` rewrites a batch, for the library's
threads and the flow's ``upload-batch`` tasks alike (which then must share this process: a Dask task
runner gets the whole dry run). gradual-DICOM and C-STORE make the whole dry run first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from xnat_flows.client.errors import InputError
from xnat_flows.transfer.part10 import (
    SERIES_KEY_TAGS,
    SeriesKeys,
    has_magic,
    read_file_meta,
    read_series_keys,
    series_keys,
)
from xnat_flows.transfer.scan import DicomFile, SkippedFile

if TYPE_CHECKING:
    from xnat_flows.anon import UrlAccess
    from xnat_flows.anon.check import CheckReport
    from xnat_flows.anon.engine import HeadRewrite
    from xnat_flows.transfer.target import UploadTarget

NOT_DEIDENTIFIED = "not de-identified, not sent"
SCRIPT_ERROR = "anon-script-error"  # InputError.reason of a script that does not compile (line:column)
IDENTIFIERS_SURVIVE = "identifiers-survive"  # IdentifiersSurvive.reason: each reader words its own hint
_KEYS_HEAD = 65536  # the UIDs sit in the dataset's first bytes; the rest is read only if not
HEAD_BYTES = 65536  # the dry run reads a file's first bytes; the whole file only if its header is longer
HEAD_PROBE = 16384  # read first: most headers fit; after one that does not, a run reads HEAD_BYTES
HEAD_CACHE_BYTES = 256 << 20  # rewritten headers kept per dry run (~40,000 files of ~6 KB)
_TAIL_STEPS = (65536, 4096, 256)  # the shared tail is found in 64 KB, 4 KB, then 256-byte steps


class IdentifiersSurvive(InputError):
    """De-identification rules leave identifying attributes, or files they cannot take (``anon check``).

    Raised by a gate before anything is sent (``--anon-require-clean``, ``deidentify.require_clean``)
    and by the ``anon-check`` task.
    """

    default_hint = "`xnat-flows anon check` shows each surviving attribute with an example"

    def __init__(self, message: str) -> None:
        super().__init__(message, reason=IDENTIFIERS_SURVIVE)

    @classmethod
    def of(cls, report: CheckReport, *, nothing_sent: bool) -> IdentifiersSurvive:
        """The error for a report that is not ok (``anon.check``); ``nothing_sent``: a gate stopped an upload."""
        return cls(f"{report.program}: {report.problems()}" + ("; nothing was sent" if nothing_sent else ""))


GATE_WITHOUT_RULES = "require_clean checks de-identification rules, and none were given"


def require_clean(
    anonymizer: Anonymizer | None,
    sessions: Iterable[tuple[Mapping[str, str], Sequence[DicomFile]]],
    allow: Iterable[str] = (),
) -> None:
    """The gate before anything is sent (``--anon-require-clean``).

    The rules tried on every planned file, each with its session's XNAT variables (``xnat_variables``;
    a C-STORE's routing). The flows' ``deidentify.require_clean`` run the ``check-before-sending``
    task instead, for its artifact.

    Raises:
        InputError: No rules to check (``GATE_WITHOUT_RULES``).
        IdentifiersSurvive: Identifying attributes survive, or files cannot be de-identified.
    """
    from xnat_flows.anon.check import check_sessions

    if anonymizer is None:
        raise InputError(GATE_WITHOUT_RULES, reason="gate-without-rules")
    report = check_sessions(anonymizer, sessions, allow=allow)
    if not report.ok:
        raise IdentifiersSurvive.of(report, nothing_sent=True)


class Anonymizer(Protocol):
    """What the transports need of an anonymizer (``xnat_flows.anon.Anonymizer`` is one)."""

    @property
    def digest(self) -> str:
        """A stable identity of the rules: equal digests rewrite equal inputs to equal bytes."""
        ...

    @property
    def description(self) -> str:
        """What the rules are, for messages and reports (``site script``, ``DICOM Basic Profile``...)."""
        ...

    @property
    def required_variables(self) -> frozenset[str]:
        """The variables the rules read (project, subject, session...), which an upload must give."""
        ...

    def apply_bytes(self, part10: bytes, variables: Mapping[str, str]) -> bytes:
        """``part10`` (a whole Part 10 file) rewritten, with XNAT's ``variables`` (project, subject, session)."""
        ...


@runtime_checkable
class HeadRewriter(Protocol):
    """An anonymizer that can rewrite a file from its first bytes (``anon.Anonymizer.rewrite_head``).

    ``(head, tail_start)``, the file sent being ``head`` + the original from ``tail_start`` on.
    """

    def rewrite_head(self, prefix: bytes, size: int, variables: Mapping[str, str]) -> tuple[bytes, int] | None:
        """The file of ``size`` bytes rewritten from its first bytes ``prefix``; None when it needs them all."""
        ...


@runtime_checkable
class HeadReader(Protocol):
    """A ``HeadRewriter`` that also gives the rewritten values of top-level elements.

    ``anon.Anonymizer.rewrite_head_reading``: the dry run need not parse its output again.
    """

    def rewrite_head_reading(
        self, prefix: bytes, size: int, variables: Mapping[str, str], tags: Collection[int]
    ) -> HeadRewrite | None:
        """The file's header rewritten from ``prefix`` with the rewritten values of ``tags``; None: whole file needed."""
        ...


@dataclass(frozen=True)
class ChainedAnonymizer:
    """Several anonymizers applied in turn (XNAT's site script, then the project's)."""

    steps: tuple[Anonymizer, ...]

    @property
    def description(self) -> str:
        """The steps' descriptions, in the order they apply."""
        return ", then ".join(step.description for step in self.steps)

    @property
    def digest(self) -> str:
        """A stable identity of the chain: the steps' digests, in order."""
        return hashlib.sha256("\n".join(step.digest for step in self.steps).encode()).hexdigest()

    @property
    def required_variables(self) -> frozenset[str]:
        """The variables any step's script needs (``anon.Anonymizer.required_variables``)."""
        return frozenset().union(*(getattr(step, "required_variables", frozenset()) for step in self.steps))

    @property
    def study_uid_follows_original(self) -> bool:
        """Every step's rewritten StudyInstanceUID follows the one it is given (``anon.analysis``)."""
        return all(getattr(step, "study_uid_follows_original", False) for step in self.steps)

    def apply_bytes(self, part10: bytes, variables: Mapping[str, str]) -> bytes:
        """``part10`` rewritten by each step in turn."""
        for step in self.steps:
            part10 = step.apply_bytes(part10, variables)
        return part10

    def rewrite_head(self, prefix: bytes, size: int, variables: Mapping[str, str]) -> tuple[bytes, int] | None:
        """Each step's ``rewrite_head`` on the first bytes the step before made.

        None as soon as one step needs the whole file.

        Returns:
            The rewritten head and where the original's tail starts, or None.
        """
        head, tail_start = b"", 0  # the file so far: head + the original from tail_start on
        for step in self.steps:
            if not isinstance(step, HeadRewriter):
                return None
            done = step.rewrite_head(head + prefix[tail_start:], len(head) + size - tail_start, variables)
            if done is None:
                return None
            step_head, step_start = done
            if step_start >= len(head):  # the step's tail lies in the original
                head, tail_start = step_head, tail_start + step_start - len(head)
            else:  # the step keeps part of the head the steps before made
                head = step_head + head[step_start:]
        return head, tail_start


def chain(anonymizers: Iterable[Anonymizer | None]) -> Anonymizer | None:
    """One anonymizer applying ``anonymizers`` (Nones left out) in order; None when there are none."""
    steps = tuple(a for a in anonymizers if a is not None)
    if not steps:
        return None
    return steps[0] if len(steps) == 1 else ChainedAnonymizer(steps)


def xnat_variables(target: UploadTarget) -> dict[str, str]:
    """The variables XNAT passes a site or project script when it imports a file for ``target``.

    As xnat-web's ``MizerService.anonymize(file, project, subject, session label, ...)``.

    Returns:
        ``project``, ``subject`` and ``session``.
    """
    return {"project": target.project, "subject": target.subject, "session": target.session}


@dataclass(frozen=True, slots=True)
class Rewrite:
    """How a sent file's bytes are made.

    The original's (``original_size`` bytes on disk), rewritten by ``anonymizer`` with
    ``variables``.
    """

    anonymizer: Anonymizer
    variables: tuple[tuple[str, str], ...]
    original_size: int
    # the rewritten file is ``head`` + the original from ``tail_start`` on (None: run the script again)
    head: bytes | None = None
    tail_start: int = 0

    def check_ready(self) -> None:
        """Nothing to do: a ``Rewrite`` knows its bytes (a ``PendingRewrite`` does not yet)."""

    @property
    def digest(self) -> str:
        """A digest of the rules and variables.

        Part of the resume journal's record of a sent file, so a re-run with another script (or
        another subject label) sends again rather than skipping.
        """
        text = self.anonymizer.digest + "".join(f"\0{k}={v}" for k, v in self.variables)
        return hashlib.sha256(text.encode()).hexdigest()

    def apply(self, original: bytes) -> bytes:
        """The rewritten instance made from ``original``, the file's bytes on disk."""
        if self.head is not None:
            return b"".join((self.head, memoryview(original)[self.tail_start :]))
        return self.anonymizer.apply_bytes(original, dict(self.variables))


def shared_tail(original: bytes, rewritten: bytes) -> int:
    """The length of a tail ``rewritten`` shares with ``original`` (a multiple of 256 bytes, at most the longest).

    What the engine copied verbatim, the pixel data above all.

    Args:
        original: The file as read.
        rewritten: The file as de-identified.

    Returns:
        The number of shared bytes.
    """
    shared = 0
    limit = min(len(original), len(rewritten))
    a_end, b_end = len(original), len(rewritten)
    view = memoryview(rewritten)
    for step in _TAIL_STEPS:
        # startswith at an offset with a memoryview: a memcmp, neither side copied
        while shared + step <= limit and original.startswith(
            view[b_end - shared - step : b_end - shared], a_end - shared - step
        ):
            shared += step
    return shared


@dataclass
class Deidentified:
    """The files to send (each describing its rewritten instance) and the files refused."""

    files: list[DicomFile] = field(default_factory=list)
    refused: list[SkippedFile] = field(default_factory=list)


@dataclass(frozen=True)
class _Keys:
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    series_number: int | None
    transfer_syntax: str


def _window_keys(first_bytes: bytes) -> _Keys | None:
    """The UIDs of a rewritten instance from its first bytes; None when they are not all there."""
    meta = read_file_meta(first_bytes)
    keys = read_series_keys(memoryview(first_bytes)[:_KEYS_HEAD], meta)
    if keys is None and len(first_bytes) > _KEYS_HEAD:
        keys = read_series_keys(first_bytes, meta)
    return None if keys is None else _keys(keys, meta.transfer_syntax)


def _keys(keys: SeriesKeys, transfer_syntax: str) -> _Keys:
    return _Keys(
        keys.sop_class_uid,
        keys.sop_instance_uid,
        keys.study_uid,
        keys.series_uid,
        keys.series_number,
        transfer_syntax,
    )


def _keys_of(part10: bytes) -> _Keys:
    """The UIDs of a rewritten instance: from its first bytes, else (an odd encoding) by pydicom."""
    keys = _window_keys(part10)
    if keys is not None:
        return keys
    import pydicom

    meta = read_file_meta(part10)

    ds = pydicom.dcmread(io.BytesIO(part10), stop_before_pixels=True)
    number = ds.get("SeriesNumber")
    try:
        series_number = int(number) if number not in (None, "") else None
    except (TypeError, ValueError):
        series_number = None
    return _Keys(
        str(ds.get("SOPClassUID", "") or meta.sop_class_uid),
        str(ds.get("SOPInstanceUID", "") or meta.sop_instance_uid),
        str(ds.get("StudyInstanceUID", "") or ""),
        str(ds.get("SeriesInstanceUID", "") or ""),
        series_number,
        meta.transfer_syntax,
    )


def _read_head(item: DicomFile, count: int) -> bytes:
    """The file's first ``count`` bytes; fails as ``read_exactly`` does if it changed since the scan."""
    try:
        with open(item.path, "rb") as handle:
            prefix = handle.read(count)
            now = os.fstat(handle.fileno())
    except OSError as exc:
        raise InputError(f"Cannot read {item.path}: {exc.strerror or exc}", hint="Check the file and re-run") from None
    if now.st_size != item.size or (item.mtime_ns and now.st_mtime_ns != item.mtime_ns):
        raise InputError(
            f"{item.path} changed while being uploaded (scanned {item.size} bytes)",
            hint="Wait until the export has finished writing, then re-run",
        )
    return prefix


# A file's first bytes and size in; the rewritten header, where the original's tail starts and the
# rewritten values of the series keys (None: not read) out; None: the whole file is needed.
_HeadStep = Callable[[bytes, int], "tuple[bytes, int, dict[int, bytes] | None] | None"]


def _head_step(anonymizer: Anonymizer, variables: Mapping[str, str]) -> _HeadStep | None:
    """How the dry run rewrites a file from its first bytes with ``anonymizer``.

    Chosen once per run: a Protocol ``isinstance`` costs microseconds a file.

    Returns:
        The step; None when the anonymizer cannot rewrite from a file's first bytes.
    """
    if isinstance(anonymizer, HeadReader):
        reading = anonymizer.rewrite_head_reading

        def from_head_reading(prefix: bytes, size: int) -> tuple[bytes, int, dict[int, bytes] | None] | None:
            done = reading(prefix, size, variables, SERIES_KEY_TAGS)
            return None if done is None else (done.head, done.tail_start, done.values)

        return from_head_reading
    if isinstance(anonymizer, HeadRewriter):
        rewrite_head = anonymizer.rewrite_head

        def from_head(prefix: bytes, size: int) -> tuple[bytes, int, dict[int, bytes] | None] | None:
            done = rewrite_head(prefix, size, variables)
            return None if done is None else (*done, None)

        return from_head
    return None


def _rewrite_from_head(item: DicomFile, step: _HeadStep, first_read: int) -> tuple[bytes, int, _Keys, int] | None:
    """The file rewritten from its first bytes alone: ``first_read`` of them, else ``HEAD_BYTES``.

    Returns:
        The rewritten header, where the original's verbatim tail starts, the rewritten instance's
        UIDs (from the dataset the engine rewrote when it gives them, else read from the rewritten
        bytes), how many first bytes it took; or None: read the whole file.
    """
    if item.size <= HEAD_BYTES:
        return None
    for count in (first_read, HEAD_BYTES) if first_read < HEAD_BYTES else (HEAD_BYTES,):
        prefix = _read_head(item, count)
        done = step(prefix, item.size)
        if done is None:
            continue  # the header reaches beyond these bytes (or no first bytes decide it)
        head, tail_start, values = done
        keys = None
        if values is not None and (found := series_keys(values)) is not None:
            keys = _keys(found, _rewritten_transfer_syntax(item, head or prefix))
        if keys is None:
            keys = _window_keys(head + prefix[tail_start:])
        if keys is not None:
            return head, tail_start, keys, count
    return None


def _rewritten_transfer_syntax(item: DicomFile, first_bytes: bytes) -> str:
    """The transfer syntax of a file rewritten from ``item`` whose first bytes are ``first_bytes``.

    A script's program runs on the dataset, never on the File Meta (the engine only makes its Media
    Storage SOP UIDs follow the dataset's): a Part 10 file keeps the transfer syntax its scan read,
    and its meta is not parsed again. Anything else is read (and checked) from the bytes.

    Returns:
        The Transfer Syntax UID.
    """
    if item.transfer_syntax and has_magic(first_bytes):
        return item.transfer_syntax
    return read_file_meta(first_bytes).transfer_syntax


def _rewrite_whole(
    item: DicomFile, anonymizer: Anonymizer, variables: Mapping[str, str], *, keep_head: bool
) -> tuple[bytes | None, int, int, _Keys]:
    """The whole file read and rewritten.

    Returns:
        The rewritten bytes before the tail they share with the original (when ``keep_head``), where
        that tail starts, the rewritten size, the UIDs.
    """
    from xnat_flows.transfer.scan import read_exactly

    data = b"".join(read_exactly(item))
    rewritten = anonymizer.apply_bytes(data, variables)
    keys = _keys_of(rewritten)
    if not keep_head:
        return None, 0, len(rewritten), keys
    shared = shared_tail(data, rewritten)
    return rewritten[: len(rewritten) - shared], len(data) - shared, len(rewritten), keys


def _refusal(path: Path, why: str) -> SkippedFile:
    return SkippedFile(path, f"{NOT_DEIDENTIFIED}: {why}")


class _DryRun:
    """One session's dry run, file by file, with the state its checks across files need.

    The SOP Instance UIDs given so far (two files rewritten to one are not both sent), the rewritten
    headers' budget and how many first bytes a file's header takes in this session.
    """

    def __init__(self, anonymizer: Anonymizer, variables: Mapping[str, str], head_cache_bytes: int) -> None:
        self.anonymizer = anonymizer
        self.variables = variables
        self.frozen_variables = tuple(sorted(variables.items()))
        self.by_sop: dict[str, DicomFile] = {}
        self.cache_left = head_cache_bytes
        self.head_step = _head_step(anonymizer, variables)
        self.first_read = HEAD_PROBE  # HEAD_BYTES once a file's header did not fit: the files of a study are alike

    def rewrite(self, original: DicomFile) -> DicomFile | SkippedFile:
        """``original`` described as the script rewrites it, or refused with the reason."""
        if original.rewrite is not None:
            raise InputError(f"{original.relpath} is de-identified already", hint="De-identify a file list once")
        try:
            head_step = self.head_step
            from_head = _rewrite_from_head(original, head_step, self.first_read) if head_step is not None else None
            if from_head is None or from_head[3] > self.first_read:
                self.first_read = HEAD_BYTES
            if from_head is not None:
                head: bytes | None = from_head[0]
                tail_start, keys = from_head[1], from_head[2]
                size = len(from_head[0]) + original.size - tail_start
            else:
                head, tail_start, size, keys = _rewrite_whole(
                    original, self.anonymizer, self.variables, keep_head=self.cache_left > 0
                )
        except Exception as exc:  # noqa: BLE001 - whatever the script or the file did, this file is not sent
            return _refusal(original.path, f"{type(exc).__name__}: {exc}")
        missing = [
            name
            for name, value in (
                ("StudyInstanceUID", keys.study_uid),
                ("SeriesInstanceUID", keys.series_uid),
                ("SOPInstanceUID", keys.sop_instance_uid),
            )
            if not value
        ]
        if missing:
            return _refusal(original.path, f"the script leaves it without {', '.join(missing)}")
        if keys.sop_instance_uid in self.by_sop:
            other = self.by_sop[keys.sop_instance_uid]
            return _refusal(original.path, f"the script gives it the SOP Instance UID of {other.relpath}")
        if head is not None and self.cache_left >= len(head):
            rewrite = Rewrite(self.anonymizer, self.frozen_variables, original.size, head, tail_start)
            self.cache_left -= len(head)
        else:
            rewrite = Rewrite(self.anonymizer, self.frozen_variables, original.size)
        sent = dataclasses.replace(
            original,
            size=size,
            study_uid=keys.study_uid,
            series_uid=keys.series_uid,
            series_number=keys.series_number,
            sop_instance_uid=keys.sop_instance_uid,
            sop_class_uid=keys.sop_class_uid,
            transfer_syntax=keys.transfer_syntax,
            rewrite=rewrite,
        )
        self.by_sop[keys.sop_instance_uid] = sent
        return sent


def deidentify_files(
    files: Sequence[DicomFile],
    anonymizer: Anonymizer,
    variables: Mapping[str, str],
    *,
    head_cache_bytes: int = HEAD_CACHE_BYTES,
) -> Deidentified:
    """Apply ``anonymizer`` to every file in memory (nothing is written) and describe what will be sent.

    One ``DicomFile`` per rewritten instance, whose bytes ``read_exactly`` makes again while sending
    (from the rewritten headers kept, up to ``head_cache_bytes``; then by the script again). Files
    the script cannot be applied to, or whose rewritten instance would lose a UID XNAT needs or
    share its SOP Instance UID with another, are refused with the reason.

    Args:
        files: The scanned instances (none de-identified yet).
        anonymizer: The rules to apply.
        variables: The script's variables (``xnat_variables``).
        head_cache_bytes: How many bytes of rewritten headers to keep for the send.

    Returns:
        The rewritten instances and the files refused, each with the reason.
    """
    dry_run = _DryRun(anonymizer, variables, head_cache_bytes)
    result = Deidentified()
    for original in files:
        done = dry_run.rewrite(original)
        if isinstance(done, SkippedFile):
            result.refused.append(done)
        else:
            result.files.append(done)
    return result


@dataclass(frozen=True, slots=True)
class PendingRewrite(Rewrite):
    """A file of a streamed session that is not rewritten yet (``StreamedDeidentification``).

    Its bytes cannot be sent, nor its record journaled: the session's ``rewrite`` makes the
    ``Rewrite`` that can, just before the file's request.
    """

    session: StreamedDeidentification | None = None

    @property
    def digest(self) -> str:
        """Never: what is journaled is the rewritten file's record."""
        raise RuntimeError("a file of a streamed de-identification is journaled before it was rewritten")

    def check_ready(self) -> None:
        """Refuse: neither the original nor anything else is sent in place of the rewritten file."""
        raise RuntimeError("a file of a streamed de-identification is sent before it was rewritten")

    def apply(self, original: bytes) -> bytes:
        """Never (``check_ready``)."""
        self.check_ready()
        return original  # unreachable


_STREAM_STEP = 32  # files rewritten per hold of the session's lock: the batch waiting next gets a turn


class StreamedDeidentification:
    """One session's dry run, made batch by batch just before each batch's request (DICOM-zip).

    For a script whose rewritten StudyInstanceUID provably depends on the original one and the
    variables alone (``anon.Anonymizer.study_uid_follows_original``): the session's files share one
    original study, so they share one rewritten study, which the first file shows — the destination
    is checked with it before anything is sent, as after a whole dry run. The other files are then
    rewritten while earlier batches stream and XNAT imports them, instead of all before the first
    request.

    Every guarantee of the whole dry run holds: files are rewritten in the session's order whichever
    batch asks first (so the same files are refused, and the same SOP Instance UID wins, as in a
    dry run of the whole session); a batch's files are all rewritten before its request (its size,
    its journal record); and each file's rewritten StudyInstanceUID is compared with the session's
    before it may be sent — a difference (none, when the analysis is right) stops the upload with
    that file unsent, so two studies never meet in one session.

    Args:
        originals: The session's scanned files, in the plan's order.
        anonymizer: The rules to apply.
        variables: The script's variables (``xnat_variables``).
        head_cache_bytes: How many bytes of rewritten headers to keep for the send.
    """

    def __init__(
        self,
        originals: Sequence[DicomFile],
        anonymizer: Anonymizer,
        variables: Mapping[str, str],
        *,
        head_cache_bytes: int = HEAD_CACHE_BYTES,
    ) -> None:
        self._originals = list(originals)
        self._position = {f.path: i for i, f in enumerate(self._originals)}
        self._done: list[DicomFile | SkippedFile] = []  # the first len(_done) files, rewritten or refused
        self._dry_run = _DryRun(anonymizer, variables, head_cache_bytes)
        # One thread rewrites at a time (``_busy``), a chunk of files per turn, outside the lock; the
        # others wait for the chunk and send as soon as their own files are done — not after the
        # files of every batch that asked before them.
        self._changed = threading.Condition()
        self._busy = False
        self.study_uid: str | None = None

    def start(self) -> list[DicomFile]:
        """Rewrite files in order until one is accepted: its study is the session's.

        Returns:
            The session's files as the plan carries them — each original with the session's
            rewritten StudyInstanceUID and a ``PendingRewrite`` — or none when every file was refused.
        """
        while self.study_uid is None and len(self._done) < len(self._originals):
            self._rewrite_through(len(self._done))
        if self.study_uid is None:
            return []
        pending = PendingRewrite(self._dry_run.anonymizer, self._dry_run.frozen_variables, 0, session=self)
        return [dataclasses.replace(f, study_uid=self.study_uid, rewrite=pending) for f in self._originals]

    def _rewrite_through(self, last: int) -> None:
        """Rewrite the session's files in order until file ``last`` is done, by this thread or another."""
        while True:
            with self._changed:
                while self._busy and len(self._done) <= last:
                    self._changed.wait(1.0)  # the rewriting thread notifies after each chunk, even on error
                if len(self._done) > last:
                    return
                self._busy = True
                first = len(self._done)
            chunk: list[DicomFile | SkippedFile] = []
            try:
                for original in self._originals[first : min(first + _STREAM_STEP, last + 1)]:
                    chunk.append(self._rewrite_one(original))
            finally:
                with self._changed:
                    self._done.extend(chunk)
                    self._busy = False
                    self._changed.notify_all()

    def _rewrite_one(self, original: DicomFile) -> DicomFile | SkippedFile:
        """The next file in order rewritten (by the one thread rewriting), its study checked."""
        done = self._dry_run.rewrite(original)
        if not isinstance(done, SkippedFile):
            if self.study_uid is None:
                self.study_uid = done.study_uid
            elif done.study_uid != self.study_uid:
                # the file stays unrewritten: every later ask stops here again, nothing of it is sent
                del self._dry_run.by_sop[done.sop_instance_uid]
                raise InputError(
                    f"The de-identification script gave {original.relpath} StudyInstanceUID {done.study_uid}, "
                    f"not the session's {self.study_uid}: the upload stopped before sending it",
                    hint="Check the script's StudyInstanceUID rule; the files sent before it are one study",
                )
        return done

    def rewrite(self, batch: Sequence[DicomFile]) -> list[DicomFile]:
        """The batch's files rewritten, in the batch's order, those refused left out.

        Files are rewritten in the session's order (earlier batches' too, when this batch asks
        first), ``_STREAM_STEP`` at a time by one thread.

        Returns:
            The rewritten files to send.
        """
        if not batch:
            return []
        positions = [self._position[f.path] for f in batch]
        self._rewrite_through(max(positions))
        return [done for i in positions if not isinstance(done := self._done[i], SkippedFile)]

    def files(self) -> list[DicomFile]:
        """Every file of the session as sent (the rest rewritten now), in the plan's order."""
        return self.rewrite(self._originals)

    @property
    def refused(self) -> list[SkippedFile]:
        """The files refused so far, with the reason."""
        with self._changed:
            return [done for done in self._done if isinstance(done, SkippedFile)]


def streamed_session(files: Sequence[DicomFile]) -> StreamedDeidentification | None:
    """The streamed de-identification a session's planned files belong to, or None (sent as planned)."""
    rewrite = files[0].rewrite if files else None
    return rewrite.session if isinstance(rewrite, PendingRewrite) else None


def as_sent(files: list[DicomFile]) -> list[DicomFile]:
    """A session's files as sent: a streamed session's rewritten files, else ``files`` themselves."""
    session = streamed_session(files)
    return files if session is None else session.files()


def streamed_refusals(plan: Iterable[tuple[UploadTarget, list[DicomFile]]]) -> list[SkippedFile]:
    """The files the streamed sessions of ``plan`` refused (those a whole dry run would have), once sent."""
    return [skipped for _, files in plan if (session := streamed_session(files)) for skipped in session.refused]


def deidentify_plan(
    plan: Sequence[tuple[UploadTarget, list[DicomFile]]], anonymizer: Anonymizer, *, streamed: bool = False
) -> tuple[list[tuple[UploadTarget, list[DicomFile]]], list[SkippedFile]]:
    """``deidentify_files`` for each planned session, with that session's XNAT variables.

    A study the script splits into several StudyInstanceUIDs stops the upload (one session, one
    study); a session left with no file to send is dropped (its files are in the refused list).

    With ``streamed`` (DICOM-zip batches sent by ``session.upload_batches``) and a script whose
    rewritten StudyInstanceUID provably follows the original one, each session is a
    ``StreamedDeidentification``: its first file is rewritten here, the others batch by batch as
    they are sent; the files it refuses are then in ``streamed_refusals(plan)`` after the upload.

    Args:
        plan: The planned sessions and their files (``plan_sessions``).
        anonymizer: The rules to apply.
        streamed: Let a session be rewritten as it is sent, where the script allows it.

    Returns:
        The plan with each session's files de-identified (or pending, streamed), and the files refused.
    """
    planned: list[tuple[UploadTarget, list[DicomFile]]] = []
    refused: list[SkippedFile] = []
    streams = streamed and bool(getattr(anonymizer, "study_uid_follows_original", False))
    for target, files in plan:
        variables = xnat_variables(target)
        require_variables(anonymizer, variables, "a REST upload")
        if streams:
            session = StreamedDeidentification(files, anonymizer, variables)
            pending = session.start()
            if pending:
                planned.append((target, pending))
            else:
                refused += session.refused
            continue
        done = deidentify_files(files, anonymizer, variables)
        refused += done.refused
        studies = sorted({f.study_uid for f in done.files})
        if len(studies) > 1:
            raise InputError(
                f"The de-identification script turns the study of {target.project}/{target.session} into "
                f"{len(studies)} StudyInstanceUIDs ({', '.join(studies[:3])}): nothing was sent",
                hint="Check the script's StudyInstanceUID rule: it must map one study to one UID "
                "(hashUID of the original, not a value that differs per file)",
            )
        if done.files:
            planned.append((target, done.files))
    return planned, refused


def _compiled(
    script: str | None = None, source: str = "<script>", profile: str | None = None, url_access: UrlAccess | None = None
) -> Anonymizer:
    """``anon.anonymizer_for`` (the one way choices become an anonymizer) with its errors as ``InputError``.

    A script error names file, line and column, so nothing is sent with a broken script (the CLI
    exits 2); ``profile`` is ``basic[,option...]`` (the CLI's ``--anon-profile``); ``url_access``:
    an ``anon.UrlAccess``, the URLs a script's ``getURL`` may fetch.

    Returns:
        The compiled anonymizer.
    """
    from xnat_flows.anon import ScriptError, anonymizer_for

    try:
        if profile is not None:
            name, *options = [part.strip() for part in profile.split(",")]
            return anonymizer_for(profile=name, options=options)
        return anonymizer_for(script=script, source=source, url_access=url_access)
    except ScriptError as exc:
        raise InputError(
            f"{exc.source}:{exc.line}:{exc.column}: {exc.message}",
            hint="Fix the script (`xnat-flows anon check` tries it on your files); nothing was sent",
            reason=SCRIPT_ERROR,
        ) from None
    except ValueError as exc:
        raise InputError(
            f"De-identification profile {profile!r}: {exc}", hint="e.g. basic or basic,retain-uids"
        ) from None


def build_anonymizer(
    *,
    server_scripts: Sequence[tuple[str, str]] = (),
    script: tuple[str, str] | None = None,
    profile: str | None = None,
    allowed_urls: Sequence[str] = (),
) -> Anonymizer | None:
    """The de-identification an upload applies, in order.

    XNAT's own scripts (``(name, text)``: the site's, then the project's), the user's script
    (``(source, text)``), then the Basic Profile (``basic[,option...]``).

    Every script is compiled here, before anything is read or sent. ``allowed_urls``: URL prefixes a script's ``getURL`` may fetch (none:
    a script calling it is refused).

    Args:
        server_scripts: XNAT's enabled scripts as ``(name, text)``, site first.
        script: The user's script as ``(source, text)``, or None.
        profile: ``basic[,option...]``, or None.
        allowed_urls: URL prefixes a script's ``getURL`` may fetch.

    Returns:
        The chained anonymizer, or None when none is asked for.
    """
    url_access = None
    if allowed_urls:
        from xnat_flows.anon import UrlAccess

        try:
            url_access = UrlAccess(tuple(allowed_urls))
        except ValueError as exc:
            raise InputError(f"--anon-allow-url: {exc}", hint="e.g. --anon-allow-url https://ids.site.local/") from None
    steps = [_compiled(text, name, url_access=url_access) for name, text in server_scripts]
    if script is not None:
        steps.append(_compiled(script[1], script[0], url_access=url_access))
    if profile is not None:
        steps.append(_compiled(profile=profile))
    return chain(steps)


def require_variables(anonymizer: Anonymizer, variables: Mapping[str, str], where: str) -> None:
    """Stop before sending when the script reads a variable this upload cannot give it.

    Args:
        anonymizer: The compiled rules.
        variables: The variables this upload gives (``xnat_variables``, or the C-STORE routing's).
        where: The upload, in words for the error (e.g. ``a REST upload``).
    """
    needed: frozenset[str] = getattr(anonymizer, "required_variables", frozenset())
    missing = sorted(name for name in needed if name not in variables)
    if missing:
        raise InputError(
            f"The de-identification script needs the variable(s) {', '.join(missing)}, which {where} does not give"
            f" (it gives: {', '.join(sorted(variables)) or 'none'}); nothing was sent",
            hint="For C-STORE give --project, --subject and --session; or set the variable in the script",
        )
