"""Open an ``XnatClient`` inside a task from an ``XnatConnection``.

Clients are built inside tasks (never passed between them): an httpx client holds locks that
Prefect's input hashing cannot serialise, and each task may run on another worker.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager

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


_shared_clients: dict[tuple[str, str | None, str], XnatClient] = {}
# Every upload task of a run shares the client: its pool must hold as many connections as a run may
# have batches in flight (UploadRequest.workers is at most 64), or the batches beyond the pool's size
# fail on the pool timeout although XNAT is healthy. httpx opens connections only when needed.
_SHARED_POOL = 64 + 1
_shared_lock = threading.Lock()


@contextmanager
def shared_client(connection: XnatConnection) -> Iterator[XnatClient]:
    """One ``XnatClient`` per server, user and secret for all tasks running in this process.

    Concurrent upload tasks must share a client: when XNAT expires or evicts the session, the
    client's single re-login is shared by all its threads. With a client per task, eight
    batches seeing the same 401 logged in eight times, and on a server with a concurrent-session
    limit those logins evict one another. The client is kept open for later tasks (it holds
    only a connection pool and the session token).
    """
    credentials = credentials_for(connection)
    secret = "\0".join(s.get_secret_value() for s in (credentials.password, credentials.token) if s)
    key = (credentials.url, credentials.username, hashlib.sha256(f"{secret}\0{credentials.verify}".encode()).hexdigest())
    with _shared_lock:
        client = _shared_clients.get(key)
        if client is None:
            client = _shared_clients[key] = XnatClient(credentials, max_connections=_SHARED_POOL)
    yield client
