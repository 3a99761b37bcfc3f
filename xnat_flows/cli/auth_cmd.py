"""``xnat-flows auth login|logout`` and ``xnat-flows whoami``."""

from __future__ import annotations

import typer

from xnat_flows.cli.options import PasswordOption, PasswordStdinOption, ProfileOption, UrlOption, UserOption, xnat_session

app = typer.Typer(help="Log in to XNAT (caches a session token) or log out.", no_args_is_help=True)


@app.command("login")
def login(url: UrlOption = None, username: UserOption = None, password: PasswordOption = None, profile: ProfileOption = None, password_stdin: PasswordStdinOption = False) -> None:
    """Open a session and cache its token (mode 0600) so later commands need no password."""
    with xnat_session(url, username, password, profile, password_stdin=password_stdin) as client:
        client.login()
        typer.echo(f"Logged in to {client.base_url} as {client.credentials.username}.")


@app.command("logout")
def logout(url: UrlOption = None, username: UserOption = None, profile: ProfileOption = None) -> None:
    """End the cached session on the server and delete it locally."""
    with xnat_session(url, username, None, profile) as client:
        client.logout()
        typer.echo(f"Logged out of {client.base_url}.")


def whoami(url: UrlOption = None, username: UserOption = None, password: PasswordOption = None, profile: ProfileOption = None, password_stdin: PasswordStdinOption = False) -> None:
    """Print the user XNAT sees for the current credentials or cached session."""
    with xnat_session(url, username, password, profile, password_stdin=password_stdin) as client:
        typer.echo(client.whoami())
