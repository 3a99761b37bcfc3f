"""Plain-Python XNAT REST client (httpx, pydantic): credentials, JSESSION auth, retries, errors.

No Prefect import here or below: the CLI and any script can use it directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xnat_flows._lazy import lazy_exports

if TYPE_CHECKING:
    from xnat_flows.client.client import (
        XnatClient,
    )
    from xnat_flows.client.credentials import (
        Credentials,
        TokenCache,
        resolve_credentials,
    )
    from xnat_flows.client.errors import (
        AuthenticationError,
        CancelledError,
        ConflictError,
        InputError,
        NoAnswerError,
        NotFoundError,
        PermanentUploadError,
        PermissionDeniedError,
        StorageFullError,
        TransientError,
        UnreachableError,
        UnsupportedServerError,
        XnatConnectionError,
        XnatError,
    )
    from xnat_flows.client.retry import (
        RetryPolicy,
    )

# Loaded on first use (PEP 562): ``client.errors`` is imported by layers that never open an
# HTTP connection (the scanner, the C-STORE sender), and httpx costs ~0.15 s to import.
_EXPORTS = {
    "XnatClient": "xnat_flows.client.client",
    "Credentials": "xnat_flows.client.credentials",
    "TokenCache": "xnat_flows.client.credentials",
    "resolve_credentials": "xnat_flows.client.credentials",
    "AuthenticationError": "xnat_flows.client.errors",
    "CancelledError": "xnat_flows.client.errors",
    "ConflictError": "xnat_flows.client.errors",
    "InputError": "xnat_flows.client.errors",
    "NoAnswerError": "xnat_flows.client.errors",
    "NotFoundError": "xnat_flows.client.errors",
    "StorageFullError": "xnat_flows.client.errors",
    "PermanentUploadError": "xnat_flows.client.errors",
    "PermissionDeniedError": "xnat_flows.client.errors",
    "TransientError": "xnat_flows.client.errors",
    "UnreachableError": "xnat_flows.client.errors",
    "UnsupportedServerError": "xnat_flows.client.errors",
    "XnatConnectionError": "xnat_flows.client.errors",
    "XnatError": "xnat_flows.client.errors",
    "RetryPolicy": "xnat_flows.client.retry",
}


__all__ = [
    "AuthenticationError",
    "CancelledError",
    "ConflictError",
    "Credentials",
    "InputError",
    "NoAnswerError",
    "NotFoundError",
    "PermanentUploadError",
    "PermissionDeniedError",
    "RetryPolicy",
    "StorageFullError",
    "TokenCache",
    "TransientError",
    "UnreachableError",
    "UnsupportedServerError",
    "XnatClient",
    "XnatConnectionError",
    "XnatError",
    "resolve_credentials",
]


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
