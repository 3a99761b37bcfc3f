"""Open an ``XnatClient`` inside a task from an ``XnatConnection``.

Clients are built inside tasks (never passed between them): an httpx client holds locks that
Prefect's input hashing cannot serialise, and each task may run on another worker.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from xnat_flows.client.client import XnatClient
from xnat_flows.client.credentials import Credentials, resolve_credentials
from xnat_flows.client.errors import InputError
from xnat_flows.client.shared import cached_client
from xnat_flows.client.urls import public_base_url
from xnat_flows.models import XnatConnection


def credentials_for(connection: XnatConnection) -> Credentials:
    """Resolve credentials: the connection's Block, else explicit fields > environment > profile.

    Never prompts: a flow run has no terminal. A Block's password goes only to the Block's own
    server: a run (or an event-started run) naming another URL is refused.

    Args:
        connection: The XNAT server and how to log in (a Block, or fields).

    Returns:
        The credentials.
    """
    if connection.credentials is not None:
        credentials = connection.credentials.to_credentials()
        if connection.url and public_base_url(connection.url) != public_base_url(credentials.url):
            raise InputError(
                f"this run names the server {public_base_url(connection.url)} but its credentials Block is for "
                f"{public_base_url(credentials.url)}; the Block's password is sent only to its own server",
                hint="Pick the xnat-credentials Block of that server in the run's connection, or leave the URL empty",
            )
        return credentials
    return resolve_credentials(
        url=connection.url or None,
        username=connection.username or None,
        profile=connection.profile or None,
        prompt=False,
    )


def server_url_for_report(connection: XnatConnection) -> str:
    """The server to name in an ``xnat.upload.failed`` event.

    Also when resolving the credentials is what failed (no Block, no credentials on the worker).

    Args:
        connection: The XNAT server and how to log in (a Block, or fields).

    Returns:
        The server's URL, else the URL given, or "unknown".
    """
    try:
        return credentials_for(connection).url
    except Exception:  # noqa: BLE001 - the failure being reported may be exactly this one
        return connection.url or "unknown"


def open_client(connection: XnatConnection, credentials: Credentials | None = None) -> XnatClient:
    """A new client for ``connection`` (the caller closes it).

    Args:
        connection: The XNAT server and how to log in (a Block, or fields).
        credentials: Already resolved credentials, if any.

    Returns:
        The client.
    """
    return XnatClient(credentials or credentials_for(connection))


@contextmanager
def shared_client(connection: XnatConnection) -> Iterator[XnatClient]:
    """The cached client of this connection's credentials (see ``cached_client``).

    Args:
        connection: The XNAT server and how to log in (a Block, or fields).

    Yields:
        The process's client for those credentials (not closed on exit: later tasks reuse it).
    """
    yield cached_client(credentials_for(connection))
