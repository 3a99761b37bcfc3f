"""Send DICOM instances to a C-STORE receiver (XNAT's DICOM SCP, dcmtk, a PACS) — no Prefect here.

Design (measurements in docs/cstore.md):

* ``workers`` long-lived associations, each in a thread (``worker``). A message costs the
  lean SCU little Python CPU and the sockets release the GIL, so threads keep the receiver busy
  without the ~0.3 s each spawned process costs.
* TCP_NODELAY on every association socket (Nagle otherwise adds ~40 ms per instance).
* The sending association is ``association.StorageAssociation``, a lean blocking SCU, not
  pynetdicom's: pynetdicom costs ~4 ms CPU per message and sometimes stalls mid-message under
  CPU contention. A file's dataset goes out exactly as encoded on disk, never decoded. Only a
  routing override parses a file, changes PatientComments on an in-memory copy and sends that
  copy (``dataset``); the user's files are never written.
* Presentation contexts come from the files (``contexts``): a file is only sent in its
  own transfer syntax, and an instance whose context the peer refused is recorded as skipped.
* A failure status, a dropped association or a stalled one (no response within
  ``dimse_timeout``) sends the instance again on a fresh association, up to ``max_attempts``.
  An instance counts as sent only when the peer answered success or warning.
* Ctrl-C stops the workers after the instance each has in flight (bounded by the DIMSE
  timeout), so every instance the receiver confirmed is reported before ``KeyboardInterrupt``
  propagates. ``DeliveryLog`` hears of each instance as it goes out and as it is confirmed
  (the resume journal, ``resume``).

"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Protocol

from xnat_flows.client.errors import InputError
from xnat_flows.transfer.cstore.connect import ReceiverLink, echo
from xnat_flows.transfer.cstore.contexts import SyntaxPair, plan_association_groups
from xnat_flows.transfer.cstore.inputs import RoutingOverride
from xnat_flows.transfer.cstore.results import AssociationSummary, InstanceCountCallback, InstanceOutcome, SendResult
from xnat_flows.transfer.cstore.worker import Chunk, InstanceReport, SendItem, WorkerSetup, run_worker
from xnat_flows.transfer.scan import DicomFile, ScanResult, scan_directory

if TYPE_CHECKING:
    from xnat_flows.transfer.deidentify import Anonymizer


log = logging.getLogger(__name__)

_STOP_GRACE_SECONDS = 5.0  # beyond the DIMSE timeout, for releasing the associations after Ctrl-C


class DeliveryLog(Protocol):
    """Hears of each instance just before it goes out, and when the receiver answered for it.

    ``stored`` (Success or Warning) or ``refused`` (a failure status: it does not hold it). An
    instance sent without an answer gets neither: the receiver may or may not hold it.

    Called from the sending threads; implementations serialise what they share.
    """

    def sending(self, file: DicomFile) -> None:
        """``file`` is about to go out."""
        ...

    def stored(self, file: DicomFile) -> None:
        """The receiver stored ``file`` (Success or Warning)."""
        ...

    def refused(self, file: DicomFile) -> None:
        """The receiver answered a failure status for ``file``: it does not hold it."""
        ...


def deidentify_for_send(
    files: list[DicomFile], anonymizer: Anonymizer | None, variables: Mapping[str, str] | None
) -> tuple[list[DicomFile], list[InstanceOutcome]]:
    """The files to send, de-identified in memory (``transfer.deidentify``).

    Args:
        files: The scanned files.
        anonymizer: The script or profile to apply; None sends the files as they are.
        variables: The script's variables (project, subject, session).

    Returns:
        The files as they will be sent, and a failed outcome for each file the script could not
        be applied to: listed, never sent.

    Raises:
        InputError: The script needs a variable ``variables`` does not give.
    """
    if anonymizer is None:
        return files, []
    from xnat_flows.transfer.deidentify import deidentify_files, require_variables

    require_variables(anonymizer, variables or {}, "this C-STORE (its routing)")
    done = deidentify_files(files, anonymizer, variables or {})
    return done.files, [InstanceOutcome(s.path, "", 0, None, 0, s.reason) for s in done.refused]


def routing_variables(routing: RoutingOverride | None) -> dict[str, str]:
    """The XNAT variables a script applied before a C-STORE knows: the routing's, the only labels a C-STORE names.

    Args:
        routing: The routing override, or None.

    Returns:
        ``project``, ``subject`` and ``session`` where the routing gives them.
    """
    if routing is None:
        return {}
    found = {"project": routing.project, "subject": routing.subject, "session": routing.session}
    return {key: value for key, value in found.items() if value}


def _as_dicom_files(files: ScanResult | Iterable[DicomFile] | str | os.PathLike[str]) -> list[DicomFile]:
    if isinstance(files, ScanResult):
        return list(files.files)
    if isinstance(files, (str, os.PathLike)):
        return list(scan_directory(files, headers="file-meta").files)
    return list(files)


class _Collector:
    """Gathers the workers' reports (from their threads) into outcomes, progress and the log."""

    def __init__(
        self,
        files: list[DicomFile],
        result: SendResult,
        progress: InstanceCountCallback | None,
        delivery_log: DeliveryLog | None,
    ) -> None:
        self.files = files
        self.result = result
        self.progress = progress
        self.delivery_log = delivery_log
        self.reports: dict[int, InstanceReport] = {}
        self._lock = threading.Lock()

    def sending(self, item: SendItem) -> None:
        if self.delivery_log is not None:
            self.delivery_log.sending(self.files[item.index])

    def refused(self, item: SendItem) -> None:
        if self.delivery_log is not None:
            self.delivery_log.refused(self.files[item.index])

    def outcome(self, report: InstanceReport) -> None:
        if self.delivery_log is not None and report.kind == "sent":  # first: a kill right after loses nothing
            self.delivery_log.stored(self.files[report.item.index])
        with self._lock:
            self.reports[report.item.index] = report
            if self.progress is not None:
                self.progress(len(self.reports), len(self.files))

    def association(self, summary: AssociationSummary) -> None:
        with self._lock:
            self.result.associations.append(summary)


def store_instances(
    files: ScanResult | Iterable[DicomFile] | str | os.PathLike[str],
    *,
    host: str,
    port: int,
    called_aet: str = "XNAT",
    calling_aet: str = "XNATFLOWS",
    workers: int = 4,
    dimse_timeout: float = 30.0,
    acse_timeout: float = 30.0,
    max_pdu: int = 131072,
    max_attempts: int = 3,
    max_contexts: int = 128,
    chunk_size: int = 64,
    preflight: bool = True,
    progress: InstanceCountCallback | None = None,
    routing: RoutingOverride | None = None,
    delivery_log: DeliveryLog | None = None,
    anonymizer: Anonymizer | None = None,
    anon_variables: Mapping[str, str] | None = None,
) -> SendResult:
    """C-STORE every instance; never raises for a single instance, always records its outcome.

    Args:
        files: A ``ScanResult``, ``DicomFile`` items from ``scan_directory``, or a directory
            (scanned here).
        host: The receiver's host.
        port: The receiver's port.
        called_aet: The receiver's AE title.
        calling_aet: Ours.
        workers: Parallel associations, each in a thread.
        dimse_timeout: Seconds to wait for each response; an instance without one is sent again.
        acse_timeout: Seconds to wait for an association to open or release.
        max_pdu: The largest PDU we receive.
        max_attempts: Attempts per instance (a failure status, a dropped or stalled association).
        max_contexts: Presentation contexts per association (at most 128).
        chunk_size: Instances a worker takes at a time.
        preflight: C-ECHO the receiver before sending.
        progress: Called with (instances finished, total) as each is answered.
        routing: Set PatientComments routing on the copy sent (the files are not changed).
        delivery_log: Hears of each instance as it goes out and as it is answered (the journal).
        anonymizer: De-identify every instance as it is read (``transfer.deidentify``); a file the
            script cannot be applied to is a failed outcome, never sent.
        anon_variables: The script's variables (default: the routing's project, subject, session).

    Returns:
        Every instance's outcome (sent, failed, skipped) and one summary per association.

    Raises:
        InputError: Bad AE titles or counts.
        DicomNetworkError: With ``preflight``: a subclass when the receiver cannot be reached or
            refuses us.
    """
    link = ReceiverLink(
        host,
        port,
        called_aet,
        calling_aet,
        acse_timeout=acse_timeout,
        dimse_timeout=dimse_timeout,
        max_pdu=max_pdu,
    )
    if workers < 1 or max_attempts < 1 or chunk_size < 1:
        raise InputError("workers, max_attempts and chunk_size must be at least 1")
    variables = anon_variables if anon_variables is not None else routing_variables(routing)
    dicom_files, refused = deidentify_for_send(_as_dicom_files(files), anonymizer, variables)
    items = [
        SendItem(i, str(f.path), f.sop_class_uid, f.transfer_syntax, f.sop_instance_uid, f.size, f.mtime_ns, f.rewrite)
        for i, f in enumerate(dicom_files)
    ]
    result = SendResult(workers=workers, mode="threads", failed=refused)
    if not items:
        return result
    if preflight:
        echo(link.host, link.port, link.called_aet, link.calling_aet, timeout=acse_timeout)

    groups = plan_association_groups((item.pair for item in items), max_contexts)
    group_of = {pair: group.index for group in groups for pair in group.pairs}
    chunks = _chunks(items, group_of, workers, chunk_size)
    setup = WorkerSetup(
        link,
        {group.index: group.pairs for group in groups},
        max_attempts,
        routing.comment() if routing else None,
        threading.Event(),
    )
    collector = _Collector(dicom_files, result, progress, delivery_log)
    started = time.perf_counter()
    _run_workers(min(workers, len(chunks)), chunks, setup, collector)
    result.seconds = time.perf_counter() - started

    buckets = {"sent": result.sent, "failed": result.failed, "skipped": result.skipped}
    for item in items:
        report = collector.reports.get(item.index)
        if report is None:  # a worker died before reporting it: it may or may not have arrived
            report = InstanceReport("failed", item, None, 0, "the sending worker ended before reporting this instance")
        buckets[report.kind].append(
            InstanceOutcome(
                dicom_files[item.index].path,
                item.sop_instance_uid,
                item.size,
                report.status,
                report.attempts,
                report.reason,
                report.retryable,
                report.unanswered,
            )
        )
    log.info("C-STORE to %s:%s %s: %s", host, port, called_aet, result.summary())
    return result


def _chunks(items: list[SendItem], group_of: dict[SyntaxPair, int], workers: int, chunk_size: int) -> list[Chunk]:
    """Work units of one association group each; small enough to balance the workers."""
    by_group: dict[int, list[SendItem]] = {}
    for item in items:
        by_group.setdefault(group_of[item.pair], []).append(item)
    chunks = []
    for group, members in sorted(by_group.items()):
        size = max(1, min(chunk_size, math.ceil(len(members) / workers)))
        chunks += [Chunk(group, members[start : start + size]) for start in range(0, len(members), size)]
    return chunks


def _run_workers(count: int, chunks: list[Chunk], setup: WorkerSetup, collector: _Collector) -> None:
    """Run ``count`` workers over ``chunks``.

    On Ctrl-C, let each finish its instance in flight (so its confirmation is recorded), then
    re-raise.

    The waits are on events the workers set as they end, not on ``Thread.join``: in CPython 3.11 a
    join interrupted by Ctrl-C marks the still-running thread as finished (bpo-45274's fix releases
    the live thread's state lock), so a second join would return at once and the process would
    exit with that worker's instance unanswered.
    """
    work: queue.SimpleQueue[Chunk] = queue.SimpleQueue()
    for chunk in chunks:
        work.put(chunk)
    ended = [threading.Event() for _ in range(count)]

    def worker(n: int) -> None:
        try:
            run_worker(n, setup, work, collector)
        finally:
            ended[n].set()

    for n in range(count):
        threading.Thread(target=worker, name=f"cstore-{n}", daemon=True, args=(n,)).start()
    try:
        for done in ended:
            while not done.wait(0.5):  # a bounded wait keeps the main thread responsive to Ctrl-C
                pass
    except KeyboardInterrupt:
        setup.stop.set()
        deadline = time.monotonic() + setup.link.dimse_timeout + _STOP_GRACE_SECONDS
        for done in ended:
            done.wait(max(0.0, deadline - time.monotonic()))
        raise
