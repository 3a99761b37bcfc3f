"""REST uploads through XNAT's import service: DICOM-zip batches and gradual-DICOM instances.

DICOM-zip sends one archive per batch (N batches = N workers); gradual-DICOM sends one
instance per request over keep-alive connections. Both resend safely: XNAT names stored files
after their UIDs and the uploads ask for overwrite semantics, so a retried batch or instance
replaces itself instead of duplicating.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import httpx

from xnat_flows.client.client import XnatClient
from xnat_flows.client.errors import (
    AuthenticationError,
    CancelledError,
    InputError,
    PermissionDeniedError,
    StorageFullError,
    TransientError,
    UnsupportedServerError,
    XnatError,
)
from xnat_flows.client.request_loop import InDoubtCount
from xnat_flows.transfer.archive_stream import ArchiveFormat, archive_size, content_type_for, iter_archive
from xnat_flows.transfer.pool import interruptible_pool
from xnat_flows.transfer.progress import Progress, ProgressCallback
from xnat_flows.transfer.scan import DicomFile, read_exactly
from xnat_flows.transfer.target import UploadTarget
from xnat_flows.transfer.upload_result import BatchResult, FileFailure, GradualResult

IMPORT_PATH = "/data/services/import"
GRADUAL_TIMEOUT = httpx.Timeout(120.0, connect=10.0)

# Errors that every further request would hit too: stop instead of failing 100k files one by one.
_FATAL = (AuthenticationError, PermissionDeniedError, UnsupportedServerError, CancelledError)


def parse_uris(text: str) -> list[str]:
    """Session URIs from an import answer: one per line, CRLF-terminated."""
    return [line.strip() for line in text.splitlines() if _SESSION_URI.fullmatch(line.strip())]


# What XNAT's import service answers on success: the session's URI (prearchive, archive or
# Direct-Archive), one per line (XNAT's ImporterHandlerA / import resource).
_SESSION_URI = re.compile(r"/(?:data|REST|xapi)/[^\s<>\"']+")


def import_answer_uris(client: XnatClient, response: httpx.Response) -> list[str]:
    """The session URIs of an import answer.

    Any other answer raises, because it is not XNAT's import service that answered (a login page, a
    proxy, a redirect) and nothing may count as delivered.

    Args:
        client: The client that sent the request (its URL is named in an error).
        response: The import service's answer.

    Returns:
        The session URIs XNAT answered (at least one).
    """
    where = f"{client.base_url}{IMPORT_PATH}"
    if response.is_redirect:
        location = response.headers.get("Location", "(no Location)")
        raise AuthenticationError(
            f"The import endpoint answered HTTP {response.status_code}, a redirect to {location}, instead of accepting "
            f"the upload: nothing was stored ({where})",
            status=response.status_code,
            hint="An authentication or proxy problem (a login page or single sign-on in front of XNAT): check that "
            "the URL is XNAT's base URL and that the user and password work",
            reason="import-redirected",
            url=where,
        )
    uris = parse_uris(response.text)
    if uris:
        return uris
    page = "<html" in response.text[:2000].lower()
    raise (AuthenticationError if page else XnatError)(
        f"The import endpoint answered HTTP {response.status_code} with "
        + ("a web page (probably a login page)" if page else f"{response.text.strip()[:80]!r}")
        + f" instead of a session URI: nothing counts as stored ({where})",
        status=response.status_code,
        hint="An authentication or proxy problem: check the URL is XNAT's base URL (not a portal or login page) "
        "and that the account is logged in",
    )


def upload_batch(
    client: XnatClient,
    batch: Sequence[DicomFile],
    target: UploadTarget,
    fmt: ArchiveFormat = "tar",
    *,
    index: int = 0,
    raise_on_error: bool = True,
    on_streamed: Callable[[int], None] | None = None,
) -> BatchResult:
    """POST one batch as a streamed DICOM-zip archive (tar, tgz or zip).

    Transient failures are retried by the client (the archive is rebuilt for every attempt);
    a permanent rejection raises at once with XNAT's message, or, with
    ``raise_on_error=False``, comes back as ``ok=False`` with the message in ``error``.
    ``on_streamed(n)`` reports the file bytes streamed so far in the current attempt (it
    restarts at 0 when a retry starts), for byte-level progress.

    Args:
        client: A logged-in client.
        batch: The files of the batch.
        target: The destination session and its import options.
        fmt: The archive format.
        index: The batch's number, for the result.
        raise_on_error: Raise a permanent rejection; False: return it as ``ok=False``.
        on_streamed: Told the bytes streamed so far in the current attempt.

    Returns:
        The batch's result: its files, bytes and time, and the session URIs XNAT answered.
    """
    if not batch:
        raise InputError("Cannot upload an empty batch")
    size = sum(f.size for f in batch)
    relpaths = tuple(f.relpath for f in batch)
    length = archive_size(batch, fmt)

    def body() -> Iterator[bytes]:
        streamed = 0
        for chunk in iter_archive(batch, fmt):
            client.check_cancelled()
            yield chunk
            if on_streamed is not None:
                streamed += len(chunk)
                on_streamed(min(streamed, size))  # archive headers are not file bytes

    if on_streamed is not None:
        on_streamed(0)
    started = time.monotonic()
    in_doubt = InDoubtCount()  # this batch's own: parallel batches share the client
    try:
        response = client.request(
            "POST",
            IMPORT_PATH,
            params=target.dicom_zip_params(),
            content=body,
            headers={"Content-Type": content_type_for(fmt)}
            | ({"Content-Length": str(length)} if length is not None else {}),
            timeout=client.upload_timeout(length if length is not None else size),
            in_doubt=in_doubt,
        )
        uris: list[str] = import_answer_uris(client, response)
        error = None
    except XnatError as exc:
        if raise_on_error:
            raise
        uris, error = [], str(exc)
    return BatchResult(
        index=index,
        files=relpaths,
        bytes=size,
        seconds=time.monotonic() - started,
        uris=tuple(uris),
        ok=error is None,
        error=error,
        requests_in_doubt=in_doubt.value,
    )


@dataclass
class _GradualTally:
    """What ``upload_gradual``'s workers count as they go."""

    total: int
    sent_count: int = 0
    bytes_sent: int = 0
    failures: list[FileFailure] = field(default_factory=list)
    stopped: str | None = None


class _Breaker:
    """Counts instances failing in a row on the server's side (5xx, no answer, storage full).

    After ``workers`` such failures in a row the remaining requests are sent without retries (one
    probe each: a single success closes the breaker again); after ``2 * workers`` (at least 6) the
    upload stops, so a server failing everything costs about one retry cycle, not one per instance.
    """

    def __init__(self, workers: int) -> None:
        self.degrade_after = max(2, workers)
        self.stop_after = max(6, 2 * workers)
        self.in_a_row = 0
        self.last: XnatError | None = None
        self._lock = threading.Lock()

    def record(self, error: XnatError | None) -> None:
        with self._lock:
            if error is None:
                self.in_a_row = 0
            elif isinstance(error, (TransientError, StorageFullError)):  # not a per-file refusal
                self.in_a_row += 1
                self.last = error

    @property
    def open_soon(self) -> bool:
        return self.in_a_row >= self.degrade_after

    @property
    def tripped(self) -> bool:
        return self.in_a_row >= self.stop_after

    def reason(self) -> str:
        return f"stopped after {self.in_a_row} instances in a row failed on XNAT's side (last: {self.last}); not sent"


def _warmup_order(files: Sequence[DicomFile]) -> tuple[list[DicomFile], list[DicomFile]]:
    """The first instance of every series, then the rest interleaved across series.

    Many parallel first requests for a new session race XNAT's creation of the session and
    scan rows (transient 400s); creating each scan once, sequentially, avoids the race.

    Returns:
        The leading instances and the rest.
    """
    by_series: dict[str, list[DicomFile]] = {}
    for f in files:
        by_series.setdefault(f.series_uid, []).append(f)
    # With a single series take two, so one bad file cannot pass for "everything fails".
    lead = 2 if len(by_series) == 1 else 1
    firsts = [f for group in by_series.values() for f in group[:lead]]
    queues = [group[lead:] for group in by_series.values()]
    rest: list[DicomFile] = []
    for i in range(max((len(q) for q in queues), default=0)):
        rest.extend(q[i] for q in queues if i < len(q))
    return firsts, rest


def _failure_kind(error: XnatError) -> tuple[object, ...]:
    """What makes two failures "the same": their facts, not their wording.

    The message carries per-request details (bytes received, seconds waited), so two requests
    failing alike may differ in it: a dripped answer read 2 bytes in one and 3 in the other.

    Returns:
        The error's class, status, condition name and XNAT's own message.
    """
    return type(error), error.status, error.reason, error.server_message


def upload_gradual(
    client: XnatClient,
    files: Iterable[DicomFile],
    target: UploadTarget,
    *,
    workers: int = 4,
    progress: ProgressCallback | None = None,
    on_sent: Callable[[DicomFile], None] | None = None,
) -> GradualResult:
    """Send each instance in its own gradual-DICOM request, ``workers`` at a time.

    At most ``workers`` requests are in flight (each worker takes the next instance when its
    request is answered), so memory stays bounded for any number of files. Per-file failures are
    collected with XNAT's message; errors every request would hit (401 after re-login, 403, ...)
    stop the upload. ``on_sent`` is called (from worker threads) for every instance XNAT accepted.

    Args:
        client: A logged-in client.
        files: The instances.
        target: The destination session and its import options.
        workers: Requests in flight at once.
        progress: Told of the instances sent as they go.
        on_sent: Called for every instance XNAT accepted.

    Returns:
        Counts of instances sent, failed and resumed, with XNAT's message for each failure and the
        session URIs.
    """
    items = list(files)
    # Counted in a plain object while the workers run (the hot path, once per instance); the
    # pydantic result is built once at the end.
    result = _GradualTally(total=len(items))
    bytes_total = sum(f.size for f in items)
    lock = threading.Lock()
    uris: dict[str, None] = {}
    params = target.gradual_params()
    started = time.monotonic()
    in_doubt = InDoubtCount()  # this upload's own requests, whoever else shares the client
    breaker = _Breaker(workers)
    # One instance: the client's stall allowance, at most GRADUAL_TIMEOUT for the answer.
    limits = client.upload_timeout(max((f.size for f in items), default=0))
    gradual_timeout = httpx.Timeout(
        connect=limits.connect,
        read=min(t for t in (GRADUAL_TIMEOUT.read, limits.read) if t is not None),
        write=limits.write,
        pool=limits.pool,
    )

    def send(item: DicomFile) -> None:
        response = client.request(
            "POST",
            IMPORT_PATH,
            params=params,
            content=lambda: read_exactly(item),
            headers={"Content-Type": "application/dicom", "Content-Length": str(item.size)},
            timeout=gradual_timeout,
            retry=not breaker.open_soon,
            lean=True,  # one small request per instance: httpx's models would cost half the client's CPU
            in_doubt=in_doubt,
        )
        answered = import_answer_uris(client, response)
        with lock:
            uris.update(dict.fromkeys(answered))

    def record(item: DicomFile, error: XnatError | None) -> None:
        breaker.record(error)
        with lock:
            if error is None:
                result.sent_count += 1
                result.bytes_sent += item.size
            else:
                result.failures.append(
                    FileFailure(
                        relpath=item.relpath,
                        path=item.path,
                        error=str(error),
                        status=error.status,
                        retryable=error.retryable,
                    )
                )
            if progress is not None:  # under the lock: the callback sees progress in order
                done = result.sent_count + len(result.failures)
                progress(Progress(done, result.total, result.bytes_sent, bytes_total, len(result.failures)))
        if error is None and on_sent is not None:
            on_sent(item)

    def attempt(item: DicomFile) -> XnatError | None:
        try:
            send(item)
        except _FATAL:
            raise
        except XnatError as exc:
            return exc
        return None

    if progress is not None:  # sending starts: a first report, nothing sent yet (the CLI times the sending from it)
        progress(Progress(0, result.total, 0, bytes_total, 0))
    firsts, rest = _warmup_order(items)
    warmup_errors = []
    for item in firsts:
        error = attempt(item)
        record(item, error)
        if error is not None:
            warmup_errors.append(error)
    if firsts and len(warmup_errors) == len(firsts) and len({_failure_kind(e) for e in warmup_errors}) == 1:
        # Every scan's first instance failed the same way: the rest would too.
        raise warmup_errors[0]

    # Each worker takes the next instance itself: no future, queue or hand-off per instance, which
    # cost a tenth of the client's CPU in a 2,000-instance upload (py-spy).
    fatal: list[BaseException] = []
    pending = iter(rest)
    taking = threading.Lock()
    taken = 0
    stopped_at: int | None = None

    def take() -> DicomFile | None:
        nonlocal taken, stopped_at
        with taking:
            if fatal or client.cancelled:
                return None
            if breaker.tripped:
                stopped_at = taken if stopped_at is None else stopped_at
                return None
            item = next(pending, None)
            taken += item is not None
            return item

    def work() -> None:
        while (item := take()) is not None:
            try:
                record(item, attempt(item))
            except BaseException as exc:  # noqa: BLE001 - 401 after re-login, 403, a cancel, a failed record: stops every worker
                with taking:
                    fatal.append(exc)
                return

    with interruptible_pool(workers, "gradual", on_interrupt=client.cancel) as pool:
        for _ in range(min(workers, len(rest))):
            pool.submit(work)
    if fatal:
        raise fatal[0]
    if stopped_at is not None:
        result.stopped = breaker.reason()
        for item in rest[stopped_at:]:
            result.failures.append(
                FileFailure(relpath=item.relpath, path=item.path, error=result.stopped, retryable=True)
            )
    elif (retryable := [f for f in result.failures if f.retryable]) and len(retryable) <= 50:
        # Salvage: instances that failed for passing reasons get one more, sequential, chance.
        by_path = {f.relpath: f for f in items}
        for failure in retryable:
            item = by_path[failure.relpath]
            if attempt(item) is None:
                with lock:
                    result.failures.remove(failure)
                    result.sent_count += 1
                    result.bytes_sent += item.size
                if on_sent is not None:
                    on_sent(item)

    return GradualResult(
        total=result.total,
        sent_count=result.sent_count,
        bytes_sent=result.bytes_sent,
        seconds=time.monotonic() - started,
        uris=list(uris),
        failures=result.failures,
        stopped=result.stopped,
        requests_in_doubt=in_doubt.value,
    )


# A round trip this long means the server is not on this machine or its LAN: the link's bandwidth,
# not the gzip compressor (~85-130 MB/s per core with ISA-L), is then what limits a DICOM-zip upload.
SLOW_LINK_RTT_SECONDS = 0.005
TGZ_MIN_VERSION = "1.8.3"  # DICOM-zip reads gzipped tar from this version (spec: DicomZipImporter)


def choose_archive_format(client: XnatClient, probes: int = 5) -> tuple[ArchiveFormat, str]:
    """``tgz`` for a slow (remote) link to a server that reads it, ``tar`` otherwise; with the reason in words.

    The link is measured by the shortest of ``probes`` round trips of a tiny request (the version),
    which the server answers without work.

    Compressing costs client CPU and, on a fast link, time (docs/performance.md: tgz on
    loopback); on a remote link it halves the bytes of MR/CT-like data.

    Args:
        client: A logged-in client.
        probes: How many round trips to measure.

    Returns:
        The format and the reason for it.
    """
    from xnat_flows.client.version import at_least

    version = client.server_version()
    if version and at_least(version, TGZ_MIN_VERSION) is False:
        return "tar", f"XNAT {version} reads no gzipped tar in DICOM-zip"
    # The shortest round trip is the link's; a loaded client may see any one probe late, so a probe
    # under the threshold ends the measurement and a slow verdict needs all ``probes`` of them.
    rtt = float("inf")
    for _ in range(probes):
        started = time.perf_counter()
        client.request("GET", "/xapi/siteConfig/buildInfo/version", timeout=15.0, retry=False)
        rtt = min(rtt, time.perf_counter() - started)
        if rtt < SLOW_LINK_RTT_SECONDS:
            break
    if rtt >= SLOW_LINK_RTT_SECONDS:
        return "tgz", f"round trip {rtt * 1000:.0f} ms: a remote link, compressed to about half"
    return "tar", f"round trip {rtt * 1000:.1f} ms: a local link, sent uncompressed"
