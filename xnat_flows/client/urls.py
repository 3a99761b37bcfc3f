"""The one secret-free form of a server URL (standard library only: events and limits import it)."""

from __future__ import annotations

from urllib.parse import urlsplit


def public_base_url(url: str) -> str:
    """``scheme://host[:port][/path]`` with user-info, query and fragment removed: the one form of
    a server URL that may appear in events, logs, limit names and messages."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}" if parts.scheme else url.split("?", 1)[0]


def server_host(url: str) -> str:
    """``host[:port]`` of a server URL, secret-free (names the upload concurrency limit and events)."""
    return urlsplit(public_base_url(url)).netloc or url
