"""``xnat-flows resource upload``: attach a file or directory to a session or scan resource.

Calls the library directly (no Prefect start-up cost). Exit codes: see ``xnat_flows.cli.options``;
files XNAT already had and kept (no ``--overwrite``) exit with 5 (conflict) after the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from xnat_flows.cli.options import EXIT_CONFLICT, Connection, JsonOption, command_group, counted, with_connection

app = command_group(help="Upload non-DICOM files and directories to session or scan resources.")


@app.command("upload")
@with_connection
def upload_command(
    session: Annotated[str, typer.Argument(help="Experiment ID (XNAT_E00001), or the session label with --project.")],
    label: Annotated[str, typer.Argument(help="Resource label, e.g. BIDS, NIFTI, SNAPSHOTS (created when missing).")],
    path: Annotated[
        Path, typer.Argument(exists=True, help="File, or directory (zipped on the fly, extracted by XNAT).")
    ],
    scan: Annotated[
        str | None, typer.Option("--scan", help="Attach to this scan's resource instead of the session's.")
    ] = None,
    project: Annotated[str | None, typer.Option("--project", "-P", help="Project ID, when SESSION is a label.")] = None,
    subject: Annotated[
        str | None, typer.Option("--subject", "-S", help="Subject label (optional with --project).")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace files XNAT already has.")] = False,
    as_json: JsonOption = False,
    *,
    connection: Connection,
) -> None:
    """Upload PATH to resource LABEL of SESSION (or of one of its scans)."""
    from xnat_flows.client.archive import is_valid_label  # the rule session labels follow
    from xnat_flows.client.errors import InputError
    from xnat_flows.manage.resources import ResourceTarget, upload_resource

    if subject and not project:
        raise typer.BadParameter("--subject needs --project.", param_hint="--subject")
    if not is_valid_label(label):
        raise InputError(
            f"Invalid resource label {label!r}",
            hint="XNAT labels allow only letters, digits, '_' and '-' (e.g. BIDS, NIFTI, SNAPSHOTS)",
        )
    target = ResourceTarget(session=session, project=project, subject=subject, scan=scan)
    with connection.client(projects=(project,)) as client:
        result = upload_resource(client, target, label, path, overwrite=overwrite)
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
    else:
        how = "zipped and extracted by XNAT" if result.extracted else "as is"
        typer.echo(
            f"Sent {counted(len(result.files), 'file')}, {result.bytes_sent / 1e6:.2f} MB ({how}), to {result.resource_uri}"
        )
        for item in result.skipped:
            typer.echo(f"  not sent: {item.path} ({item.reason})", err=True)
    if result.duplicates:
        typer.secho(
            f"{counted(len(result.duplicates), 'file')} already in XNAT, kept as they were: {', '.join(result.duplicates[:20])}"
            + (" ..." if len(result.duplicates) > 20 else "")
            + "\nRe-run with --overwrite to replace them.",
            err=True,
            fg=typer.colors.YELLOW,
        )
        raise typer.Exit(EXIT_CONFLICT)
