"""Getting a session's files out of XNAT: choose scans and resources, download, verify, resume.

Plain Python on ``xnat_flows.client`` (no Prefect). The plan comes from XNAT's own catalog: the
session document (scans: ID, type, series description, frames), each scan's resources and each
resource's file listing (name, size and, where XNAT computed one, the MD5 ``digest``; see
``client.catalog``). Files are then fetched in parallel, each streamed to a hidden temporary name
next to its place (``.NAME.part``) while its size and MD5 are taken, compared with the catalog,
and only then renamed into place: a file under its own name is always complete and verified.

* **Resumable.** A file already in place with the catalog's size (and digest, where XNAT lists
  one) is not fetched again, so a re-run after Ctrl-C, a lost connection or a full disk fetches
  only what is missing.
* **Bounded memory.** Files up to 4 MB (most DICOM instances) are read whole, larger ones written
  as they arrive (``XnatClient.download``): at most 4 MB per worker in memory, whatever the size
  of a file or a session.
* **Two ways to fetch** (``via``): ``files``, one request per file, or ``zip``, one archive per scan
  resource as XNAT builds it (``…/resources/{label}/files?format=zip``), unpacked as it arrives
  with the same checks (docs/performance.md compares them).
* **Layouts**: ``xnat`` is XNAT's own zip layout, ``{session}/scans/{id}/resources/{label}/files/…``;
  ``flat`` puts each scan's files in ``{session}/{id}/…``.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Literal
from urllib.parse import quote

from pydantic import BaseModel, Field
from stream_unzip import UnzipError

from xnat_flows.client.archive import ArchivedScan, ArchivedSession, resolve_session
from xnat_flows.client.catalog import ResourceFile, list_files, list_resources
from xnat_flows.client.client import XnatClient
from xnat_flows.client.errors import CancelledError, InputError, XnatError
from xnat_flows.transfer.pool import interruptible_pool
from xnat_flows.transfer.progress import Progress, ProgressCallback

log = logging.getLogger(__name__)

Layout = Literal["xnat", "flat"]
Via = Literal["files", "zip"]
_CHUNK = 256 * 1024
# Files up to this size are read whole (memory: workers x this at most); larger ones are streamed.
_WHOLE_BODY_MAX = 4 * 1024 * 1024
_ATTEMPTS = 3  # per file: a body cut short or a digest that differs is fetched again, twice
_BLOCK = 4096  # file system block: what a file's size is rounded up to on disk


class LocalDiskFullError(XnatError):
    """The destination's disk (or quota) filled up while downloading."""

    default_hint = (
        "Free space on the destination (or choose another), then run the same download again: complete files are kept"
    )


class DownloadVerificationError(XnatError):
    """Files did not arrive as XNAT's catalog lists them (missing, another size, another digest)."""

    default_hint = "Run the download again; if the same files differ again, check them in XNAT (their catalog may be stale: Refresh Catalog)"


# ------------------------------------------------------------------------------------------- plan


class PlannedFile(BaseModel):
    """One file of the catalog and where it goes."""

    scan: str
    resource: str
    path: str = Field(description="Path inside the resource (XNAT's catalog)")
    size: int
    digest: str = Field(default="", description="MD5 from XNAT's catalog ('' when XNAT lists none)")
    url_path: str = Field(description="Request path of the file on the server")
    local: str = Field(description="Path relative to the download's root")


class ScanChoice(BaseModel):
    """A scan chosen for download, with what XNAT says of it."""

    id: str
    type: str = ""
    series_description: str = ""
    frames: int | None = None
    resources: list[str] = Field(default_factory=list, description="Labels of the resources downloaded")


class DownloadPlan(BaseModel):
    """What to download of one session: the scans chosen, each file of the catalog and where it goes."""

    experiment_id: str
    label: str
    project: str
    root: str = Field(description="The session's folder: DEST/{session label}")
    layout: Layout = "xnat"
    scans: list[ScanChoice] = Field(default_factory=list)
    files: list[PlannedFile] = Field(default_factory=list)
    without_files: list[str] = Field(default_factory=list, description="Chosen scans with none of the wanted resources")

    @property
    def total_bytes(self) -> int:
        """The size of every planned file, in bytes."""
        return sum(f.size for f in self.files)


def parse_scan_selection(value: str | Sequence[str] | None) -> list[str] | None:
    """A scan selection as users give it.

    Args:
        value: ``None``/``ALL``; ``"1,2"``, ``"T1w"`` or ``["1", "T1w"]``.

    Returns:
        The IDs or types named, or None for every scan.
    """
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    parts = [part.strip() for item in items for part in item.split(",") if part.strip()]
    if not parts or any(part.upper() == "ALL" for part in parts):
        return None
    return parts


def choose_scans(scans: Iterable[ArchivedScan], wanted: str | Sequence[str] | None) -> list[ArchivedScan]:
    """The scans named by ID or by type (as XNAT's ``scans/{list}`` does); every one for ``ALL``.

    Args:
        scans: The session's scans.
        wanted: The selection (``parse_scan_selection``).

    Returns:
        The chosen scans, in the session's order.

    Raises:
        InputError: A name matches no scan (the message lists what the session has).
    """
    scans = list(scans)
    names = parse_scan_selection(wanted)
    if names is None:
        return scans
    chosen = [s for s in scans if s.id in names or (s.type and s.type in names)]
    unmatched = [n for n in names if not any(s.id == n or s.type == n for s in scans)]
    if unmatched:
        have = ", ".join(f"{s.id} ({s.type or '?'})" for s in scans) or "none"
        raise InputError(
            f"No scan with ID or type {', '.join(map(repr, unmatched))} in this session; its scans: {have}",
            hint="Give scan IDs or types from that list, or ALL",
        )
    return chosen


def _safe_relative(path: str) -> PurePosixPath:
    """A path from the server, checked to stay inside the download's root."""
    clean = PurePosixPath(path)
    if clean.is_absolute() or ".." in clean.parts or not clean.parts:
        raise XnatError(f"XNAT listed a file path that would leave the destination: {path!r}", hint="")
    return clean


def local_path(layout: Layout, scan: str, resource: str, path: str) -> str:
    """Where a scan resource's file goes below the session's folder.

    Args:
        layout: ``xnat`` (scans/ID/resources/LABEL/files/...) or ``flat`` (ID/...).
        scan: The scan's ID.
        resource: The resource's label.
        path: The file's path inside the resource.

    Returns:
        The relative path (no part may leave the session's folder).
    """
    inner = _safe_relative(path)
    scan_dir = _safe_relative(scan).as_posix()
    if layout == "flat":
        return f"{scan_dir}/{inner.as_posix()}"
    return f"scans/{scan_dir}/resources/{_safe_relative(resource).as_posix()}/files/{inner.as_posix()}"


def scan_url(experiment_id: str, scan: str) -> str:
    """The REST path of scan ``scan`` of session ``experiment_id``.

    Args:
        experiment_id: The session's accession ID.
        scan: The scan's ID.

    Returns:
        The path, each part quoted.
    """
    return f"/data/experiments/{quote(experiment_id, safe='')}/scans/{quote(scan, safe='')}"


def plan_download(
    client: XnatClient,
    session: ArchivedSession,
    dest: str | Path,
    *,
    scans: str | Sequence[str] | None = None,
    resources: Sequence[str] | None = None,
    layout: Layout = "xnat",
) -> DownloadPlan:
    """What to download of ``session``: the scans chosen, each file of XNAT's catalog and its place.

    Args:
        client: A client on the server.
        session: The archived session.
        dest: The folder the session's folder goes under.
        scans: Scans by ID or type (``ALL`` or None: every one).
        resources: Resource labels to fetch (None: every one).
        layout: ``xnat`` (scans/ID/resources/LABEL/files/...) or ``flat`` (ID/...).

    Returns:
        The plan.
    """
    chosen = choose_scans(session.scans, scans)
    wanted = {r.strip() for r in resources or () if r.strip()} or None
    plan = DownloadPlan(
        experiment_id=session.experiment_id,
        label=session.label,
        project=session.project,
        root=str(Path(dest) / _safe_relative(session.label or session.experiment_id)),
        layout=layout,
    )
    seen: dict[str, str] = {}
    for scan in chosen:
        parent = scan_url(session.experiment_id, scan.id)
        labels = [r.label for r in list_resources(client, parent) if wanted is None or r.label in wanted]
        choice = ScanChoice(
            id=scan.id,
            type=scan.type,
            series_description=scan.series_description,
            frames=scan.frames,
            resources=labels,
        )
        plan.scans.append(choice)
        files_here = 0
        for label in labels:
            for item in list_files(client, parent, label):
                plan.files.append(_planned(parent, scan.id, label, item, layout, seen))
                files_here += 1
        if not files_here:
            plan.without_files.append(scan.id)
    return plan


def _planned(
    parent: str, scan: str, label: str, item: ResourceFile, layout: Layout, seen: dict[str, str]
) -> PlannedFile:
    local = local_path(layout, scan, label, item.path)
    other = seen.get(local.lower())  # also a collision on case-insensitive file systems
    if other is not None:
        raise InputError(
            f"Two files would be written to {local!r} ({other} and {label}/{item.path} of scan {scan})",
            hint="Use the xnat layout, which keeps each resource apart, or choose fewer resources",
        )
    seen[local.lower()] = f"{label}/{item.path} of scan {scan}"
    return PlannedFile(
        scan=scan,
        resource=label,
        path=item.path,
        size=item.size,
        digest=item.digest.lower(),
        url_path=f"{parent}/resources/{quote(label, safe='')}/files/{quote(item.path, safe='/')}",
        local=local,
    )


# ----------------------------------------------------------------------------------------- result


class FailedFile(BaseModel):
    """A file that could not be fetched or checked, and why."""

    local: str
    error: str


class DownloadResult(BaseModel):
    """What a download found, fetched and checked."""

    experiment_id: str
    label: str
    project: str
    root: str
    scans: list[ScanChoice] = Field(default_factory=list)
    without_files: list[str] = Field(default_factory=list)
    files: int = Field(default=0, description="Files of the catalog chosen")
    downloaded: int = Field(default=0, description="Fetched by this run")
    already_present: int = Field(default=0, description="Found in place, verified, not fetched again")
    bytes_downloaded: int = 0
    digests_checked: int = Field(default=0, description="Files whose MD5 was compared with XNAT's")
    failed: list[FailedFile] = Field(default_factory=list)
    seconds: float = 0.0
    via: Via = "files"
    layout: Layout = "xnat"

    @property
    def ok(self) -> bool:
        """Every file of the plan is in place and verified."""
        return not self.failed and self.downloaded + self.already_present == self.files


class _Tally:
    """Counts shared by the worker threads, and the progress they report."""

    def __init__(self, plan: DownloadPlan, progress: ProgressCallback | None) -> None:
        self.lock = threading.Lock()
        self.total, self.bytes_total = len(plan.files), plan.total_bytes
        self.done = self.downloaded = self.present = self.bytes_done = self.bytes_downloaded = self.digests = 0
        self.failed: list[FailedFile] = []
        self.progress = progress

    def finished(self, planned: PlannedFile, fetched: bool, checked: bool) -> None:
        with self.lock:
            self.done += 1
            self.bytes_done += planned.size
            if fetched:
                self.downloaded += 1
                self.bytes_downloaded += planned.size
            else:
                self.present += 1
            self.digests += int(checked)
            self._report()

    def failure(self, planned: PlannedFile, error: str) -> None:
        with self.lock:
            self.done += 1
            self.failed.append(FailedFile(local=planned.local, error=error))
            self._report()

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(Progress(self.done, self.total, self.bytes_done, self.bytes_total, len(self.failed)))


# ------------------------------------------------------------------------------------- one file


def _md5() -> hashlib._Hash:
    return hashlib.md5(usedforsecurity=False)  # XNAT's catalog digest, not a security check


def file_matches(target: Path, planned: PlannedFile) -> bool | None:
    """Is ``target`` the catalog's file?

    Args:
        target: The local file.
        planned: The catalog's entry (size and MD5, when XNAT lists one).

    Returns:
        True/False; None when only its size could be compared (XNAT lists no digest) and it matched.
    """
    try:
        if target.stat().st_size != planned.size:
            return False
    except OSError:  # missing, or a file where a folder of its path should be: not there
        return False
    if not planned.digest:
        return None
    digest = _md5()
    with target.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest() == planned.digest


def _part_name(target: Path) -> Path:
    """The temporary name a file is written under.

    Hidden, next to its place, the same on every run (a file left by a killed run is simply
    overwritten by the next).

    Returns:
        The part file's path.
    """
    return target.with_name(f".{target.name}.part")


def _disk_full(exc: OSError, where: Path) -> LocalDiskFullError | None:
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    return LocalDiskFullError(f"No space left on the device of {where} ({os.strerror(exc.errno)}) while downloading")


def _write_verified(chunks: Iterable[bytes], target: Path, planned: PlannedFile) -> bool:
    """Write ``chunks`` under the part name, check size and digest, rename into place.

    The part file is removed whatever happens.

    Returns:
        Whether a digest was compared.
    """
    part = _part_name(target)
    digest = _md5()
    size = 0
    try:
        with open(part, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        if size != planned.size:
            raise DownloadVerificationError(
                f"{planned.local}: {size} bytes received, XNAT's catalog says {planned.size}"
            )
        if planned.digest and digest.hexdigest() != planned.digest:
            raise DownloadVerificationError(
                f"{planned.local}: MD5 {digest.hexdigest()} differs from XNAT's catalog ({planned.digest})"
            )
        os.replace(part, target)
    except OSError as exc:
        full = _disk_full(exc, target)
        if full is not None:
            raise full from None
        raise
    finally:
        part.unlink(missing_ok=True)  # after a successful rename there is nothing left to remove
    return bool(planned.digest)


def _fetch_file(client: XnatClient, root: Path, planned: PlannedFile, stop: threading.Event) -> tuple[bool, bool]:
    """Make ``planned`` present and verified under ``root``: (fetched, digest compared)."""
    target = root / planned.local
    matched = file_matches(target, planned)
    if matched is not False:
        return False, matched is True
    target.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, _ATTEMPTS + 1):
        if stop.is_set():
            raise CancelledError("Stopped: another file failed", hint="")
        try:
            if planned.size <= _WHOLE_BODY_MAX:
                # A small file (most DICOM instances): one read through the lean keep-alive path,
                # half the client CPU of a streamed response (docs/performance.md).
                answer = client.request("GET", planned.url_path, lean=True, timeout=client.stall)
                return True, _write_verified([answer.content], target, planned)
            with client.download(planned.url_path) as response:
                return True, _write_verified(response.iter_bytes(), target, planned)
        except (DownloadVerificationError, XnatError) as exc:
            retry = isinstance(exc, DownloadVerificationError) or exc.retryable
            if not retry or attempt == _ATTEMPTS or isinstance(exc, (LocalDiskFullError, CancelledError)):
                raise
            log.warning("%s: %s; fetching it again (%d/%d)", planned.local, exc.message, attempt, _ATTEMPTS - 1)
            wait = client.retry.delay(attempt - 1, exc.retry_after)
            if client.retry.sleep is not None:
                client.retry.sleep(wait)
            elif stop.wait(wait):
                raise CancelledError("Stopped: another file failed", hint="") from None
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------------- per-resource zip


def _fetch_zip(
    client: XnatClient,
    root: Path,
    files: list[PlannedFile],
    stop: threading.Event,
    done: dict[str, tuple[bool, bool]],
    failed: dict[str, str],
) -> None:
    """One scan resource as XNAT's zip, unpacked as it arrives.

    Stream-unzip: no copy of the zip on disk or in memory; each member is written and checked as a
    single file is. Fills ``done``
    (local path -> fetched, digest compared) and ``failed`` (local path -> why); files already in
    place are not asked for, and nothing is when every file is.
    """
    from stream_unzip import stream_unzip

    failed.clear()
    pending = []
    for planned in files:
        if planned.local in done:
            continue
        matched = file_matches(root / planned.local, planned)
        if matched is False:
            pending.append(planned)
        else:
            done[planned.local] = (False, matched is True)
    if not pending or stop.is_set():
        return
    first = pending[0]
    resource_url = first.url_path.rsplit("/files/", 1)[0] + "/files"
    by_path = {f.path: f for f in pending}
    marker = f"/resources/{first.resource}/files/"
    with client.download(resource_url, params={"format": "zip"}) as response:
        for raw_name, _size, chunks in stream_unzip(response.iter_bytes(), chunk_size=_CHUNK):
            name = _member_name(raw_name)
            wanted = by_path.pop(name.split(marker, 1)[1], None) if marker in name else None
            if wanted is None or stop.is_set():
                for _ in chunks:  # members must be read through to reach the next one
                    pass
                continue
            target = root / wanted.local
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                done[wanted.local] = (True, _write_verified(chunks, target, wanted))
            except DownloadVerificationError as exc:
                failed[wanted.local] = exc.message
    for planned in by_path.values():
        failed[planned.local] = "not in XNAT's zip of its resource"


def _member_name(raw: bytes) -> str:
    """A zip member's name: UTF-8 (what XNAT writes), else the zip format's old default, CP437."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp437")


# ------------------------------------------------------------------------------------------ run


def check_free_space(plan: DownloadPlan) -> None:
    """Refuse to start when the destination cannot hold what is still missing.

    By size: files in place with the catalog's size are counted as present.

    Args:
        plan: The download's plan.

    Raises:
        LocalDiskFullError: The destination's free space is smaller than what is missing.
    """
    root = Path(plan.root)
    needed = 0
    for planned in plan.files:
        try:
            if (root / planned.local).stat().st_size == planned.size:
                continue
        except OSError:
            pass
        needed += -(-planned.size // _BLOCK) * _BLOCK  # a file takes whole blocks of the file system
    probe = root
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise LocalDiskFullError(
            f"{root} needs {needed / 1e6:.1f} MB for the files still to download, and its device has "
            f"{free / 1e6:.1f} MB free",
        )


def download_plan(
    client: XnatClient,
    plan: DownloadPlan,
    *,
    workers: int = 4,
    via: Via = "files",
    progress: ProgressCallback | None = None,
) -> DownloadResult:
    """Fetch what ``plan`` lists that is not already in place; verify everything.

    Files that failed otherwise are listed in the result (``ok`` is False).

    Args:
        client: A client on the server.
        plan: What to fetch (``plan_download``).
        workers: Parallel downloads.
        via: ``files`` (one request per file) or ``zip`` (one zip per scan resource, unpacked as it arrives).
        progress: Told of the bytes and files done.

    Returns:
        What was found, fetched and checked.

    Raises:
        LocalDiskFullError: The disk filled (part files removed, complete files kept).
        CancelledError: Ctrl-C (after the workers stopped and removed their part files).
    """
    started = time.monotonic()
    root = Path(plan.root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _disk_full(exc, root) or exc from None
    check_free_space(plan)
    tally = _Tally(plan, progress)
    stop = threading.Event()
    fatal: list[BaseException] = []
    client.reserve_connections(workers)

    def stop_all(exc: XnatError) -> None:
        if not stop.is_set():
            fatal.append(exc)
        stop.set()

    def one_file(planned: PlannedFile) -> None:
        if stop.is_set():
            return
        try:
            fetched, checked = _fetch_file(client, root, planned, stop)
        except (LocalDiskFullError, CancelledError) as exc:
            stop_all(exc)
        except XnatError as exc:
            tally.failure(planned, exc.message)
        except OSError as exc:  # a folder that cannot be made, a file that cannot be written
            full = _disk_full(exc, root / planned.local)
            if full is not None:
                stop_all(full)
            else:
                tally.failure(planned, f"{type(exc).__name__}: {exc}")
        else:
            tally.finished(planned, fetched, checked)

    def one_resource(files: list[PlannedFile]) -> None:
        done: dict[str, tuple[bool, bool]] = {}
        failed: dict[str, str] = {}
        error = ""
        for attempt in range(1, _ATTEMPTS + 1):
            if stop.is_set():
                return
            try:
                _fetch_zip(client, root, files, stop, done, failed)
                error = ""
                break
            except (LocalDiskFullError, CancelledError) as exc:
                stop_all(exc)
                return
            except (XnatError, OSError, UnzipError) as exc:
                full = _disk_full(exc, root) if isinstance(exc, OSError) else None
                if full is not None:
                    stop_all(full)
                    return
                error = exc.message if isinstance(exc, XnatError) else f"{type(exc).__name__}: {exc}"
                if not (isinstance(exc, XnatError) and exc.retryable) or attempt == _ATTEMPTS:
                    break
                log.warning("%s: %s; fetching it again (%d/%d)", files[0].scan, error, attempt, _ATTEMPTS - 1)
        if stop.is_set():
            return
        for planned in files:
            if planned.local in done:
                tally.finished(planned, *done[planned.local])
            else:
                tally.failure(planned, failed.get(planned.local) or error or "not fetched")

    with interruptible_pool(workers, "download", on_interrupt=client.cancel) as pool:
        if via == "zip":
            groups: dict[tuple[str, str], list[PlannedFile]] = {}
            for planned in plan.files:
                groups.setdefault((planned.scan, planned.resource), []).append(planned)
            for files in groups.values():
                pool.submit(one_resource, files)
        else:
            for planned in plan.files:
                pool.submit(one_file, planned)
    if fatal:
        raise fatal[0]
    return DownloadResult(
        experiment_id=plan.experiment_id,
        label=plan.label,
        project=plan.project,
        root=plan.root,
        scans=plan.scans,
        without_files=plan.without_files,
        files=len(plan.files),
        downloaded=tally.downloaded,
        already_present=tally.present,
        bytes_downloaded=tally.bytes_downloaded,
        digests_checked=tally.digests,
        failed=sorted(tally.failed, key=lambda f: f.local),
        seconds=round(time.monotonic() - started, 3),
        via=via,
        layout=plan.layout,
    )


def download_session(
    client: XnatClient,
    session: str | ArchivedSession,
    dest: str | Path,
    *,
    scans: str | Sequence[str] | None = None,
    resources: Sequence[str] | None = None,
    layout: Layout = "xnat",
    workers: int = 4,
    via: Via = "files",
    progress: ProgressCallback | None = None,
    on_plan: Callable[[DownloadPlan], None] | None = None,
) -> DownloadResult:
    """Download a session into ``dest/{label}``: ``plan_download`` then ``download_plan``.

    Args:
        client: A client on the server.
        session: An accession ID, ``P/S/E``, ``P/E`` or an ``ArchivedSession``.
        dest: The folder the session's folder goes under.
        scans: Scans by ID or type (``ALL`` or None: every one).
        resources: Resource labels to fetch (None: every one).
        layout: ``xnat`` (scans/ID/resources/LABEL/files/...) or ``flat`` (ID/...).
        workers: Parallel downloads.
        via: ``files`` (one request per file) or ``zip`` (one zip per scan resource, unpacked as it arrives).
        progress: Told of the bytes and files done.
        on_plan: Told the plan before anything is fetched.

    Returns:
        What was found, fetched and checked.
    """
    found = resolve_session(client, session) if isinstance(session, str) else session
    plan = plan_download(client, found, dest, scans=scans, resources=resources, layout=layout)
    if on_plan is not None:
        on_plan(plan)
    return download_plan(client, plan, workers=workers, via=via, progress=progress)
