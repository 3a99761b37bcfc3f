"""``xnat-flows anon``: check a DicomEdit 6 script or the DICOM Basic Profile against a folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from xnat_flows.cli.options import EXIT_FAILURE, EXIT_USAGE, command_group, error

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
        typer.Option("--script", help="A DicomEdit 6 script (XNAT's site or project anonymization script)."),
    ] = None,
    profile: Annotated[
        str | None, typer.Option("--profile", help="A built-in profile: basic (DICOM PS3.15 Annex E).")
    ] = None,
    option: Annotated[
        list[str],
        typer.Option(
            "--option",
            help="Basic Profile option, repeatable: retain-uids, retain-longitudinal-full-dates, "
            "retain-patient-characteristics, retain-device-identity, retain-institution-identity, clean-descriptors.",
        ),
    ] = [],  # noqa: B006 - typer reads the default
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
            metavar="PREFIX",
            help="Let the script's getURL fetch values from URLs starting with PREFIX (repeatable): the check "
            "then sends those requests.",
        ),
    ] = [],  # noqa: B006
    limit: Annotated[int | None, typer.Option(min=1, help="Check only the first N files.")] = None,
    hide_values: Annotated[
        bool, typer.Option("--hide-values", help="Do not print original values (for a shared screen or a log).")
    ] = False,
) -> None:
    """Check a DicomEdit 6 script or the Basic Profile against a folder.

    Applies it in memory (nothing is written or sent) and shows per attribute what changed, the identifying attributes that survive, and files flagged Burned In Annotation.
    Exit 0 when no identifier survives (beyond --allow) and every file can be de-identified,
    1 otherwise, 2 for a script that cannot run (its line and column are named)."""
    from xnat_flows.anon import ScriptError, UrlAccess, anonymizer_for
    from xnat_flows.anon.check import check_folder

    if (script is None) == (profile is None):
        raise typer.BadParameter("give --script FILE or --profile basic", param_hint="--script/--profile")
    try:
        anonymizer = anonymizer_for(
            script=script.read_text(encoding="utf-8") if script else None,
            source=str(script) if script else "<script>",
            profile=profile,
            options=option,
            url_access=UrlAccess(tuple(allow_url)) if allow_url else None,
        )
        report = check_folder(anonymizer, folder, parse_variables(var), allow=allow, limit=limit)
    except ScriptError as exc:
        error(f"{exc} — nothing was checked; fix the script and run again")
        raise typer.Exit(EXIT_USAGE) from None
    except (ValueError, OSError) as exc:
        error(str(exc))
        raise typer.Exit(EXIT_USAGE) from None
    typer.echo(report.to_text(show_values=not hide_values))
    if not report.ok:
        raise typer.Exit(EXIT_FAILURE)
