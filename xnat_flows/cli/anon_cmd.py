"""``xnat-flows anon``: check a DicomEdit 6 script or the DICOM Basic Profile against a folder."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer

from xnat_flows.cli.options import EXIT_FAILURE, EXIT_USAGE, JsonOption, command_group, error

app = command_group(help="De-identify: check a DicomEdit script or a profile on your data.")


def parse_variables(pairs: list[str]) -> dict[str, str]:
    variables: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"{pair!r}: use NAME=VALUE, e.g. subject=S01", param_hint="--var")
        variables[name.strip()] = value
    return variables


@app.command("check")
def check(
    folder: Annotated[Path, typer.Argument(help="Folder of DICOM files (searched recursively, as an upload is).")],
    script: Annotated[
        Path | None,
        typer.Option(
            "--script",
            "--anon-script",
            exists=True,
            dir_okay=False,
            readable=True,
            help="A DicomEdit 6 script (XNAT's site or project anonymization script).",
        ),
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option(
            "--profile",
            "--anon-profile",
            help="DICOM's Basic Profile (PS3.15 Annex E): basic[,option...] (e.g. basic,retain-uids).",
        ),
    ] = None,
    option: Annotated[
        list[str],
        typer.Option(
            "--option",
            help="Basic Profile option, repeatable: retain-uids, retain-longitudinal-full-dates, "
            "retain-patient-characteristics, retain-device-identity, retain-institution-identity, clean-descriptors.",
        ),
    ] = [],  # noqa: B006 - typer reads the default
    from_server: Annotated[
        bool,
        typer.Option(
            "--anon-from-server",
            help="XNAT's enabled site and project scripts, fetched from the server (what `session upload "
            "--anon-from-server` applies; -P names the project).",
        ),
    ] = False,
    project: Annotated[
        str | None,
        typer.Option("--project", "-P", help="The project the upload goes to: its script, and the variable project."),
    ] = None,
    subject: Annotated[
        str | None, typer.Option("--subject", "-S", help="The subject label: the variable subject.")
    ] = None,
    session: Annotated[
        str | None, typer.Option("--session", "-E", help="The session label: the variable session.")
    ] = None,
    var: Annotated[
        list[str],
        typer.Option(
            "--var", help="A script variable, NAME=VALUE, repeatable (XNAT passes project, subject, session)."
        ),
    ] = [],  # noqa: B006
    allow: Annotated[
        list[str],
        typer.Option(
            "--allow",
            help="An identifying attribute the site keeps on purpose, repeatable: a keyword (StudyDate), "
            "a tag (0008,0020), 'private', or a profile option (retain-uids).",
        ),
    ] = [],  # noqa: B006
    allow_url: Annotated[
        list[str],
        typer.Option(
            "--allow-url",
            "--anon-allow-url",
            metavar="PREFIX",
            help="Let the script's getURL fetch values from URLs starting with PREFIX (repeatable): the check "
            "then sends those requests.",
        ),
    ] = [],  # noqa: B006
    limit: Annotated[int | None, typer.Option(min=1, help="Check only the first N files.")] = None,
    hide_values: Annotated[
        bool, typer.Option("--hide-values", help="Do not print original values (for a shared screen or a log).")
    ] = False,
    as_json: JsonOption = False,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="XNAT base URL, for --anon-from-server [default: $XNAT_URL or the profile]",
            rich_help_panel="Connection",
        ),
    ] = None,
) -> None:
    """Check what an upload's de-identification does, before it runs.

    The same options as `session upload` (--anon-script, --anon-profile, --anon-from-server, -P/-S/-E
    for XNAT's variables), applied in the same order: XNAT's scripts, the script, the profile. Applies
    them in memory (nothing is written or sent) and shows per attribute what changed, the identifying
    attributes that survive, and files flagged Burned In Annotation.
    Exit 0 when no identifier survives (beyond --allow) and every file can be de-identified,
    1 otherwise, 2 for a script that cannot run (its line and column are named)."""
    from xnat_flows.anon.check import check_folder
    from xnat_flows.cli.anon_options import anonymizer_from_options
    from xnat_flows.cli.options import Connection
    from xnat_flows.client.errors import InputError
    from xnat_flows.transfer.deidentify import SCRIPT_ERROR

    if option and profile is None:
        raise typer.BadParameter("--option goes with --profile basic", param_hint="--option")
    profile_asked = ",".join([profile, *option]) if profile is not None else None
    variables = {
        name: value for name, value in (("project", project), ("subject", subject), ("session", session)) if value
    }
    variables |= parse_variables(var)
    connection = Connection(url=url)
    try:
        anonymizer = anonymizer_from_options(
            script,
            profile_asked,
            from_server,
            allowed_urls=allow_url,
            project=project,
            open_client=lambda: connection.client(projects=(project,) if project else ()),
        )
        if anonymizer is None:
            raise typer.BadParameter(
                "give --anon-script FILE, --anon-profile basic or --anon-from-server",
                param_hint="--anon-script/--anon-profile/--anon-from-server",
            )
        with _checking_bar(enabled=not as_json) as progress:
            report = check_folder(anonymizer, folder, variables, allow=allow, limit=limit, progress=progress)
    except InputError as exc:  # a script that does not compile (line:column), a profile option unknown
        hint = {
            SCRIPT_ERROR: "fix the script and run the check again",
            "no-anon-script": "XNAT would apply none: enable its site or project script, or check your own "
            "with --anon-script",
        }.get(exc.reason or "", exc.hint)
        error(f"{exc.message} — nothing was checked" + (f" ({hint})" if hint else ""))
        raise typer.Exit(EXIT_USAGE) from None
    except (ValueError, OSError) as exc:
        error(str(exc))
        raise typer.Exit(EXIT_USAGE) from None
    if as_json:
        typer.echo(json.dumps(report.to_dict(show_values=not hide_values), indent=2))
    else:
        typer.echo(report.to_text(show_values=not hide_values))
    if not report.ok:
        raise typer.Exit(EXIT_FAILURE)


@contextlib.contextmanager
def _checking_bar(*, enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A transient bar while the files are checked (~1 ms a file), on a terminal only: a pipe or a
    log gets the report alone."""
    if not (enabled and sys.stdout.isatty()):
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("[bold]checking"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("files"),
        TimeRemainingColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task("check", total=None)

        def advance(checked: int, total: int) -> None:
            bar.update(task, completed=checked, total=total)

        yield advance
