"""``xnat-flows prearchive``: list, archive, delete and move prearchive sessions.

Calls the library directly (no Prefect start-up cost). Exit codes: see ``xnat_flows.cli.options``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Annotated

import typer

from xnat_flows.cli.options import Connection, JsonOption, command_group, print_table, with_connection

app = command_group(help="List, archive, delete and move prearchive sessions.")

ProjectArg = Annotated[str, typer.Argument(help="Project ID.")]
TimestampArg = Annotated[str, typer.Argument(help="Prearchive timestamp, as listed (e.g. 20240115_120000123).")]
NameArg = Annotated[str, typer.Argument(help="Session folder name, as listed.")]

_LIST_COLUMNS = ["project", "timestamp", "folderName", "name", "subject", "status", "scan_date"]


class OverwriteChoice(StrEnum):
    append = "append"
    delete = "delete"


@app.command("list")
@with_connection
def list_command(
    project: Annotated[str | None, typer.Option("--project", "-P", help="Only this project.")] = None,
    as_json: JsonOption = False,
    *,
    connection: Connection,
) -> None:
    """List prearchive sessions (all projects you can see, or one)."""
    from xnat_flows.client.prearchive import list_sessions

    with connection.client(projects=(project,)) as client:
        sessions = list_sessions(client, project)
    rows = [s.model_dump(by_alias=True) for s in sessions]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    elif rows:
        print_table(rows, _LIST_COLUMNS)
    else:
        typer.echo(
            "The prearchive is empty"
            + (f" for project {project}" if project else "")
            + ": Direct-Archive uploads (the default of `xnat-flows session upload`) go straight to the archive "
            "and never pass through it; upload with --prearchive to stage a session here for review."
        )


@contextmanager
def conflict_advice(overwrite: str | None) -> Iterator[None]:
    """A conflict's advice, matching the --overwrite the user already chose."""
    from xnat_flows.client.errors import ConflictError

    try:
        yield
    except ConflictError as exc:
        if overwrite is None:
            exc.hint = (
                "The session already exists in the archive: re-run with --overwrite append (adds scans and "
                "files) or --overwrite delete (also replaces overlapping files), or give another label with -E"
            )
        elif overwrite == "append":
            exc.hint = (
                "XNAT refused to append (its message says why): re-run with --overwrite delete to replace "
                "the overlapping files, or archive under another label with -E"
            )
        else:
            exc.hint = (
                "XNAT refused even --overwrite delete (its message says why, e.g. another subject or study): "
                "archive under another label with -E, or under the right subject with -S"
            )
        raise


@app.command("archive")
@with_connection
def archive_command(
    project: ProjectArg,
    timestamp: TimestampArg,
    name: NameArg,
    subject: Annotated[str | None, typer.Option("--subject", "-S", help="Subject label in the archive.")] = None,
    label: Annotated[str | None, typer.Option("--label", "-E", help="Session label in the archive.")] = None,
    overwrite: Annotated[
        OverwriteChoice | None,
        typer.Option(
            "--overwrite", help="If the session already exists: append (merge) or delete (replace overlapping files)."
        ),
    ] = None,
    wait_seconds: Annotated[
        float,
        typer.Option(
            "--wait-seconds", min=0, help="Wait this long while XNAT is still receiving/building the session."
        ),
    ] = 300.0,
    as_json: JsonOption = False,
    *,
    connection: Connection,
) -> None:
    """Archive a prearchive session (optionally relabelled)."""
    from xnat_flows.client.prearchive import archive_session

    def say_waiting(message: str) -> None:
        typer.echo(message, err=True)

    with connection.client(projects=(project,)) as client, conflict_advice(overwrite.value if overwrite else None):
        outcome = archive_session(
            client,
            project,
            timestamp,
            name,
            subject=subject,
            label=label,
            overwrite=overwrite.value if overwrite else None,
            wait_seconds=wait_seconds,
            on_wait=say_waiting,
        )
    if as_json:
        typer.echo(outcome.model_dump_json(indent=2))
    elif outcome.already_archived:
        typer.echo(f"Already archived: {outcome.archive_uri} (nothing to do).")
    else:
        typer.echo(f"Archived: {outcome.archive_uri}")


@app.command("delete")
@with_connection
def delete_command(
    project: ProjectArg,
    timestamp: TimestampArg,
    name: NameArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    *,
    connection: Connection,
) -> None:
    """Delete a prearchive session and its files."""
    from xnat_flows.manage.prearchive import delete_session, prearchive_src

    src = prearchive_src(project, timestamp, name)
    if not yes:
        typer.confirm(f"Delete prearchive session {src} and its files?", abort=True)
    with connection.client(projects=(project,)) as client:
        delete_session(client, project, timestamp, name)
    typer.echo(f"Deleted {src}.")


@app.command("move")
@with_connection
def move_command(
    project: ProjectArg,
    timestamp: TimestampArg,
    name: NameArg,
    new_project: Annotated[str, typer.Argument(help="Project whose prearchive receives the session.")],
    *,
    connection: Connection,
) -> None:
    """Move a prearchive session to another project's prearchive."""
    from xnat_flows.manage.prearchive import move_session

    with connection.client(projects=(project, new_project)) as client:
        uri = move_session(client, project, timestamp, name, new_project)
    typer.echo(f"Moved to {uri}")
