"""``xnat-flows auth login|logout|status`` and ``xnat-flows whoami``.

``auth login`` is the one command that needs a URL, a user and a password: it records the URL and
user as a profile and caches the session token, so every later command needs none of them.
"""

from __future__ import annotations

import typer

from xnat_flows.cli.options import EXIT_AUTH, RELOGIN_HINT, Connection, command_group, is_interactive, with_connection

app = command_group(help="Log in once, show the login, or log out.")


@app.command("login")
@with_connection
def login(connection: Connection) -> None:
    """Log in; save URL and user; cache the session.

    The URL and user become the default profile (or --profile NAME); the session token is cached
    with mode 0600. The password is never written to disk.
    """
    import getpass

    from pydantic import SecretStr

    from xnat_flows.client.client import XnatClient
    from xnat_flows.client.credentials import chosen_profile_name
    from xnat_flows.client.errors import InputError
    from xnat_flows.client.settings import profile_dir, save_profile

    credentials = connection.credentials(password=connection.password_given(), new_profile=True)
    if not credentials.username:
        raise InputError("No XNAT user given", hint="Pass --username, or set XNAT_USER")
    if credentials.password is None:  # a cached session does not count: login means a new one
        if not is_interactive():
            raise InputError("No password given and no terminal to ask for it", hint=RELOGIN_HINT)
        password = getpass.getpass(f"Password for {credentials.username}@{credentials.url}: ")
        credentials = credentials.model_copy(update={"password": SecretStr(password)})
    with XnatClient(credentials) as client:
        client.login()
        user = client.whoami()
    name = chosen_profile_name(connection.profile)
    path = save_profile(profile_dir(), name, url=credentials.url, username=credentials.username)
    typer.echo(f"Logged in to {credentials.url} as {user}; saved as profile {name!r} in {path}.")
    typer.echo("Commands now use this server and session: no URL, user or password needed.")


@app.command("logout")
@with_connection
def logout(connection: Connection) -> None:
    """End the cached session on the server and delete it locally."""
    from xnat_flows.client.client import XnatClient
    from xnat_flows.client.credentials import TokenCache
    from xnat_flows.client.errors import AuthenticationError, InputError

    credentials = connection.credentials(prompt=False)
    if not credentials.username:
        raise InputError(f"No user for {credentials.url}: cannot tell whose session to end", hint="Pass --username")
    cache = TokenCache()
    token = cache.get(credentials.url, credentials.username, any_age=True)
    if token is None:
        typer.echo(f"No cached session for {credentials.username}@{credentials.url}: nothing to end.")
        return
    from pydantic import SecretStr

    with XnatClient(credentials.model_copy(update={"password": None, "token": SecretStr(token)})) as client:
        try:
            client.whoami()  # loads the token, so logout() can end it on the server
            ended = "ended on the server and removed"
        except AuthenticationError:
            ended = "had already ended on the server; removed"
        client.logout()
    cache.delete(credentials.url, credentials.username)
    typer.echo(f"Logged out of {credentials.url}: the session of {credentials.username} {ended} from the cache.")


@app.command("status")
@with_connection
def status(connection: Connection) -> None:
    """Show the server, user and session commands use.

    Exit 0 when the cached session is valid, 3 otherwise.
    """
    from pydantic import SecretStr

    from xnat_flows.client.client import XnatClient
    from xnat_flows.client.credentials import TokenCache, chosen_profile_name
    from xnat_flows.client.errors import AuthenticationError

    credentials = connection.credentials(prompt=False)
    typer.echo(f"profile  {chosen_profile_name(connection.profile)}")
    typer.echo(f"server   {credentials.url}")
    typer.echo(f"user     {credentials.username or '(none)'}")
    token = (
        credentials.token.get_secret_value()
        if credentials.token
        else TokenCache().get(credentials.url, credentials.username, any_age=True)
    )
    if token is None:
        typer.echo("session  none cached: run `xnat-flows auth login`")
        raise typer.Exit(EXIT_AUTH)
    probe = credentials.model_copy(update={"password": None, "token": SecretStr(token)})
    with XnatClient(probe, token_cache=None) as client:
        try:
            who = client.whoami()
        except AuthenticationError:
            typer.echo("session  expired or ended: run `xnat-flows auth login`")
            raise typer.Exit(EXIT_AUTH) from None
    typer.echo(f"session  valid (XNAT sees user {who})")


@with_connection
def whoami(connection: Connection) -> None:
    """Print the user XNAT sees for this login."""
    from xnat_flows.cli.options import prove_session

    with connection.client() as client:
        typer.echo(prove_session(client))
