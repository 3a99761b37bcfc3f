"""What every XNAT command shares: connection options, opening a client, and exit codes.

Exit codes (one place, documented in docs/prearchive.md and docs/reliability.md): 0 ok, 2 usage
or bad input, 3 authentication/permission, 4 not found, 5 conflict, 7 server unreachable
(connection refused, DNS, TLS, timeout: nothing was sent), 1 any other failure.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from xnat_flows.client.client import XnatClient

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_AUTH, EXIT_NOT_FOUND, EXIT_CONFLICT = 0, 1, 2, 3, 4, 5
EXIT_UNREACHABLE = 7  # no answer from the server or receiver: check URL/host, port, network, TLS

UrlOption = Annotated[str | None, typer.Option("--url", help="XNAT base URL (default: $XNAT_URL or the profile).")]
UserOption = Annotated[str | None, typer.Option("--username", "-u", help="XNAT user (default: $XNAT_USER or the profile).")]
PasswordOption = Annotated[
    str | None,
    typer.Option(
        "--password",
        help="Password. Visible to other users of this machine: prefer --password-stdin, $XNAT_PASS or a profile.",
    ),
]
PasswordStdinOption = Annotated[
    bool,
    typer.Option("--password-stdin", help="Read the password from the first line of standard input (e.g. from a secret manager)."),
]
ProfileOption = Annotated[str | None, typer.Option("--profile", help="Profile name in the xnat-flows config file.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def exit_code_for(exc: BaseException) -> int:
    """The process exit code for an error raised by the library."""
    import sys

    from xnat_flows.client.errors import (
        AuthenticationError,
        ConflictError,
        InputError,
        NotFoundError,
        PermissionDeniedError,
        XnatConnectionError,
    )

    if isinstance(exc, InputError):
        return EXIT_USAGE
    if isinstance(exc, (AuthenticationError, PermissionDeniedError)):
        return EXIT_AUTH
    if isinstance(exc, NotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(exc, ConflictError):
        return EXIT_CONFLICT
    if isinstance(exc, XnatConnectionError) and exc.status is None:
        return EXIT_UNREACHABLE
    dicom_send = sys.modules.get("xnat_flows.transfer.dicom_send")  # loaded only by DICOM commands
    if dicom_send is not None and isinstance(exc, dicom_send.PeerUnreachableError):
        return EXIT_UNREACHABLE
    return EXIT_FAILURE


def read_password_stdin() -> str:
    """The first line of standard input, without its line ending (never echoed, never in argv)."""
    import sys

    from xnat_flows.client.errors import InputError

    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        raise InputError(
            "--password-stdin was given but standard input held no password",
            hint="Pipe it in, e.g. `pass show xnat | xnat-flows ... --password-stdin`",
        )
    return line


@contextmanager
def xnat_session(
    url: str | None, username: str | None, password: str | None, profile: str | None, *, password_stdin: bool = False
) -> Iterator[XnatClient]:
    """An open client for a command; library errors become a message on stderr and an exit code."""
    from xnat_flows.client.client import XnatClient
    from xnat_flows.client.credentials import resolve_credentials
    from xnat_flows.client.errors import XnatError

    if password and password_stdin:
        typer.secho("error: give either --password or --password-stdin, not both", err=True, fg=typer.colors.RED)
        raise typer.Exit(EXIT_USAGE)
    if password:
        warn_password_on_command_line()
    try:
        if password_stdin:
            password = read_password_stdin()
        with XnatClient(resolve_credentials(url, username, password, profile=profile, prompt=True)) as client:
            yield client
    except XnatError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(exit_code_for(exc)) from None
    except OSError as exc:  # a local file vanished or became unreadable mid-command
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(EXIT_FAILURE) from None


def warn_password_on_command_line() -> None:
    typer.secho(
        "warning: --password is visible to other users of this machine (process list, shell history); "
        "prefer --password-stdin, XNAT_PASS or a profile.",
        err=True,
        fg=typer.colors.YELLOW,
    )


def print_table(rows: list[dict[str, str]], columns: list[str]) -> None:
    """A plain aligned text table (no colours, so it pipes into grep/awk)."""
    widths = {c: max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in columns}
    typer.echo("  ".join(c.ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        typer.echo("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns).rstrip())
