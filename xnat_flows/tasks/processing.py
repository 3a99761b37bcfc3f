"""Prefect building blocks for processing pipelines: read a session's scans and choose some,
download a scan or a whole session, run a tool in a scratch directory, convert DICOM to NIfTI.
Attaching results is ``tasks.resources.upload_resource_task``.

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
        """Whether the scan has ``resource`` with files (a resource whose count XNAT left empty counts)."""
        return resource in self.resources and self.resources[resource] != 0


class SessionScans(BaseModel):
    project: str
    subject: str = Field(default="", description="Subject label")
    experiment_id: str
    label: str
    scans: list[ScanInfo] = Field(default_factory=list)


@contextmanager
def processing_slot(connection: XnatConnection) -> Iterator[None]:
    """Hold one slot of ``xnat-processing:<host:port>`` while a step runs, when the site created that limit."""
    with upload_slot(existing_processing_limit(credentials_for(connection).url)):
        yield


@task(name="read-session-scans", timeout_seconds=300, **_COMMON, **_RETRYING)
@speaks_to_operator
def read_session_scans(connection: XnatConnection, session: str, subject: str | None = None) -> SessionScans:
    """The session (accession ID, P/E or P/S/E) with each scan's type, series description, frames
    and resources (label -> file count)."""
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
    """(chosen, without the resource): the scans named by ID or type (``None``/``ALL``: every one)
    that hold files in ``resource``, and those named that do not. An unknown name is an ``InputError``."""
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
    """Download one scan's resources (default: DICOM) into ``dest/{session label}``, verified against
    XNAT's catalog; a retry fetches only what is missing."""
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
    """Download a session's scans (IDs or types; None: all) and resources (None: all) into ``dest``."""
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
    """Run a command-line tool in ``cwd`` (e.g. a scratch directory); Failed with the end of its
    output when it exits non-zero or runs past ``timeout_seconds``."""
    run = run_tool(args, cwd, timeout=timeout_seconds)
    get_run_logger().info("%s finished in %.1f s", Path(args[0]).name, run.seconds)
    return run


@task(name="convert-to-nifti", **_COMMON)
def convert_scan_task(
    dicom_dir: str, out_dir: str, stem: str, suffix: str, timeout_seconds: float = 3600.0
) -> nifti.ConvertedScan:
    """dcm2niix on one scan's DICOM folder; outputs named ``{stem}_{suffix}`` (.nii.gz, .json, ...)."""
    converted = nifti.convert_series(Path(dicom_dir), Path(out_dir), stem=stem, suffix=suffix, timeout=timeout_seconds)
    get_run_logger().info("dcm2niix wrote %s", ", ".join(converted.files))
    return converted
