"""``xnat-flows prearchive``: list, archive, delete and move prearchive sessions.

Calls the library directly (no Prefect start-up cost). Exit codes: see ``xnat_flows.cli.options``.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Annotated

import typer

from xnat_flows.cli.options import (
    JsonOption,
    PasswordOption,
    PasswordStdinOption,
    ProfileOption,
    UrlOption,
    UserOption,
    print_table,
    xnat_session,
)

app = typer.Typer(no_args_is_help=True, help="List, archive, delete and move prearchive sessions.")

ProjectArg = Annotated[str, typer.Argument(help="Project ID.")]
TimestampArg = Annotated[str, typer.Argument(help="Prearchive timestamp, as listed (e.g. 20240115_120000123).")]
NameArg = Annotated[str, typer.Argument(help="Session folder name, as listed.")]

_LIST_COLUMNS = ["project", "timestamp", "folderName", "name", "subject", "status", "scan_date"]


class OverwriteChoice(str, Enum):
    append = "append"
    delete = "delete"


@app.command("list")
def list_command(
    project: Annotated[str | None, typer.Option("--project", "-P", help="Only this project.")] = None,
    as_json: JsonOption = False,
    url: UrlOption = None,
    username: UserOption = None,
    password: PasswordOption = None,
    password_stdin: PasswordStdinOption = False,
    profile: ProfileOption = None,
) -> None:
    """List prearchive sessions (all projects you can see, or one)."""
    from xnat_flows.client.prearchive import list_sessions

    with xnat_session(url, username, password, profile, password_stdin=password_stdin) as client:
        sessions = list_sessions(client, project)
    rows = [s.model_dump(by_alias=True) for s in sessions]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    elif rows:
        print_table(rows, _LIST_COLUMNS)
    else:
        typer.echo("The prearchive is empty" + (f" for project {project}." if project else "."))


@app.command("archive")
def archive_command(
    project: ProjectArg,
    timestamp: TimestampArg,
    name: NameArg,
    subject: Annotated[str | None, typer.Option("--subject", "-S", help="Subject label in the archive.")] = None,
    label: Annotated[str | None, typer.Option("--label", "-E", help="Session label in the archive.")] = None,
    overwrite: Annotated[
        OverwriteChoice | None,
        typer.Option("--overwrite", help="If the session already exists: append (merge) or delete (replace overlapping files)."),
    ] = None,
    wait_seconds: Annotated[
        float, typer.Option("--wait-seconds", min=0, help="Wait this long while XNAT is still receiving/building the session.")
    ] = 300.0,
    as_json: JsonOption = False,
    url: UrlOption = None,
    username: UserOption = None,
    password: PasswordOption = None,
    password_stdin: PasswordStdinOption = False,
    profile: ProfileOption = None,
) -> None:
    """Archive a prearchive session, optionally under another subject and label."""
    from xnat_flows.client.prearchive import archive_session

    def say_waiting(message: str) -> None:
        typer.echo(message, err=True)

    with xnat_session(url, username, password, profile, password_stdin=password_stdin) as client:
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
def delete_command(
    project: ProjectArg,
    timestamp: TimestampArg,
    name: NameArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    url: UrlOption = None,
    username: UserOption = None,
    password: PasswordOption = None,
    password_stdin: PasswordStdinOption = False,
    profile: ProfileOption = None,
) -> None:
    """Delete a prearchive session and its files."""
    from xnat_flows.manage.prearchive import delete_session, prearchive_src

    src = prearchive_src(project, timestamp, name)
    if not yes:
        typer.confirm(f"Delete prearchive session {src} and its files?", abort=True)
    with xnat_session(url, username, password, profile, password_stdin=password_stdin) as client:
        delete_session(client, project, timestamp, name)
    typer.echo(f"Deleted {src}.")


@app.command("move")
def move_command(
    project: ProjectArg,
    timestamp: TimestampArg,
    name: NameArg,
    new_project: Annotated[str, typer.Argument(help="Project whose prearchive receives the session.")],
    url: UrlOption = None,
    username: UserOption = None,
    password: PasswordOption = None,
    password_stdin: PasswordStdinOption = False,
    profile: ProfileOption = None,
) -> None:
    """Move a prearchive session to another project's prearchive."""
    from xnat_flows.manage.prearchive import move_session

    with xnat_session(url, username, password, profile, password_stdin=password_stdin) as client:
        uri = move_session(client, project, timestamp, name, new_project)
    typer.echo(f"Moved to {uri}")
