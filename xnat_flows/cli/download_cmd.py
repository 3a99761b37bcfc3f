"""``xnat-flows session download``: a session's scan files out of XNAT, verified and resumable.

Calls the library (``transfer.download``) directly: no Prefect start-up cost. Exit codes as every
command (``cli.options``): 6 when files failed (a re-run fetches only those), 130 on Ctrl-C (a
re-run completes the download), 1 when the disk filled up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from xnat_flows.cli.options import EXIT_INTERRUPTED, EXIT_PARTIAL, Connection, JsonOption, warn, with_connection

INTERRUPTED = "interrupted: run the same command again to fetch the rest (complete files are kept)"


@with_connection
def download(
    session: Annotated[
        str,
        typer.Argument(help="Accession ID (XNAT_E00001), or PROJECT/SUBJECT/SESSION labels."),
    ],
    dest: Annotated[Path, typer.Argument(help="Directory to download into (the session gets a folder there).")],
    scans: Annotated[
        str, typer.Option("--scans", help="Scan IDs or types, comma-separated (1,2 or T1w), or ALL.")
    ] = "ALL",
    resources: Annotated[
        str | None,
        typer.Option("--resources", help="Resource labels, comma-separated (e.g. DICOM,NIFTI); default: all."),
    ] = None,
    layout: Annotated[
        Literal["xnat", "flat"],
        typer.Option(
            "--layout", help="xnat: SESSION/scans/ID/resources/LABEL/files/... as XNAT's zip; flat: SESSION/ID/..."
        ),
    ] = "xnat",
    workers: Annotated[int, typer.Option("--workers", min=1, max=64, help="Files fetched in parallel.")] = 4,
    via: Annotated[
        Literal["files", "zip"],
        typer.Option("--via", help="files: one request per file (faster); zip: one zip per scan resource."),
    ] = "files",
    as_json: JsonOption = False,
    *,
    connection: Connection,
) -> None:
    """Download a session's files, checked against XNAT's catalog.

    Each file's size and MD5 are compared with what XNAT lists. A re-run skips files already in
    place and verified, so an interrupted download resumes.
    """
    from xnat_flows.transfer.download import download_session

    labels = [r.strip() for r in resources.split(",") if r.strip()] if resources else None
    project = session.split("/", 1)[0] if "/" in session else None
    with connection.client(projects=(project,)) as client:
        try:
            result = download_session(
                client, session, dest, scans=scans, resources=labels, layout=layout, workers=workers, via=via
            )
        except KeyboardInterrupt:
            typer.secho(INTERRUPTED, err=True, fg=typer.colors.YELLOW)
            raise typer.Exit(EXIT_INTERRUPTED) from None
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
    else:
        rate = result.bytes_downloaded / 1e6 / result.seconds if result.seconds else 0.0
        typer.echo(
            f"{result.project}/{result.label} ({result.experiment_id}): {len(result.scans)} scan(s), "
            f"{result.files} file(s) -> {result.root}\n"
            f"  fetched {result.downloaded} file(s), {result.bytes_downloaded / 1e6:.1f} MB in "
            f"{result.seconds:.1f} s ({rate:.1f} MB/s); already in place {result.already_present}; "
            f"MD5 checked against XNAT's catalog: {result.digests_checked}"
        )
        if result.digests_checked < result.files - len(result.failed):
            warn(f"XNAT lists no MD5 for {result.files - result.digests_checked} file(s): checked by size only")
    if result.without_files:
        wanted = f" {', '.join(labels)}" if labels else ""
        warn(f"scan(s) without{wanted} files: {', '.join(result.without_files)}")
    if result.failed:
        for failure in result.failed[:20]:
            typer.secho(f"  failed: {failure.local}: {failure.error}", err=True, fg=typer.colors.RED)
        typer.secho(
            f"{len(result.failed)} file(s) failed; run the same command again to fetch them", err=True, fg="red"
        )
        raise typer.Exit(EXIT_PARTIAL)
