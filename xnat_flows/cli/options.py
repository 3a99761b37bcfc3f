"""What every XNAT command shares: the connection options (declared once), opening a logged-in
client, and the one mapping from a library error to a message and an exit code.

Exit codes (documented in docs/reliability.md): 0 ok, 2 usage or bad input, 3 authentication or
permission, 4 not found, 5 conflict, 6 partial (some files did not land: re-run the same command),
7 server or receiver unreachable (nothing was sent), 130 interrupted, 1 any other failure.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

if TYPE_CHECKING:
    from xnat_flows.client.client import XnatClient
    from xnat_flows.client.credentials import Credentials

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_AUTH, EXIT_NOT_FOUND, EXIT_CONFLICT = 0, 1, 2, 3, 4, 5
EXIT_PARTIAL = 6  # some files did not land; re-running the same command sends only those
EXIT_UNREACHABLE = 7  # no answer from the server or receiver: check URL/host, port, network, TLS
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report it

INTERRUPTED_MESSAGE = "interrupted: re-run the same command to send the rest"  # commands that send data
INTERRUPTED_ELSEWHERE = "interrupted"  # a prompt, a listing: nothing was half-sent
_SENDS_DATA = "xnat_flows.sends_data"  # click context meta: the command resumes by re-running
RELOGIN_HINT = (
    "Run `xnat-flows auth login` (in a script: `... | xnat-flows auth login --password-stdin`), or set XNAT_PASS"
)


def command_group(**settings: Any) -> typer.Typer:
    """A sub-command group with plain help (click's): flags without ``<bool>``, nothing truncated
    at 80 columns, and option names never mistaken for markup."""
    return typer.Typer(rich_markup_mode=None, no_args_is_help=True, **settings)


JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
VerifyTimeoutOption = Annotated[
    float,
    typer.Option(
        "--verify-timeout",
        metavar="SECONDS",
        min=1,
        max=86400,
        help="Seconds --verify waits for the archive (XNAT archives a session that arrives by C-STORE, or "
        "through its prearchive, after its idle interval).",
    ),
]


def exit_code_for(exc: BaseException) -> int:
    """The process exit code for an error raised by the library (the one place that decides)."""
    from xnat_flows.anon.errors import ScriptError
    from xnat_flows.client.errors import (
        AuthenticationError,
        CancelledError,
        ConflictError,
        InputError,
        NotFoundError,
        PermissionDeniedError,
        UnreachableError,
        XnatConnectionError,
    )
    from xnat_flows.transfer.scan import IncompleteExportError

    if isinstance(exc, CancelledError):
        return EXIT_INTERRUPTED
    if isinstance(exc, IncompleteExportError):  # files still being written: run again once they are whole
        return EXIT_PARTIAL
    if isinstance(exc, (InputError, ScriptError)):  # a script that cannot run: nothing was sent
        return EXIT_USAGE
    if isinstance(exc, (AuthenticationError, PermissionDeniedError)):
        return EXIT_AUTH
    if isinstance(exc, NotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(exc, ConflictError):
        return EXIT_CONFLICT
    if isinstance(exc, UnreachableError) or (isinstance(exc, XnatConnectionError) and exc.status is None):
        return EXIT_UNREACHABLE
    return EXIT_FAILURE


def error(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)


def counted(count: int, singular: str, plural: str | None = None) -> str:
    """``1 study``, ``2 studies``, ``0 files``."""
    if count == 1:
        return f"{count} {singular}"
    if plural is None:
        plural = singular[:-1] + "ies" if singular.endswith("y") and singular[-2:-1] not in "aeiou" else singular + "s"
    return f"{count} {plural}"


def sends_data() -> None:
    """Mark the running command as one that sends data: Ctrl-C then says a re-run sends the rest."""
    from typer._click.globals import get_current_context  # the click typer ships and runs on

    get_current_context().meta[_SENDS_DATA] = True


def warn(message: str) -> None:
    typer.secho(f"warning: {message}", err=True, fg=typer.colors.YELLOW)


# `xnat-flows --help` lists the commands in the order a new user needs them.
COMMAND_ORDER = ("auth", "whoami", "session", "prearchive", "resource", "emulator", "synth", "demo")


class XnatCommandGroup(TyperGroup):
    """The root command: turns library errors, usage errors and Ctrl-C into one ``error:`` line
    and an exit code, for every sub-command (so commands raise ``XnatError`` instead of catching
    it); lists the commands in ``COMMAND_ORDER``; gives every parameter a plain metavar."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _plain_metavars(self)

    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        rank = {name: index for index, name in enumerate(COMMAND_ORDER)}
        return sorted(names, key=lambda name: rank.get(name, len(rank)))

    def invoke(self, ctx: Any) -> Any:  # typer's own click Context
        from typer._click.exceptions import UsageError  # the click typer ships and runs on

        from xnat_flows.client.errors import CancelledError, XnatError

        try:
            return super().invoke(ctx)
        except (KeyboardInterrupt, CancelledError):
            if sys.stderr.isatty():
                typer.echo("", err=True)  # off the line of a prompt interrupted mid-way
            message = INTERRUPTED_MESSAGE if ctx.meta.get(_SENDS_DATA) else INTERRUPTED_ELSEWHERE
            typer.secho(message, err=True, fg=typer.colors.YELLOW)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except UsageError as exc:  # click would print "Error: ..."; one style for every error
            if exc.ctx is not None:
                typer.echo(exc.ctx.get_usage(), err=True)
                typer.echo(f"Try '{exc.ctx.command_path} --help' for help.\n", err=True)
            error(exc.format_message())
            raise typer.Exit(exc.exit_code) from None
        except XnatError as exc:
            from xnat_flows.cli.hints import for_cli

            error(str(for_cli(exc)))
            raise typer.Exit(exit_code_for(exc)) from None
        except OSError as exc:  # a local file vanished or became unreadable mid-command
            error(str(exc))
            raise typer.Exit(EXIT_FAILURE) from None


def _plain_metavars(group: Any) -> None:
    """Every parameter shown by a plain name: ``SOURCE``, ``--project PROJECT``,
    ``--archive-format [auto|tar|tgz|zip]``, instead of click's and typer's ``{source}``,
    ``<str>`` and ``<int range>``."""
    for command in group.commands.values():
        if hasattr(command, "commands"):  # a sub-group
            _plain_metavars(command)
            continue
        for param in command.params:
            if param.metavar is not None or getattr(param, "is_flag", False):
                continue
            is_argument = param.param_type_name == "argument"
            if choices := getattr(param.type, "choices", None):
                param.metavar = "[" + "|".join(str(choice) for choice in choices) + "]"
            elif is_argument:
                param.metavar = (param.name or "value").upper()
            else:
                param.metavar = max(param.opts, key=len).lstrip("-").upper()
            if is_argument:
                # typer wraps a required argument's metavar in braces in the usage line
                param.make_metavar = functools.partial(_argument_metavar, param)


def _argument_metavar(param: Any, ctx: Any = None, *, usage: bool = False) -> str:
    return param.metavar if param.required or not usage else f"[{param.metavar}]"


# -- connection options, declared once -------------------------------------------------------------


@dataclass(frozen=True)
class Connection:
    """The connection options of a command. Unset fields come from the environment, then the
    profile ``xnat-flows auth login`` wrote, then (on a terminal) a prompt."""

    url: str | None = None
    username: str | None = None
    password: str | None = None
    password_stdin: bool = False
    profile: str | None = None

    def password_given(self) -> str | None:
        """The password from --password or --password-stdin (read once), else None."""
        from xnat_flows.client.errors import InputError

        if self.password and self.password_stdin:
            raise InputError("give either --password or --password-stdin, not both")
        if self.password:
            warn(
                "--password is visible to other users of this machine (process list, shell history); "
                "prefer --password-stdin, XNAT_PASS or `xnat-flows auth login`."
            )
            return self.password
        return read_password_stdin() if self.password_stdin else None

    def credentials(
        self, *, prompt: bool = True, password: str | None = None, new_profile: bool = False
    ) -> Credentials:
        from xnat_flows.client.credentials import resolve_credentials

        return resolve_credentials(
            self.url, self.username, password, profile=self.profile, prompt=prompt, new_profile=new_profile
        )

    @contextmanager
    def client(self, *, projects: tuple[str | None, ...] = ()) -> Iterator[XnatClient]:
        """A client with a working session: the cached one, or a login with the password given.

        One cheap request (who am I) proves the session before the command starts; an expired or
        revoked cached session asks for the password on a terminal, and otherwise fails with advice.
        Each of ``projects`` (None skipped) must exist: XNAT answers an unknown project with an
        empty listing or files data for it under Unassigned, so it is reported as unknown here.
        """
        from xnat_flows.client.client import XnatClient
        from xnat_flows.client.errors import AuthenticationError

        credentials = self.credentials(password=self.password_given())
        client = XnatClient(credentials)
        try:
            prove_session(client)
        except BaseException as exc:
            client.close()
            if not (isinstance(exc, AuthenticationError) and needs_password(credentials) and is_interactive()):
                raise
            client = XnatClient(credentials.model_copy(update={"password": ask_password(credentials)}))
            try:
                prove_session(client)
            except BaseException:
                client.close()
                raise
        with client:
            for project in projects:
                if project:
                    client.require_project(project)
            yield client


def needs_password(credentials: Credentials) -> bool:
    return credentials.password is None and credentials.username is not None


def is_interactive() -> bool:
    from xnat_flows.client.credentials import _is_interactive

    return _is_interactive()


def ask_password(credentials: Credentials) -> Any:
    import getpass

    from pydantic import SecretStr

    typer.echo(f"The cached session for {credentials.username}@{credentials.url} has ended; log in again.", err=True)
    return SecretStr(getpass.getpass(f"Password for {credentials.username}@{credentials.url}: "))


def prove_session(client: XnatClient) -> str:
    """Who XNAT says we are; an ended session without a password becomes advice to log in."""
    from xnat_flows.client.errors import AuthenticationError

    try:
        return client.whoami()
    except AuthenticationError as exc:
        creds = client.credentials
        if creds.password is not None:
            raise
        who = f"{creds.username}@{creds.url}" if creds.username else creds.url
        raise AuthenticationError(
            f"No valid XNAT session for {who}: the cached session has expired or was ended, and no password was given",
            status=exc.status,
            hint=RELOGIN_HINT,
        ) from None


def read_password_stdin() -> str:
    """The first line of standard input, without its line ending (never echoed, never in argv)."""
    from xnat_flows.client.errors import InputError

    line = sys.stdin.readline().rstrip("\r\n")
    if not line:
        raise InputError(
            "--password-stdin was given but standard input held no password",
            hint="Pipe it in, e.g. `pass show xnat | xnat-flows auth login --password-stdin`",
        )
    return line


_CONNECTION_PARAMETERS = [
    inspect.Parameter(
        "url",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            str | None,
            typer.Option(
                "--url", help="XNAT base URL [default: $XNAT_URL or the profile]", rich_help_panel="Connection"
            ),
        ],
    ),
    inspect.Parameter(
        "username",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            str | None,
            typer.Option(
                "--username", "-u", help="XNAT user [default: $XNAT_USER or the profile]", rich_help_panel="Connection"
            ),
        ],
    ),
    inspect.Parameter(
        "password",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            str | None,
            typer.Option(
                "--password", help="Visible to other users: prefer --password-stdin", rich_help_panel="Connection"
            ),
        ],
    ),
    inspect.Parameter(
        "password_stdin",
        inspect.Parameter.KEYWORD_ONLY,
        default=False,
        annotation=Annotated[
            bool,
            typer.Option(
                "--password-stdin", help="Read the password from the first line of stdin", rich_help_panel="Connection"
            ),
        ],
    ),
    inspect.Parameter(
        "profile",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            str | None,
            typer.Option(
                "--profile", help="Profile name [default: $XNAT_PROFILE or 'default']", rich_help_panel="Connection"
            ),
        ],
    ),
]
_CONNECTION_NAMES = [p.name for p in _CONNECTION_PARAMETERS]


def with_connection(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the connection options to a command, which receives them as ``connection: Connection``."""
    signature = inspect.signature(command, eval_str=True)  # typer reads a set __signature__ as is
    own = [p for p in signature.parameters.values() if p.name != "connection"]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        connection = Connection(**{name: kwargs.pop(name) for name in _CONNECTION_NAMES})
        return command(*args, connection=connection, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=own + _CONNECTION_PARAMETERS)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in own + _CONNECTION_PARAMETERS}
    return wrapper


def print_table(rows: list[dict[str, str]], columns: list[str]) -> None:
    """A plain aligned text table (no colours, so it pipes into grep/awk)."""
    widths = {c: max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in columns}
    typer.echo("  ".join(c.ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        typer.echo("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns).rstrip())
