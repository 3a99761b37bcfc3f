"""The HTTP stack under ``XnatClient``.

Its one transport (httpx's, with the lean pool for gradual-DICOM), the sockets ``cancel()``
shuts down, the TLS context, the proxy the environment names, and no secret in the stack's
DEBUG trace.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import socket
import ssl
import threading
import urllib.parse
import urllib.request
import weakref
from typing import Any

import httpcore
import httpx

from xnat_flows.client.errors import InputError
from xnat_flows.client.lean import LeanTransport


class _RedactSecrets(logging.Filter):
    """Blank session tokens and Basic credentials in the HTTP stack's DEBUG trace.

    httpcore logs raw request and response headers (our ``Cookie: JSESSIONID=...``, XNAT's
    ``Set-Cookie`` and ``Authorization``) at DEBUG; a worker configured to log it must not store them.
    """

    _PATTERNS = (
        (re.compile(r"(JSESSIONID=)[^;'\"\s,)]+", re.IGNORECASE), r"\1<redacted>"),
        (re.compile(r"((?:b')?authorization'?,\s*b?')[^']*", re.IGNORECASE), r"\1<redacted>"),
        (re.compile(r"(authorization:\s*\w+\s+)\S+", re.IGNORECASE), r"\1<redacted>"),
    )

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = message
        for pattern, replacement in self._PATTERNS:
            redacted = pattern.sub(replacement, redacted)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


# Filters act on the logger a record is created on, so each of the HTTP stack's loggers gets one.
for _name in ("httpx", "httpcore", "httpcore.connection", "httpcore.http11", "httpcore.http2", "httpcore.proxy"):
    logging.getLogger(_name).addFilter(_RedactSecrets())


class SocketRegistry:
    """The sockets of a client's connections, so ``cancel()`` can shut them down.

    Closing a socket from another thread does not wake a thread blocked in ``send`` on it (a
    stalled upload); ``shutdown`` does, so Ctrl-C stops an upload within moments, not after the
    write timeout. After ``shutdown_all`` no new connection opens: a request that was waiting
    for a free connection when the pools closed must not start sending.

    httpx's connections are learnt through httpcore's ``trace`` request extension (public API:
    ``connection.connect_tcp`` hands back the new stream, whose ``socket`` is an extra info);
    the lean pool's through ``track``.
    """

    def __init__(self) -> None:
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._shut = False

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """Httpcore's ``trace`` extension: refuse a connection once cancelled, remember the others.

        Args:
            event: Httpcore's event name.
            info: The event's details (``return_value`` holds the new stream).
        """
        if event == "connection.connect_tcp.started" and self._shut:
            raise httpcore.ConnectError("cancelled: no new connections")
        if event == "connection.connect_tcp.complete":
            stream = info.get("return_value")
            if stream is None:
                return
            sock = stream.get_extra_info("socket")
            if sock is not None and not self._remember(sock):
                stream.close()
                raise httpcore.ConnectError("cancelled: no new connections")

    def track(self, sock: socket.socket) -> None:
        """Remember a socket of the lean pool (``lean.LeanPool``); refused once cancelled.

        Args:
            sock: The new connection's socket.
        """
        if not self._remember(sock):
            raise httpx.ConnectError("cancelled: no new connections")

    def _remember(self, sock: socket.socket) -> bool:
        """Remember ``sock``; False when ``shutdown_all`` ran (also while it was being opened)."""
        with self._lock:
            self._sockets.add(sock)
            return not self._shut

    def shutdown_all(self) -> None:
        """Shut every known socket down and refuse new connections from now on."""
        with self._lock:
            self._shut = True
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):  # already closed
                sock.shutdown(socket.SHUT_RDWR)


# A request extension asking ``XnatTransport`` for the lean pool (``XnatClient.request(lean=True)``);
# other transports ignore it.
LEAN = "xnat_flows.lean"


class XnatTransport(httpx.BaseTransport):
    """The client's transport: httpx's own, or the lean pool for gradual-DICOM.

    ``httpx.HTTPTransport`` for every request, except those marked ``LEAN`` (gradual-DICOM's one
    POST per instance), which go through ``lean.LeanTransport`` (http.client) when no proxy
    applies. Both report their sockets to
    ``sockets`` and share one TLS context, one pool size and httpx's two connect retries.
    """

    def __init__(
        self,
        url: str,
        *,
        verify: ssl.SSLContext | bool,
        max_connections: int,
        proxy: str | None,
        sockets: SocketRegistry,
    ) -> None:
        tls = httpx.create_ssl_context(verify=verify)
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        # httpx retries failed connection attempts itself; everything else is the client's policy.
        self.http = httpx.HTTPTransport(verify=tls, limits=limits, retries=2, proxy=proxy)
        self.lean = None if proxy else LeanTransport.for_origin(url, tls, max_connections, sockets.track)
        self.max_connections = max_connections
        self._trace = sockets.trace

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the lean pool (``LEAN`` requests) or httpx's transport.

        Args:
            request: The request httpx built.

        Returns:
            The answer.
        """
        if self.lean is not None and request.extensions.get(LEAN):
            return self.lean.handle_request(request)
        request.extensions = {**request.extensions, "trace": self._trace}
        return self.http.handle_request(request)

    def close(self) -> None:
        """Close both transports."""
        self.http.close()
        if self.lean is not None:
            self.lean.close()


def ssl_verify(verify: bool | str) -> ssl.SSLContext | bool:
    """Httpx's ``verify``: a CA bundle's path becomes a context (a bad bundle is the user's to fix).

    Args:
        verify: True/False, or the path of a CA bundle.

    Returns:
        An SSL context for a bundle, else ``verify``.
    """
    if isinstance(verify, str):
        try:
            return ssl.create_default_context(cafile=verify)
        except (OSError, ssl.SSLError) as exc:
            raise InputError(
                f"Cannot load the CA bundle {verify}: {exc}",
                hint="Point the CA bundle setting at a PEM file",
                reason="ca-bundle",
            ) from None
    return verify


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for ``url``.

    HTTPS_PROXY/HTTP_PROXY by scheme, else ALL_PROXY, unless NO_PROXY covers the host (the
    variables httpx, curl and pip read). A loopback host never goes through a proxy (as Go's
    net/http decides): a proxy elsewhere cannot reach this machine's loopback, and an emulator on
    127.0.0.1 must work on a host whose environment names a proxy for the internet.

    Args:
        url: The server's URL.

    Returns:
        The proxy's URL, or None.
    """
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname or ""
    if host == "localhost" or _is_loopback(host):
        return None
    found = urllib.request.getproxies()
    proxy = found.get(parsed.scheme) or found.get("all")
    if not proxy or urllib.request.proxy_bypass(host):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
