"""Flow ``process-xnat-session``: convert an archived session's DICOM scans to NIfTI and attach them.

Started by the ``xnat.session.archived`` trigger of the ``process-session`` deployment
(prefect.yaml) with the event's project, subject and experiment ID. For each scan with DICOM
files it downloads the DICOM (verified against XNAT's catalog) into a scratch directory, runs
dcm2niix, uploads the NIfTI volume and its JSON sidecar, named BIDS-style, as resource ``NIFTI``
of that scan, and finally emits ``xnat.session.processed`` naming what it produced.

* **Idempotent.** A scan that already has a ``NIFTI`` resource is skipped (said in the log and the
  artifact); ``options.replace`` converts it again and replaces its files. A re-run over a
  processed session changes nothing and emits nothing.
* **Failures are named.** A scan dcm2niix cannot convert is listed with dcm2niix's own message; the
  other scans are still converted and attached, and the run ends Failed naming the scan(s).
* **Nothing left behind.** The scratch directory is removed on every path (each scan's files as
  soon as the scan is done).
* **A session without DICOM** is said ("nothing to convert") and the run Completes.
* **dcm2niix missing**: the run fails before downloading anything, saying which extra to install.

The steps are the building blocks of ``tasks.processing`` (read the scans, choose, download a scan,
convert) and ``tasks.resources.upload_resource_task`` (attach): copy this flow to build another
pipeline. Each scan's steps hold a slot of the global concurrency limit ``xnat-processing:<host:port>``
when the site created it (docs/processing.md).
"""

from __future__ import annotations

import shutil
from typing import Annotated, Literal

from prefect import flow, get_run_logger, tags
from pydantic import BaseModel, Field

from xnat_flows.client.errors import XnatError
from xnat_flows.events import SessionRef, emit_session_processed
from xnat_flows.flows.failures import failed_run
from xnat_flows.flows.prearchive import publish_markdown
from xnat_flows.manage.resources import ResourceTarget, delete_resource_files, list_resource_files
from xnat_flows.models import ON_THE_WORKER, PROJECT_ID_PATTERN, XnatConnection, ui_title
from xnat_flows.processing import nifti
from xnat_flows.processing.scratch import ToolFailedError, scratch_directory
from xnat_flows.tasks.connection import credentials_for, open_client
from xnat_flows.tasks.prearchive import xnat_tag
from xnat_flows.tasks.processing import (
    ScanInfo,
    SessionScans,
    choose_scans,
    convert_scan_task,
    download_scan_task,
    processing_slot,
    read_session_scans,
)
from xnat_flows.tasks.resources import upload_resource_task


class ConversionFailedError(XnatError):
    """Scans of a session could not be converted (each named with the converter's message)."""

    default_hint = "Check those scans in XNAT (are they images?); the other scans were converted and attached"


class ProcessingOptions(BaseModel):
    """How to process: which scans, where the results go, what to do with earlier results."""

    scans: list[str] = Field(
        default_factory=list,
        title="Scans",
        description="Scan IDs or types to convert; empty: every scan with DICOM files.",
    )
    resource: str = Field(
        default="NIFTI",
        pattern=r"^[A-Za-z0-9_-]+$",
        title="Result resource label",
        description="Label of the scan resource the results go to.",
    )
    replace: bool = Field(
        default=False,
        title="Replace earlier results",
        description="Convert scans that already have the resource again and replace its files; off: skip them.",
    )
    scratch_dir: str = Field(
        default="",
        title="Scratch folder (on the worker's host)",
        description=f"Where the scratch directory is made, {ON_THE_WORKER}; empty: the system's temp directory.",
    )
    timeout_seconds: float = Field(
        default=3600.0, gt=0, title="Timeout per scan (s)", description="Longest dcm2niix may take for one scan."
    )


class ScanOutcome(BaseModel):
    """What became of one scan: converted (with the files attached), skipped, or failed (with why)."""

    scan: str
    type: str = ""
    series_description: str = ""
    status: Literal["converted", "skipped", "failed"]
    files: list[str] = Field(default_factory=list, description="Files attached (converted)")
    message: str = ""


class ProcessingResult(BaseModel):
    """One processed session: each chosen scan's outcome, and the chosen scans without DICOM files."""

    project: str
    subject: str
    experiment_id: str
    label: str
    resource: str
    scans: list[ScanOutcome] = Field(default_factory=list)
    without_dicom: list[str] = Field(default_factory=list, description="Chosen scans with no DICOM files")

    def with_status(self, status: str) -> list[ScanOutcome]:
        """The scans whose outcome is ``status`` (converted, skipped or failed)."""
        return [s for s in self.scans if s.status == status]


def _convert_one(
    connection: XnatConnection, session: SessionScans, scan: ScanInfo, options: ProcessingOptions, scratch: str
) -> ScanOutcome:
    """Download, convert, attach one scan inside ``scratch``; the scan's files are removed after."""
    from pathlib import Path

    root = Path(scratch)
    dicom_root, out_dir = root / "dicom", root / "nifti" / scan.id
    stem = nifti.bids_stem(session.subject, session.label, scan.id, scan.series_description or scan.type)
    suffix = nifti.bids_suffix(scan.type, scan.series_description, scan.modality)
    outcome = ScanOutcome(scan=scan.id, type=scan.type, series_description=scan.series_description, status="failed")
    try:
        with processing_slot(connection):
            fetched = download_scan_task(connection, session.experiment_id, scan.id, str(dicom_root))
            converted = convert_scan_task(
                str(Path(fetched.root) / scan.id), str(out_dir), stem, suffix, options.timeout_seconds
            )
            target = ResourceTarget(session=session.experiment_id, scan=scan.id)
            upload_resource_task(connection, target, options.resource, str(out_dir), overwrite=options.replace)
            if options.replace:  # earlier outputs under other names would be left beside the new ones
                with open_client(connection) as client:
                    stale = [
                        f.path
                        for f in list_resource_files(client, target, options.resource)
                        if f.path not in converted.files
                    ]
                    delete_resource_files(client, target, options.resource, stale)
        outcome.status, outcome.files = "converted", converted.files
    except ToolFailedError as exc:  # dcm2niix's own message: the scan is named, the others go on
        outcome.message = exc.message
    finally:
        shutil.rmtree(dicom_root, ignore_errors=True)
        shutil.rmtree(out_dir, ignore_errors=True)
    return outcome


@flow(name="process-xnat-session", validate_parameters=True, flow_run_name="process {project}/{experiment_id}")
def process_xnat_session(
    project: Annotated[str, ui_title("Project ID", pattern=PROJECT_ID_PATTERN)],
    experiment_id: Annotated[str, ui_title("Experiment", min_length=1)],
    subject: Annotated[str | None, ui_title("Subject label")] = None,
    connection: Annotated[XnatConnection, ui_title("XNAT connection")] = XnatConnection(),
    options: Annotated[ProcessingOptions, ui_title("Processing options")] = ProcessingOptions(),
) -> ProcessingResult:
    """Convert an archived session's DICOM scans to NIfTI (dcm2niix) and attach them to each scan.

    Args:
        project: XNAT project ID of the session.
        experiment_id: Experiment accession ID (XNAT_E00001), or the session label.
        subject: Subject label (optional; read from XNAT when empty). Used in the BIDS-style file names.
        connection: The xnat-credentials Block (the trigger passes the one named by XNAT_CREDENTIALS_BLOCK at deploy time).
        options: Which scans, the result resource's label, replace or skip earlier results, scratch place, timeout.

    Returns:
        Each chosen scan's outcome; the run ends Failed when a scan failed.
    """
    logger = get_run_logger()
    try:
        with tags(xnat_tag(connection)):
            session = read_session_scans(connection, f"{project}/{experiment_id}", subject or None)
            chosen, without = choose_scans(session, options.scans or None, resource="DICOM")
            result = ProcessingResult(
                project=session.project,
                subject=session.subject,
                experiment_id=session.experiment_id,
                label=session.label,
                resource=options.resource,
                without_dicom=[s.id for s in without],
            )
            if not chosen:
                logger.info(
                    "%s/%s (%s) has no scan with DICOM files: nothing to convert",
                    project,
                    session.label,
                    session.experiment_id,
                )
                _publish(result)
                return result
            pending = []
            for scan in chosen:
                # An empty result resource (a run stopped between creating it and uploading) is not a result.
                if scan.has_files(options.resource) and not options.replace:
                    logger.info("scan %s already has %s: skipped (replace: false)", scan.id, options.resource)
                    result.scans.append(
                        ScanOutcome(
                            scan=scan.id,
                            type=scan.type,
                            series_description=scan.series_description,
                            status="skipped",
                            message=f"already has {options.resource}",
                        )
                    )
                else:
                    pending.append(scan)
            if pending:
                nifti.find_dcm2niix()  # missing: fail before downloading anything, saying what to install
                with scratch_directory("xnat-process-", options.scratch_dir or None) as scratch:
                    for scan in pending:
                        outcome = _convert_one(connection, session, scan, options, str(scratch))
                        if outcome.status == "failed":
                            logger.error("scan %s (%s) not converted: %s", scan.id, scan.type, outcome.message)
                        result.scans.append(outcome)
            order = {scan.id: index for index, scan in enumerate(session.scans)}
            result.scans.sort(key=lambda outcome: order.get(outcome.scan, len(order)))
            converted = result.with_status("converted")
            if converted:
                emit_session_processed(
                    SessionRef(
                        server_url=credentials_for(connection).url,
                        project=session.project,
                        subject=session.subject,
                        session_label=session.label,
                        experiment_id=session.experiment_id,
                        uri=f"/data/experiments/{session.experiment_id}",
                    ),
                    {
                        "resource": options.resource,
                        "produced": {s.scan: s.files for s in converted},
                        "skipped": [s.scan for s in result.with_status("skipped")],
                        "failed": {s.scan: s.message for s in result.with_status("failed")},
                        "tool": "dcm2niix",
                    },
                )
            _publish(result)
            failed = result.with_status("failed")
            if failed:
                raise ConversionFailedError(
                    f"{len(failed)} of {len(chosen)} scan(s) of {session.label} not converted: "
                    + "; ".join(f"scan {s.scan} ({s.type or '?'}): {s.message}" for s in failed)
                )
            logger.info(
                "%s: %d scan(s) converted, %d skipped (already had %s)",
                session.label,
                len(converted),
                len(result.with_status("skipped")),
                options.resource,
            )
            return result
    except XnatError as exc:
        return failed_run(exc)  # the cause once, as the run's state; the caller still gets exc raised


def _publish(result: ProcessingResult) -> None:
    lines = [
        f"**{result.project}/{result.subject}/{result.label}** (`{result.experiment_id}`) -> resource `{result.resource}`",
        "",
    ]
    if not result.scans:
        lines.append("No scan with DICOM files: nothing to convert.")
    else:
        lines += ["| scan | type | status | files / message |", "|---|---|---|---|"]
        lines += [
            f"| {s.scan} | {s.type} | {s.status} | {', '.join(f'`{f}`' for f in s.files) or s.message} |"
            for s in result.scans
        ]
    if result.without_dicom:
        lines += ["", f"Scans without DICOM files: {', '.join(result.without_dicom)}"]
    publish_markdown("\n".join(lines), description="NIfTI conversion of the session")
