"""One sending association's loop: take chunks of instances, send each, report each outcome.

A worker runs in a thread of the sender (``send``) and reports through ``WorkerEvents``:
``sending`` just before an instance goes out, ``outcome`` once its fate is known (sent, failed,
skipped), ``association`` when an association ends. An instance is reported sent only after
the receiver answered Success or Warning.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple, Protocol

from xnat_flows.transfer.cstore.association import StorageAssociation, UpperLayerError
from xnat_flows.transfer.cstore.connect import ReceiverLink, open_association, uid_name
from xnat_flows.transfer.cstore.contexts import SyntaxPair
from xnat_flows.transfer.cstore.dataset import dataset_to_send
from xnat_flows.transfer.cstore.errors import DicomNetworkError, heals_with_time
from xnat_flows.transfer.cstore.results import RECEIVER_BUSY_STATUSES, AssociationSummary, is_stored, status_meaning
from xnat_flows.transfer.scan import SkippedFile, read_header

if TYPE_CHECKING:
    from xnat_flows.transfer.deidentify import Rewrite

log = logging.getLogger(__name__)

OutcomeKind = Literal["sent", "failed", "skipped"]


@dataclass(frozen=True)
class SendItem:
    """One instance to send, as scanned; ``index`` is its position in the send."""

    index: int
    path: str
    sop_class: str
    transfer_syntax: str
    sop_instance_uid: str
    size: int
    mtime_ns: int = 0  # as scanned; 0: not known, only the size is checked
    rewrite: Rewrite | None = None  # de-identified as it is read (``transfer.deidentify``)

    @property
    def pair(self) -> SyntaxPair:
        """The (SOP class, transfer syntax) pair this instance needs a presentation context for."""
        return self.sop_class, self.transfer_syntax


class Chunk(NamedTuple):
    """Instances of one association group, sent on one association."""

    group: int
    items: list[SendItem]


class InstanceReport(NamedTuple):
    """What became of one instance."""

    kind: OutcomeKind
    item: SendItem
    status: int | None
    attempts: int
    reason: str = ""
    retryable: bool = False
    unanswered: int = 0  # attempts sent whole that got no answer: the receiver may hold a copy


class WorkerEvents(Protocol):
    """Called from the worker threads; implementations serialise what they share."""

    def sending(self, item: SendItem) -> None:
        """``item`` is about to go out on this worker's association."""
        ...

    def refused(self, item: SendItem) -> None:
        """The receiver answered this attempt with a failure status.

        It does not hold the instance (a retry may follow, or Ctrl-C may end the run before one).
        """
        ...

    def outcome(self, report: InstanceReport) -> None:
        """The final outcome of one instance, once its attempts are over."""
        ...

    def association(self, summary: AssociationSummary) -> None:
        """One association closed, with what it negotiated and carried."""
        ...


@dataclass(frozen=True)
class WorkerSetup:
    """What every worker of one send shares."""

    link: ReceiverLink
    groups: dict[int, tuple[SyntaxPair, ...]]  # association group -> the pairs it proposes
    max_attempts: int
    routing_comment: str | None
    stop: threading.Event  # set: finish the instance in flight, then release and return


def run_worker(worker_id: int, setup: WorkerSetup, chunks: queue.SimpleQueue[Chunk], events: WorkerEvents) -> None:
    """Send chunks from ``chunks`` until it is empty or ``setup.stop`` is set; report every instance it took.

    A bug ends this worker only: the sender records its unreported instances as failed.

    Args:
        worker_id: This worker's number, in its reports.
        setup: The receiver, the association groups, attempts, routing and the stop event.
        chunks: The work queue shared by the workers.
        events: Where each instance and association is reported (from this thread).
    """
    try:
        _Worker(worker_id, setup, events).run(chunks)
    except Exception:
        log.exception("C-STORE worker %d stopped", worker_id)


def _read_ahead(item: SendItem, ready: dict[int, memoryview]) -> None:
    """Put ``item``'s dataset in ``ready``; a file that cannot be read is left for the normal path, which reports it."""
    with contextlib.suppress(OSError, ValueError):
        ready[item.index] = dataset_to_send(item.path, item.size, item.mtime_ns, None, item.rewrite)


def _why_unsendable(item: SendItem) -> str:
    """Why the receiver cannot take this file (truncated, corrupt header...), or "" if it looks fine.

    The file-meta scan does not read datasets; when a receiver refuses an instance or drops the
    association over it, the full header check tells a corrupt file from a receiver problem.

    Returns:
        The reason, or "" when the file looks fine.
    """
    path = Path(item.path)
    try:
        outcome = read_header(path, path.parent, path.stat())
    except OSError as exc:
        return f"cannot read the file: {exc.strerror or exc}"
    return f"{outcome.reason} (found after the receiver refused it)" if isinstance(outcome, SkippedFile) else ""


class _Worker:
    def __init__(self, worker_id: int, setup: WorkerSetup, events: WorkerEvents) -> None:
        self.worker_id = worker_id
        self.setup = setup
        self.events = events
        self.assoc: StorageAssociation | None = None
        self.assoc_group = -1
        self.failures_in_a_row = 0  # association attempts that failed, across chunks
        self.sent = self.failed = 0
        self.opened = 0.0
        self.unanswered: dict[int, int] = {}  # item index -> attempts sent whole without an answer

    def close(self, ended: str, abort: bool = False) -> None:
        if self.assoc is None:
            return
        if abort:
            self.assoc.abort()
        else:
            self.assoc.release()
        self.events.association(
            AssociationSummary(
                self.worker_id, self.assoc_group, self.sent, self.failed, time.perf_counter() - self.opened, ended
            )
        )
        self.assoc = None

    def run(self, chunks: queue.SimpleQueue[Chunk]) -> None:
        try:
            while not self.setup.stop.is_set():
                try:
                    chunk = chunks.get_nowait()
                except queue.Empty:
                    break
                if chunk.group != self.assoc_group:
                    self.close("released")
                self.assoc_group = chunk.group
                self.send_chunk(chunk)
        finally:
            self.close("released")

    def report(
        self,
        kind: OutcomeKind,
        item: SendItem,
        status: int | None,
        attempts: int,
        reason: str = "",
        retryable: bool = False,
    ) -> None:
        unanswered = self.unanswered.pop(item.index, 0)
        self.events.outcome(InstanceReport(kind, item, status, attempts, reason, retryable, unanswered))

    def open(self, group: int) -> DicomNetworkError | None:
        try:
            self.assoc = open_association(self.setup.link, self.setup.groups[group])
        except DicomNetworkError as exc:
            self.failures_in_a_row += 1
            return exc
        self.failures_in_a_row = 0
        self.sent = self.failed = 0
        self.opened = time.perf_counter()
        return None

    def send_chunk(self, chunk: Chunk) -> None:
        setup = self.setup
        pending = deque(chunk.items)
        ready: dict[int, memoryview] = {}  # at most one file, read ahead
        attempts: dict[int, int] = {}
        chunk_open_failures = 0
        while pending and not setup.stop.is_set():
            if self.assoc is None:
                error = self.open(chunk.group)
                if error is not None:
                    chunk_open_failures += 1
                    # once the peer has failed max_attempts times in a row, later chunks get one try each
                    if chunk_open_failures >= setup.max_attempts or self.failures_in_a_row > setup.max_attempts:
                        for item in pending:
                            self.report(
                                "failed", item, None, attempts.get(item.index, 0), str(error), heals_with_time(error)
                            )
                        pending.clear()
                    else:
                        setup.stop.wait(0.5 * chunk_open_failures)
                    continue
            assoc = self.assoc
            assert assoc is not None
            item = pending.popleft()
            if item.pair not in assoc.accepted:
                ready.pop(item.index, None)
                self.report(
                    "skipped",
                    item,
                    None,
                    0,
                    f"the peer did not accept {uid_name(item.sop_class)} in {uid_name(item.transfer_syntax)}",
                )
                continue
            try:
                dataset = (
                    ready.pop(item.index)
                    if item.index in ready
                    else dataset_to_send(item.path, item.size, item.mtime_ns, setup.routing_comment, item.rewrite)
                )
            except (OSError, ValueError) as exc:  # vanished, unreadable or no longer DICOM: retrying will not help
                self.report("failed", item, None, 0, f"cannot read the file: {exc}")
                continue
            attempts[item.index] = attempts.get(item.index, 0) + 1
            status: int | None = None
            error_text = ""
            self.events.sending(item)
            try:
                message_id = assoc.send_store(item.sop_class, item.transfer_syntax, item.sop_instance_uid, dataset)
            except UpperLayerError as exc:  # cut while sending: the receiver cannot have stored a partial message
                error_text = str(exc)
            else:
                if pending and setup.routing_comment is None:
                    # read the next file while the receiver stores this one (one request in flight)
                    _read_ahead(pending[0], ready)
                try:
                    status = assoc.await_status(message_id)
                except UpperLayerError as exc:  # NoResponse: stalled, aborted or dropped after the whole message
                    error_text = str(exc)
                    self.unanswered[item.index] = self.unanswered.get(item.index, 0) + 1
            if status is not None and is_stored(status):
                self.sent += 1
                self.report("sent", item, status, attempts[item.index])
                continue
            self.failed += 1
            if status is not None:
                self.events.refused(item)
            if status is None:
                self.close(f"aborted: {error_text}", abort=True)  # a stalled association is not reused
            else:
                self.close(f"released after status 0x{status:04X}")  # retry on a fresh association
            broken = _why_unsendable(item)
            if broken:  # a corrupt file fails the same way every time: say why, do not retry
                self.report("failed", item, status, attempts[item.index], broken)
                continue
            if attempts[item.index] < setup.max_attempts:
                pending.appendleft(item)
            else:
                reason = f"{status_meaning(status)} ({error_text})" if error_text else status_meaning(status)
                busy = status is not None and RECEIVER_BUSY_STATUSES[0] <= status <= RECEIVER_BUSY_STATUSES[1]
                self.report("failed", item, status, attempts[item.index], reason, status is None or busy)
