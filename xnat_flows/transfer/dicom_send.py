"""Send DICOM instances to a C-STORE receiver (XNAT's DICOM SCP, dcmtk, a PACS) — no Prefect here.

Design (measured facts in /work/shared/spec/field-notes.md):

* ``workers`` long-lived associations in threads. With the lean SCU below a message costs little
  Python CPU and the sockets release the GIL, so threads scale as well as processes did with
  pynetdicom, without the ~0.5 s spawn per process. ``processes=True`` is kept for machines
  with spare cores where a routing override (a pydicom decode + encode per instance) makes the
  sender CPU-bound; on the 2-core test machine it did not help. Measurements: docs/cstore.md.
* TCP_NODELAY on every association socket (Nagle otherwise adds ~40 ms per instance).
* The sending association is ``dicom_association.StorageAssociation``, a lean blocking SCU, not
  pynetdicom's: pynetdicom costs ~4 ms CPU per message and sometimes stalls mid-message under
  CPU contention. A file's dataset goes out exactly as encoded on disk, never decoded. Only a
  routing override parses a file, changes PatientComments on an in-memory copy and sends that
  copy; the user's files are never written.
* Presentation contexts come from the files (see ``dicom_contexts``): a file is only sent in its
  own transfer syntax, and an instance whose context the peer refused is recorded as skipped.
* A failure status, a dropped association or a stalled one (no response within
  ``dimse_timeout``) sends the instance again on a fresh association, up to ``max_attempts``.
  An instance counts as sent only when the peer answered success or warning.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import queue
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xnat_flows.client.errors import InputError, UnreachableError, XnatError
from xnat_flows.transfer.dicom_association import (
    VERIFICATION_SOP_CLASS,
    AssociationRejected,
    StorageAssociation,
    UpperLayerError,
)
from xnat_flows.transfer.part10 import dataset_offset, little_endian_vr, read_file_meta
from xnat_flows.transfer.dicom_contexts import SyntaxPair, plan_association_groups
from xnat_flows.transfer.journal import UploadJournal, content_digest
from xnat_flows.transfer.scan import DicomFile, ScanResult, SkippedFile, read_header, scan_directory

log = logging.getLogger(__name__)

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
AE_TITLE_MAX_LENGTH = 16
_ROUTING_VALUE = re.compile(r"^[A-Za-z0-9_-]+$")  # what XNAT's "Key:value" extractor can read (§7.3)
_REJECT_REASON_CALLED_AET = 7  # A-ASSOCIATE-RJ from the service user: called AE title not recognised
_REJECT_REASON_CALLING_AET = 3


# -- errors --------------------------------------------------------------------------------------
class DicomNetworkError(XnatError):
    """The DICOM peer could not be used; ``hint`` says what to check."""

    default_hint = "Check the receiver's host, port and AE title (XNAT: Administer > Site Administration > DICOM SCP)"


class PeerUnreachableError(DicomNetworkError, UnreachableError):
    """No TCP connection: wrong host or port, receiver down, or a firewall."""

    retryable = True


class AssociationRejectedError(DicomNetworkError):
    """The peer answered A-ASSOCIATE-RJ (or aborted the request)."""


class CalledAETitleRejectedError(AssociationRejectedError):
    """The peer does not answer to the called AE title we used."""


class NoAcceptedContextError(DicomNetworkError):
    """The association was accepted but none of the proposed SOP class/transfer syntax pairs was."""


# -- inputs --------------------------------------------------------------------------------------
def validate_ae_title(title: str, role: str) -> str:
    """The AE title without insignificant spaces, or an ``InputError`` naming what is wrong."""
    stripped = title.strip(" ") if isinstance(title, str) else ""
    hint = "AE titles are 1-16 printable ASCII characters without backslashes"
    if not stripped:
        raise InputError(f"The {role} AE title is empty or only spaces", hint=hint)
    if len(stripped) > AE_TITLE_MAX_LENGTH:
        raise InputError(f"The {role} AE title {stripped!r} is {len(stripped)} characters long; the maximum is 16",
                         hint=hint)
    if any(ch == "\\" or not 32 <= ord(ch) < 127 for ch in stripped):
        raise InputError(f"The {role} AE title {stripped!r} contains a backslash or a non-printable character",
                         hint=hint)
    return stripped


@dataclass(frozen=True)
class RoutingOverride:
    """Written into PatientComments as ``Project:X Subject:Y Session:Z``: XNAT's default routing
    reads PatientComments first (xnat-api.md §7.3), so it decides where the data lands."""

    project: str
    subject: str | None = None
    session: str | None = None

    def __post_init__(self) -> None:
        for key, value in (("project", self.project), ("subject", self.subject), ("session", self.session)):
            if value is not None and not _ROUTING_VALUE.match(value):
                raise InputError(f"Routing {key} {value!r} has characters XNAT's routing cannot read",
                                 hint="Use only letters, digits, '_' and '-' (XNAT IDs and labels)")

    def comment(self) -> str:
        parts = [("Project", self.project), ("Subject", self.subject), ("Session", self.session)]
        return " ".join(f"{key}:{value}" for key, value in parts if value)


# -- results -------------------------------------------------------------------------------------
def is_stored(status: int) -> bool:
    """Success or Warning (PS3.4 Annex B: the instance was stored); checked per instance, so the
    common 0x0000 is answered without importing pynetdicom."""
    if status == 0x0000:
        return True
    from pynetdicom.status import code_to_category

    return code_to_category(status) in ("Success", "Warning")


def status_meaning(status: int | None) -> str:
    """Category and text of a C-STORE status (PS3.4 Annex B), or why there was none."""
    if status is None:
        return "no response: association aborted, dropped, or no answer within the DIMSE timeout"
    from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, code_to_category

    category, text = STORAGE_SERVICE_CLASS_STATUS.get(status, (code_to_category(status), "unknown status"))
    return f"{category}: {text}" if text else category


@dataclass(frozen=True)
class InstanceOutcome:
    path: Path
    sop_instance_uid: str
    size: int
    status: int | None  # the DIMSE status of the last attempt; None when no response came
    attempts: int
    reason: str = ""  # for skipped/failed: what went wrong, in words
    retryable: bool = False  # failed for a reason that may heal (receiver down, busy, dropped association)

    @property
    def status_hex(self) -> str:
        return "none" if self.status is None else f"0x{self.status:04X}"

    @property
    def meaning(self) -> str:
        return status_meaning(self.status)


@dataclass(frozen=True)
class AssociationSummary:
    worker: int
    group: int
    sent: int
    failed: int
    seconds: float
    ended: str  # "released", "aborted (no response)", "released after failure status", "refused: ..."


@dataclass
class SendResult:
    sent: list[InstanceOutcome] = field(default_factory=list)
    failed: list[InstanceOutcome] = field(default_factory=list)
    skipped: list[InstanceOutcome] = field(default_factory=list)
    associations: list[AssociationSummary] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 1
    mode: str = "in-process"

    @property
    def bytes_sent(self) -> int:
        return sum(o.size for o in self.sent)

    @property
    def instances_per_second(self) -> float:
        return len(self.sent) / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped

    @property
    def retryable_failures(self) -> list[InstanceOutcome]:
        """Failed instances a later attempt may deliver (the receiver was down, busy or dropped
        the association); the others fail the same way until the file or the receiver's
        configuration changes."""
        return [o for o in self.failed if o.retryable]

    @property
    def unsent_paths(self) -> list[Path]:
        """What a re-run has to send: failed and skipped instances."""
        return [o.path for o in self.failed + self.skipped]

    def summary(self) -> str:
        return (f"{len(self.sent)} sent, {len(self.failed)} failed, {len(self.skipped)} skipped, "
                f"{self.bytes_sent / 1e6:.1f} MB in {self.seconds:.1f} s ({self.instances_per_second:.0f} instances/s, "
                f"{self.workers} association(s), {self.mode})")


Progress = Callable[[int, int], None]  # (instances finished, total)


# -- association plumbing (runs in worker processes too: keep it module-level and picklable) -----
@dataclass(frozen=True)
class _Link:
    host: str
    port: int
    called_aet: str
    calling_aet: str
    acse_timeout: float
    dimse_timeout: float  # also bounds a send the peer stops reading
    max_pdu: int


@dataclass(frozen=True)
class _Item:
    index: int
    path: str
    sop_class: str
    transfer_syntax: str
    sop_instance_uid: str
    size: int
    mtime_ns: int = 0  # as scanned; 0: not known, only the size is checked

    @property
    def pair(self) -> SyntaxPair:
        return self.sop_class, self.transfer_syntax


def _explain_connect_failure(link: _Link, exc: OSError) -> PeerUnreachableError:
    where = f"{link.host}:{link.port}"
    if isinstance(exc, ConnectionRefusedError):
        return PeerUnreachableError(
            f"Connection refused at {where}: nothing is listening on that port",
            hint="Check the port (XNAT's receiver is usually 8104, the DICOM standard port is 104) "
                 "and that the receiver is running")
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return PeerUnreachableError(f"Timed out connecting to {where}",
                                    hint="Check the host name and port, and that no firewall drops DICOM traffic")
    if isinstance(exc, socket.gaierror):
        return PeerUnreachableError(f"Cannot resolve host {link.host!r}: {exc.strerror}", hint="Check the host name")
    return PeerUnreachableError(f"Cannot connect to {where}: {exc.strerror or exc}",
                                hint="Check the host, the port and the network")


def _open_association(link: _Link, pairs: Sequence[SyntaxPair]) -> StorageAssociation:
    """An established association (TCP_NODELAY set) that accepted at least one pair."""
    where = f"{link.host}:{link.port}"
    try:
        assoc = StorageAssociation.open(
            link.host, link.port, called_aet=link.called_aet, calling_aet=link.calling_aet, pairs=list(pairs),
            max_pdu=link.max_pdu, connect_timeout=link.acse_timeout, acse_timeout=link.acse_timeout,
            dimse_timeout=link.dimse_timeout)
    except AssociationRejected as exc:
        rejection = exc.rejection
        if rejection.source == 1 and rejection.reason == _REJECT_REASON_CALLED_AET:
            raise CalledAETitleRejectedError(
                f"{where} rejected the association: it does not answer to the called AE title {link.called_aet!r}",
                hint="Use the receiver's own AE title (XNAT lists its receivers at /xapi/dicomscp; the default is XNAT)"
            ) from None
        if rejection.source == 1 and rejection.reason == _REJECT_REASON_CALLING_AET:
            raise AssociationRejectedError(
                f"{where} rejected the association: our calling AE title {link.calling_aet!r} is not allowed",
                hint="Ask the receiver's administrator to allow this AE title, or use an allowed one") from None
        raise AssociationRejectedError(f"{where} rejected the association ({rejection.describe()})") from None
    except (TimeoutError, socket.timeout):
        raise DicomNetworkError(
            f"{where} did not answer the association request within {link.acse_timeout:g} s",
            hint="Is this the receiver's DICOM port? XNAT's is often 8104; a web port such as 8080 does not speak "
                 "DICOM (XNAT: Administer > Site Administration > DICOM SCP lists its receivers)") from None
    except OSError as exc:
        raise _explain_connect_failure(link, exc) from None
    except UpperLayerError as exc:
        raise AssociationRejectedError(f"{where}: {exc}",
                                       hint="The receiver may be refusing connections or overloaded; check its log"
                                       ) from None
    if not assoc.accepted:
        assoc.release()
        offered = ", ".join(f"{_uid_name(s)} in {_uid_name(t)}" for s, t in pairs)
        raise NoAcceptedContextError(
            f"{where} accepted the association but none of the presentation contexts: {offered}",
            hint="The receiver does not store these SOP classes or transfer syntaxes; check its configuration")
    return assoc


def _uid_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name != uid else uid


@dataclass(frozen=True)
class EchoResult:
    host: str
    port: int
    called_aet: str
    seconds: float


def echo(host: str, port: int, called_aet: str = "XNAT", calling_aet: str = "XNATFLOWS",
         timeout: float = 10.0) -> EchoResult:
    """Pre-flight C-ECHO; raises a ``DicomNetworkError`` subclass that says what to fix."""
    link = _Link(host, int(port), validate_ae_title(called_aet, "called"), validate_ae_title(calling_aet, "calling"),
                 acse_timeout=timeout, dimse_timeout=timeout, max_pdu=16384)
    started = time.perf_counter()
    try:
        assoc = _open_association(link, [(VERIFICATION_SOP_CLASS, IMPLICIT_VR_LITTLE_ENDIAN)])
    except NoAcceptedContextError:
        raise NoAcceptedContextError(f"{host}:{port} does not support C-ECHO (Verification SOP class)",
                                     hint="Skip the pre-flight check for this receiver") from None
    try:
        status = assoc.echo()
    except UpperLayerError as exc:
        raise DicomNetworkError(f"{host}:{port} did not answer the C-ECHO: {exc}") from None
    finally:
        assoc.release()
    if status != 0x0000:
        raise DicomNetworkError(f"{host}:{port} answered the C-ECHO with status 0x{status:04X}")
    return EchoResult(host, int(port), link.called_aet, time.perf_counter() - started)


# -- the worker ------------------------------------------------------------------------------------
# Messages from a worker: ("outcome", kind, item_index, status, attempts, reason, retryable),
# ("association", AssociationSummary), ("done", worker_id).
_SENT, _FAILED, _SKIPPED = "sent", "failed", "skipped"


def _dataset_bytes(item: _Item, routing_comment: str | None) -> memoryview:
    """The dataset to send: the file's own encoded bytes, or an edited in-memory copy.

    Raises ``ValueError`` when the file is not the one scanned (size or modification time
    changed, also while it was being read): an export still being written must not be sent
    half-done, and what the scan listed is what the result reports.
    """
    with open(item.path, "rb") as handle:
        before = os.fstat(handle.fileno())
        data = handle.read()
        after = os.fstat(handle.fileno())
    if len(data) != item.size or after.st_mtime_ns != before.st_mtime_ns or (
            item.mtime_ns and before.st_mtime_ns != item.mtime_ns):
        raise ValueError(f"it changed since the scan ({item.size} bytes then, {len(data)} now); "
                         "wait until the export has finished writing, then re-run")
    if routing_comment is None:
        return memoryview(data)[dataset_offset(data):]  # sent as encoded, never decoded
    return memoryview(_with_patient_comments(data, routing_comment))


def _with_patient_comments(part10: bytes, comment: str) -> bytes:
    """The file's dataset, re-encoded in its own transfer syntax with PatientComments set.

    Little-endian, non-deflated datasets (nearly all) are read and written as a bare dataset:
    pydicom keeps untouched elements as raw bytes, so only PatientComments changes, at twice
    the speed of a whole-file round trip. Deflated and big-endian data take that round trip.
    """
    import io

    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset
    from pydicom.filewriter import write_dataset

    meta = read_file_meta(part10)
    encoding = little_endian_vr(meta.transfer_syntax)
    if encoding is not None:
        implicit = encoding == "implicit"
        dataset = read_dataset(io.BytesIO(memoryview(part10)[meta.dataset_offset:]), is_implicit_VR=implicit,
                               is_little_endian=True)
        dataset.PatientComments = comment
        buffer = DicomBytesIO()
        buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
        write_dataset(buffer, dataset)
        return buffer.getvalue()
    dataset = pydicom.dcmread(io.BytesIO(part10))
    dataset.PatientComments = comment
    whole = io.BytesIO()
    dataset.save_as(whole, enforce_file_format=True)  # same transfer syntax as the file
    encoded = whole.getvalue()
    return encoded[dataset_offset(encoded):]


def _read_ahead(item: _Item, ready: dict[int, memoryview]) -> None:
    """Put ``item``'s dataset in ``ready``; a file that cannot be read is left for the normal
    path, which reports it."""
    try:
        ready[item.index] = _dataset_bytes(item, None)
    except (OSError, ValueError):
        pass


_RECEIVER_BUSY_STATUSES = (0xA700, 0xA7FF)  # Refused: Out of Resources (PS3.4 Annex B)


def _heals_with_time(exc: DicomNetworkError) -> bool:
    """An association that could not be opened: worth another try later unless the receiver
    refused who we are or what we offer."""
    return not isinstance(exc, (AssociationRejectedError, NoAcceptedContextError))


def _why_unsendable(item: _Item) -> str:
    """Why the receiver cannot take this file (truncated, corrupt header...), or "" if it looks fine.

    The file-meta scan does not read datasets; when a receiver refuses an instance or drops the
    association over it, the full header check tells a corrupt file from a receiver problem.
    """
    path = Path(item.path)
    try:
        outcome = read_header(path, path.parent, path.stat())
    except OSError as exc:
        return f"cannot read the file: {exc.strerror or exc}"
    return f"{outcome.reason} (found after the receiver refused it)" if isinstance(outcome, SkippedFile) else ""


def _worker(worker_id: int, link: _Link, groups: dict[int, tuple[SyntaxPair, ...]], tasks: Any, results: Any,
            max_attempts: int, routing_comment: str | None) -> None:
    """Take chunks ``(group, [items])`` from ``tasks`` until ``None``; report every instance."""
    try:
        _send_chunks(worker_id, link, groups, tasks, results, max_attempts, routing_comment)
    except Exception:  # a bug must not hang the caller: unreported instances are recorded as failed
        log.exception("C-STORE worker %d stopped", worker_id)
    finally:
        results.put(("done", worker_id))


def _send_chunks(worker_id: int, link: _Link, groups: dict[int, tuple[SyntaxPair, ...]], tasks: Any,
                 results: Any, max_attempts: int, routing_comment: str | None) -> None:
    assoc: StorageAssociation | None = None
    assoc_group = -1
    failures_in_a_row = 0  # association attempts that failed, across chunks
    counts = {"sent": 0, "failed": 0, "opened": 0.0}

    def close(ended: str, abort: bool = False) -> None:
        nonlocal assoc
        if assoc is None:
            return
        if abort:
            assoc.abort()
        else:
            assoc.release()
        results.put(("association", AssociationSummary(worker_id, assoc_group, counts["sent"], counts["failed"],
                                                       time.perf_counter() - counts["opened"], ended)))
        assoc = None

    while True:
        task = tasks.get()
        if task is None:
            break
        group, items = task
        if group != assoc_group:
            close("released")
        assoc_group = group
        pending = deque(items)
        ready: dict[int, memoryview] = {}  # at most one file, read ahead
        attempts: dict[int, int] = {}
        chunk_open_failures = 0
        while pending:
            if assoc is None:
                try:
                    assoc = _open_association(link, groups[group])
                except DicomNetworkError as exc:
                    chunk_open_failures += 1
                    failures_in_a_row += 1
                    # once the peer has failed max_attempts times in a row, later chunks get one try each
                    if chunk_open_failures >= max_attempts or failures_in_a_row > max_attempts:
                        for item in pending:
                            results.put(("outcome", _FAILED, item.index, None, attempts.get(item.index, 0), str(exc),
                                         _heals_with_time(exc)))
                        pending.clear()
                    else:
                        time.sleep(0.5 * chunk_open_failures)
                    continue
                failures_in_a_row = 0
                counts.update(sent=0, failed=0, opened=time.perf_counter())
            item = pending.popleft()
            if item.pair not in assoc.accepted:
                ready.pop(item.index, None)
                results.put(("outcome", _SKIPPED, item.index, None, 0,
                             f"the peer did not accept {_uid_name(item.sop_class)} in {_uid_name(item.transfer_syntax)}",
                             False))
                continue
            try:
                dataset = ready.pop(item.index) if item.index in ready else _dataset_bytes(item, routing_comment)
            except (OSError, ValueError) as exc:  # vanished, unreadable or no longer DICOM: retrying will not help
                results.put(("outcome", _FAILED, item.index, None, 0, f"cannot read the file: {exc}", False))
                continue
            attempts[item.index] = attempts.get(item.index, 0) + 1
            status: int | None = None
            error = ""
            try:
                message_id = assoc.send_store(item.sop_class, item.transfer_syntax, item.sop_instance_uid, dataset)
                if pending and routing_comment is None:
                    # read the next file while the receiver stores this one (one request in flight)
                    _read_ahead(pending[0], ready)
                status = assoc.await_status(message_id)
            except UpperLayerError as exc:  # NoResponse: stalled, aborted or dropped
                error = str(exc)
            if status is not None and is_stored(status):
                counts["sent"] += 1
                results.put(("outcome", _SENT, item.index, status, attempts[item.index], "", False))
                continue
            counts["failed"] += 1
            if status is None:
                close(f"aborted: {error}", abort=True)  # a stalled association is not reused
            else:
                close(f"released after status 0x{status:04X}")  # retry on a fresh association
            broken = _why_unsendable(item)
            if broken:  # a corrupt file fails the same way every time: say why, do not retry
                results.put(("outcome", _FAILED, item.index, status, attempts[item.index], broken, False))
                continue
            if attempts[item.index] < max_attempts:
                pending.appendleft(item)
            else:
                reason = f"{status_meaning(status)} ({error})" if error else status_meaning(status)
                results.put(("outcome", _FAILED, item.index, status, attempts[item.index], reason,
                             status is None or _RECEIVER_BUSY_STATUSES[0] <= status <= _RECEIVER_BUSY_STATUSES[1]))
    close("released")


# -- the public entry point ---------------------------------------------------------------------
def _as_dicom_files(files: ScanResult | Iterable[DicomFile] | str | os.PathLike[str]) -> list[DicomFile]:
    if isinstance(files, ScanResult):
        return list(files.files)
    if isinstance(files, (str, os.PathLike)):
        return list(scan_directory(files, headers="file-meta").files)
    return list(files)


def send_dicom(
    files: ScanResult | Iterable[DicomFile] | str | os.PathLike[str],
    *,
    host: str,
    port: int,
    called_aet: str = "XNAT",
    calling_aet: str = "XNATFLOWS",
    workers: int = 4,
    processes: bool = False,
    dimse_timeout: float = 30.0,
    acse_timeout: float = 30.0,
    max_pdu: int = 131072,
    max_attempts: int = 3,
    max_contexts: int = 128,
    chunk_size: int = 64,
    preflight: bool = True,
    progress: Progress | None = None,
    routing: RoutingOverride | None = None,
) -> SendResult:
    """C-STORE every instance; never raises for a single instance, always records its outcome.

    ``files``: a ``ScanResult``, ``DicomFile`` items from ``scan_directory``, or a directory
    (scanned here). Raises ``InputError`` for bad AE titles and, with ``preflight``, a
    ``DicomNetworkError`` subclass when the receiver cannot be reached or refuses us.
    ``processes=True`` runs each association in its own (spawned) process instead of a thread.
    """
    link = _Link(host, int(port), validate_ae_title(called_aet, "called"), validate_ae_title(calling_aet, "calling"),
                 acse_timeout=acse_timeout, dimse_timeout=dimse_timeout, max_pdu=max_pdu)
    if workers < 1 or max_attempts < 1 or chunk_size < 1:
        raise InputError("workers, max_attempts and chunk_size must be at least 1")
    dicom_files = _as_dicom_files(files)
    items = [_Item(i, str(f.path), f.sop_class_uid, f.transfer_syntax, f.sop_instance_uid, f.size, f.mtime_ns)
             for i, f in enumerate(dicom_files)]
    use_processes = processes and workers > 1
    result = SendResult(workers=workers, mode="processes" if use_processes else
                        ("threads" if workers > 1 else "in-process"))
    if not items:
        return result
    if preflight:
        echo(link.host, link.port, link.called_aet, link.calling_aet, timeout=acse_timeout)

    groups = plan_association_groups((item.pair for item in items), max_contexts)
    group_of = {pair: group.index for group in groups for pair in group.pairs}
    chunks = _chunks(items, group_of, workers, chunk_size)
    group_pairs = {group.index: group.pairs for group in groups}
    worker_count = min(workers, len(chunks))
    outcomes: dict[int, InstanceOutcome] = {}
    kinds: dict[int, str] = {}
    started = time.perf_counter()
    routing_comment = routing.comment() if routing else None

    def record(message: tuple) -> None:
        if message[0] == "association":
            result.associations.append(message[1])
            return
        _, kind, index, status, attempts, reason, retryable = message
        item = items[index]
        outcomes[index] = InstanceOutcome(Path(item.path), item.sop_instance_uid, item.size, status, attempts, reason,
                                          retryable)
        kinds[index] = kind
        if progress is not None:
            progress(len(outcomes), len(items))

    args = (link, group_pairs, max_attempts, routing_comment)
    if use_processes and worker_count > 1:
        _run_in_processes(worker_count, chunks, args, record)
    else:
        _run_in_threads(worker_count, chunks, args, record)
    result.seconds = time.perf_counter() - started

    for index, item in enumerate(items):
        outcome = outcomes.get(index)
        if outcome is None:  # a worker died before reporting it: it may or may not have arrived
            outcome = InstanceOutcome(Path(item.path), item.sop_instance_uid, item.size, None, 0,
                                      "the sending worker ended before reporting this instance")
            kinds[index] = _FAILED
        {_SENT: result.sent, _FAILED: result.failed, _SKIPPED: result.skipped}[kinds[index]].append(outcome)
    log.info("C-STORE to %s:%s %s: %s", host, port, called_aet, result.summary())
    return result


def _chunks(items: list[_Item], group_of: dict[SyntaxPair, int], workers: int,
            chunk_size: int) -> list[tuple[int, list[_Item]]]:
    """Work units of one association group each; small enough to balance the workers."""
    by_group: dict[int, list[_Item]] = {}
    for item in items:
        by_group.setdefault(group_of[item.pair], []).append(item)
    chunks = []
    for group, members in sorted(by_group.items()):
        size = max(1, min(chunk_size, math.ceil(len(members) / workers)))
        chunks += [(group, members[start:start + size]) for start in range(0, len(members), size)]
    return chunks


def _drain(results: Any, workers_alive: Callable[[], bool], expected_done: int,
           record: Callable[[tuple], None]) -> None:
    done = 0
    while done < expected_done:
        try:
            message = results.get(timeout=0.5)
        except queue.Empty:
            if not workers_alive():
                # every worker has exited; collect what is still in flight, then stop
                try:
                    while True:
                        message = results.get(timeout=0.2)
                        if message[0] != "done":
                            record(message)
                except queue.Empty:
                    return
            continue
        if message[0] == "done":
            done += 1
        else:
            record(message)


def _run_in_threads(count: int, chunks: list, args: tuple, record: Callable[[tuple], None]) -> None:
    tasks: queue.Queue = queue.Queue()
    results: queue.Queue = queue.Queue()
    for chunk in chunks:
        tasks.put(chunk)
    for _ in range(count):
        tasks.put(None)
    link, group_pairs, max_attempts, routing_comment = args
    if count == 1:
        _worker(0, link, group_pairs, tasks, results, max_attempts, routing_comment)
        _drain(results, lambda: False, 1, record)
        return
    threads = [threading.Thread(target=_worker, name=f"cstore-{n}", daemon=True,
                                args=(n, link, group_pairs, tasks, results, max_attempts, routing_comment))
               for n in range(count)]
    for thread in threads:
        thread.start()
    _drain(results, lambda: any(t.is_alive() for t in threads), count, record)
    for thread in threads:
        thread.join()


def _run_in_processes(count: int, chunks: list, args: tuple, record: Callable[[tuple], None]) -> None:
    # "spawn": forking a process that runs other threads (Prefect, an emulator, a logging
    # handler) can copy a held lock into the child and hang it.
    context = multiprocessing.get_context("spawn")
    tasks = context.Queue()
    results = context.Queue()
    for chunk in chunks:
        tasks.put(chunk)
    for _ in range(count):
        tasks.put(None)
    link, group_pairs, max_attempts, routing_comment = args
    children = [context.Process(target=_worker, name=f"cstore-{n}", daemon=True,
                                args=(n, link, group_pairs, tasks, results, max_attempts, routing_comment))
                for n in range(count)]
    for child in children:
        child.start()
    try:
        _drain(results, lambda: any(c.is_alive() for c in children), count, record)
    finally:
        for child in children:
            child.join(timeout=10)
            if child.is_alive():
                child.terminate()
        tasks.close()
        results.close()


# -- resuming ----------------------------------------------------------------------------------------
def journal_key(host: str, port: int, called_aet: str, routing: RoutingOverride | None = None) -> str:
    """Where a send goes, for the upload journal: the receiver, and the routing if any (the same
    files routed elsewhere are a different delivery)."""
    return f"dicom://{called_aet}@{host}:{port}" + (f"#{routing.comment()}" if routing else "")


def send_dicom_resumable(
    files: Sequence[DicomFile], journal: UploadJournal, *, host: str, port: int, called_aet: str = "XNAT",
    routing: RoutingOverride | None = None, **options: Any,
) -> tuple[SendResult, int]:
    """``send_dicom`` that skips the instances an earlier run already delivered to the same
    receiver (as recorded in ``journal``) and records each one it delivers; forgets them once
    everything is stored. Returns the result and how many instances were skipped as delivered.
    """
    key = journal_key(host, port, called_aet, routing)
    digests = {f.path: content_digest([f]) for f in files}
    done = journal.done(key)
    pending = [f for f in files if digests[f.path] not in done]
    result = send_dicom(pending, host=host, port=port, called_aet=called_aet, routing=routing, **options)
    for outcome in result.sent:
        journal.record(key, digests[outcome.path])
    if result.ok:
        journal.clear(key)
    return result, len(files) - len(pending)
