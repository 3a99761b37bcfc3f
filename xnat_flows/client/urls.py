"""The one secret-free form of a server URL (standard library only: events and limits import it)."""

from __future__ import annotations

from urllib.parse import urlsplit


def public_base_url(url: str) -> str:
    """``scheme://host[:port][/path]`` with user-info, query and fragment removed.

    The one form of a server URL that may appear in events, logs, limit names and messages.

    Args:
        url: A server URL, possibly with credentials, a query or a fragment.

    Returns:
        The URL without user-info, query or fragment, and without a trailing slash.
    """
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}" if parts.scheme else url.split("?", 1)[0]


def server_host(url: str) -> str:
    """``host[:port]`` of a server URL, secret-free (names the upload concurrency limit and events).

    Args:
        url: A server URL.

    Returns:
        The host, with the port when the URL names one.
    """
    return urlsplit(public_base_url(url)).netloc or url
