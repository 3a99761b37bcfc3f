"""One ``XnatClient`` per server, user and secret for everything running in this process.

Used by the ``XnatCredentials`` Block's ``get_client()`` and by the upload tasks; it lives in the
client layer so the Block needs nothing of the Prefect tasks (no import cycle through them).
"""

from __future__ import annotations

import hashlib
import threading

from xnat_flows.client.client import XnatClient
from xnat_flows.client.credentials import Credentials

_shared_clients: dict[tuple[str, str | None, str], XnatClient] = {}
# Every upload task of a run shares the client: its pool must hold as many connections as a run may
# have batches in flight (UploadRequest.workers is at most 64), or the batches beyond the pool's size
# fail on the pool timeout although XNAT is healthy. httpx opens connections only when needed.
_SHARED_POOL = 64 + 1
_shared_lock = threading.Lock()


def cached_client(credentials: Credentials) -> XnatClient:
    """One ``XnatClient`` per server, user and secret for everything running in this process.

    Concurrent upload tasks must share a client: when XNAT expires or evicts the session, the
    client's single re-login is shared by all its threads. With a client per task, eight
    batches seeing the same 401 logged in eight times, and on a server with a concurrent-session
    limit those logins evict one another. The client is kept open for later tasks (it holds
    only a connection pool and the session token).

    Args:
        credentials: Server, user and password or token.

    Returns:
        The process's client for those credentials (created on first use).
    """
    secret = "\0".join(s.get_secret_value() for s in (credentials.password, credentials.token) if s)
    key = (
        credentials.url,
        credentials.username,
        hashlib.sha256(f"{secret}\0{credentials.verify}".encode()).hexdigest(),
    )
    with _shared_lock:
        client = _shared_clients.get(key)
        if client is None:
            client = _shared_clients[key] = XnatClient(credentials, max_connections=_SHARED_POOL)
    return client
