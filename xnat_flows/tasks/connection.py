"""Open an ``XnatClient`` inside a task from an ``XnatConnection``.

Clients are built inside tasks (never passed between them): an httpx client holds locks that
Prefect's input hashing cannot serialise, and each task may run on another worker.
"""

from __future__ import annotations

from xnat_flows.client.client import XnatClient
from xnat_flows.client.credentials import Credentials, resolve_credentials
from xnat_flows.models import XnatConnection


def credentials_for(connection: XnatConnection) -> Credentials:
    """Resolve credentials: a named Block, else explicit fields > environment > profile.

    Never prompts: a flow run has no terminal.
    """
    if connection.credentials_block:
        from xnat_flows.blocks import XnatCredentials

        credentials = XnatCredentials.load(connection.credentials_block).to_credentials()
        overrides = {"url": connection.url, "username": connection.username}
        return credentials.model_copy(update={k: v for k, v in overrides.items() if v})
    return resolve_credentials(url=connection.url, username=connection.username, profile=connection.profile, prompt=False)


def open_client(connection: XnatConnection, credentials: Credentials | None = None) -> XnatClient:
    return XnatClient(credentials or credentials_for(connection))
