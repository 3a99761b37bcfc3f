"""Prefect building blocks for processing pipelines.

Read a session's scans and choose some, download a scan or a whole session, run a tool in a
scratch directory, convert DICOM to NIfTI. Attaching results is
``tasks.resources.upload_resource_task``.

Each task opens its own client from an ``XnatConnection`` (no secret in its inputs) and retries
only failures a later attempt can fix. Steps that load the server or the worker hold a slot of
the site's global concurrency limit ``xnat-processing:<host:port>`` when it exists
(``processing_slot``): ``prefect gcl create xnat-processing:xnat.example.org:443 --limit 2``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from xnat_flows.client.archive import item_fields, resolve_session
from xnat_flows.client.catalog import list_resources
from xnat_flows.client.errors import NotFoundError, XnatError
from xnat_flows.models import XnatConnection
from xnat_flows.processing import nifti
from xnat_flows.processing.scratch import ToolRun, run_tool
from xnat_flows.tasks.connection import credentials_for, open_client
from xnat_flows.tasks.hints import speaks_to_operator
from xnat_flows.tasks.policies import (
    ResultOptions,
    RetryOptions,
    existing_processing_limit,
    retry_unless_permanent,
    upload_slot,
)
from xnat_flows.transfer import download as dl

_COMMON: ResultOptions = {"cache_policy": NO_CACHE, "persist_result": False}
_RETRYING: RetryOptions = {
    "retries": 2,
    "retry_delay_seconds": [10, 60],
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_unless_permanent,
}


class DownloadIncompleteError(XnatError):
    """Files of a download failed (listed); a re-run fetches only those."""

    default_hint = "Run the step again: complete files are kept and only the failed ones are fetched"


class ScanInfo(BaseModel):
    """One scan of a session, as XNAT describes it."""

    id: str
    type: str = ""
    series_description: str = ""
    modality: str = ""
    frames: int | None = Field(default=None, description="Frames XNAT counted (else the DICOM resource's file count)")
    resources: dict[str, int | None] = Field(
        default_factory=dict, description="Resource label -> number of files (None: XNAT did not say)"
    )

    def has_files(self, resource: str) -> bool:
        """Whether the scan has ``resource`` with files (a resource whose count XNAT left empty counts).

        Args:
            resource: The resource's label.

        Returns:
            True when it has files, or XNAT did not say how many.
        """
        return resource in self.resources and self.resources[resource] != 0


class SessionScans(BaseModel):
    """A session and each of its scans (``read_session_scans``)."""

    project: str
    subject: str = Field(default="", description="Subject label")
    experiment_id: str
    label: str
    scans: list[ScanInfo] = Field(default_factory=list)


@contextmanager
def processing_slot(connection: XnatConnection) -> Iterator[None]:
    """Hold one slot of ``xnat-processing:<host:port>`` while a step runs, when the site created that limit.

    Args:
        connection: The XNAT server and how to log in (a Block, or fields).

    Yields:
        Nothing: the slot is held until the block ends.
    """
    with upload_slot(existing_processing_limit(credentials_for(connection).url)):
        yield


@task(name="read-session-scans", timeout_seconds=300, **_COMMON, **_RETRYING)
@speaks_to_operator
def read_session_scans(connection: XnatConnection, session: str, subject: str | None = None) -> SessionScans:
    """The session with each scan's type, series description, frames and resources.

    Args:
        connection: The XNAT server and how to log in (a Block, or fields).
        session: An accession ID, ``P/E`` or ``P/S/E``.
        subject: The subject's label, when known (else read from XNAT).

    Returns:
        The session and its scans (resource label -> file count).
    """
    with open_client(connection) as client:
        found = resolve_session(client, session)
        if not subject and found.subject_id:
            try:
                subject = item_fields(client.get_json(f"/data/subjects/{quote(found.subject_id, safe='')}")).get(
                    "label"
                )
            except NotFoundError:
                subject = None
        scans = []
        for scan in found.scans:
            resources = list_resources(client, dl.scan_url(found.experiment_id, scan.id))
            counts = {r.label: r.file_count for r in resources}
            scans.append(
                ScanInfo(
                    id=scan.id,
                    type=scan.type,
                    series_description=scan.series_description,
                    modality=scan.modality,
                    frames=scan.frames if scan.frames is not None else counts.get("DICOM"),
                    resources=counts,
                )
            )
    return SessionScans(
        project=found.project,
        subject=subject or found.subject_id,
        experiment_id=found.experiment_id,
        label=found.label,
        scans=scans,
    )


def choose_scans(
    session: SessionScans, scans: str | Sequence[str] | None = None, *, resource: str | None = "DICOM"
) -> tuple[list[ScanInfo], list[ScanInfo]]:
    """The scans named by ID or type that hold files in ``resource``, and those named that do not.

    Args:
        session: The session's scans (``read_session_scans``).
        scans: Scan IDs or types (``None``/``ALL``: every one).
        resource: The resource a chosen scan must hold files in (None: no condition).

    Returns:
        (chosen, without the resource).

    Raises:
        InputError: A name matches no scan.
    """
    from xnat_flows.client.archive import ArchivedScan

    named = {s.id for s in dl.choose_scans([ArchivedScan(id=s.id, type=s.type) for s in session.scans], scans)}
    picked = [s for s in session.scans if s.id in named]
    if resource is None:
        return picked, []
    return [s for s in picked if s.has_files(resource)], [s for s in picked if not s.has_files(resource)]


@task(name="download-scan", timeout_seconds=6 * 3600, **_COMMON, **_RETRYING)
@speaks_to_operator
def download_scan_task(
    connection: XnatConnection,
    experiment_id: str,
    scan: str,
    dest: str,
    resources: Sequence[str] | None = ("DICOM",),
    layout: dl.Layout = "flat",
    workers: int = 4,
) -> dl.DownloadResult:
    """Download one scan's resources into ``dest/{session label}``, verified against XNAT's catalog.

    A retry fetches only what is missing.

    Args:
        connection: The XNAT server and how to log in (a Block, or fields).
        experiment_id: The session's accession ID.
        scan: The scan's ID.
        dest: The folder the session's folder goes under.
        resources: Resource labels to fetch (default: DICOM; None: every one).
        layout: ``flat`` (ID/...) or ``xnat`` (scans/ID/resources/LABEL/files/...).
        workers: Parallel downloads.

    Returns:
        What was found, fetched and checked.
    """
    return _download(connection, experiment_id, dest, scan, resources, layout, workers)


@task(name="download-session", timeout_seconds=12 * 3600, **_COMMON, **_RETRYING)
@speaks_to_operator
def download_session_task(
    connection: XnatConnection,
    session: str,
    dest: str,
    scans: str | Sequence[str] | None = None,
    resources: Sequence[str] | None = None,
    layout: dl.Layout = "xnat",
    workers: int = 4,
) -> dl.DownloadResult:
    """Download a session's scans and resources into ``dest``, verified against XNAT's catalog.

    Args:
        connection: The XNAT server and how to log in (a Block, or fields).
        session: An accession ID, ``P/E`` or ``P/S/E``.
        dest: The folder the session's folder goes under.
        scans: Scan IDs or types (None: every one).
        resources: Resource labels (None: every one).
        layout: ``xnat`` (scans/ID/resources/LABEL/files/...) or ``flat`` (ID/...).
        workers: Parallel downloads.

    Returns:
        What was found, fetched and checked.
    """
    return _download(connection, session, dest, scans, resources, layout, workers)


def _download(
    connection: XnatConnection,
    session: str,
    dest: str,
    scans: str | Sequence[str] | None,
    resources: Sequence[str] | None,
    layout: dl.Layout,
    workers: int,
) -> dl.DownloadResult:
    logger = get_run_logger()
    with open_client(connection) as client:
        result = dl.download_session(
            client, session, dest, scans=scans, resources=resources, layout=layout, workers=workers
        )
    logger.info(
        "%s: %d file(s) fetched (%.1f MB), %d already in place, %d MD5 checked -> %s",
        result.label,
        result.downloaded,
        result.bytes_downloaded / 1e6,
        result.already_present,
        result.digests_checked,
        result.root,
    )
    if result.failed:
        shown = "; ".join(f"{f.local}: {f.error}" for f in result.failed[:5])
        raise DownloadIncompleteError(f"{len(result.failed)} file(s) of {result.label} failed: {shown}")
    return result


@task(name="run-tool", **_COMMON)
def run_tool_task(args: list[str], cwd: str, timeout_seconds: float = 3600.0) -> ToolRun:
    """Run a command-line tool in ``cwd`` (e.g. a scratch directory).

    The task fails with the end of the tool's output when it exits non-zero or runs past
    ``timeout_seconds``.

    Args:
        args: The command and its arguments.
        cwd: The working directory.
        timeout_seconds: How long it may run.

    Returns:
        The run: its arguments, exit code, output (the end of it when long) and duration.
    """
    run = run_tool(args, cwd, timeout=timeout_seconds)
    get_run_logger().info("%s finished in %.1f s", Path(args[0]).name, run.seconds)
    return run


@task(name="convert-to-nifti", **_COMMON)
def convert_scan_task(
    dicom_dir: str, out_dir: str, stem: str, suffix: str, timeout_seconds: float = 3600.0
) -> nifti.ConvertedScan:
    """dcm2niix on one scan's DICOM folder; outputs named ``{stem}_{suffix}`` (.nii.gz, .json, ...).

    Args:
        dicom_dir: The scan's DICOM files.
        out_dir: Where the outputs go.
        stem: The outputs' name stem (BIDS-style entities).
        suffix: The BIDS suffix, e.g. ``T1w``.
        timeout_seconds: How long dcm2niix may run.

    Returns:
        The files written.
    """
    converted = nifti.convert_series(Path(dicom_dir), Path(out_dir), stem=stem, suffix=suffix, timeout=timeout_seconds)
    get_run_logger().info("dcm2niix wrote %s", ", ".join(converted.files))
    return converted
