"""Plain-Python XNAT REST client (httpx, pydantic): credentials, JSESSION auth, retries, errors.

No Prefect import here or below: the CLI and any script can use it directly.
"""

from xnat_flows.client.client import Timeouts, XnatClient
from xnat_flows.client.credentials import Credentials, TokenCache, resolve_credentials
from xnat_flows.client.errors import (
    AuthenticationError,
    CancelledError,
    ConflictError,
    InputError,
    NotFoundError,
    PermanentUploadError,
    PermissionDeniedError,
    TransientError,
    UnsupportedServerError,
    XnatConnectionError,
    XnatError,
)
from xnat_flows.client.retry import RetryPolicy

__all__ = [
    "AuthenticationError",
    "CancelledError",
    "ConflictError",
    "Credentials",
    "InputError",
    "NotFoundError",
    "PermanentUploadError",
    "PermissionDeniedError",
    "RetryPolicy",
    "Timeouts",
    "TokenCache",
    "TransientError",
    "UnsupportedServerError",
    "XnatClient",
    "XnatConnectionError",
    "XnatError",
    "resolve_credentials",
]
