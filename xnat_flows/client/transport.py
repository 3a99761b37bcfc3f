"""The HTTP stack under ``XnatClient``: its TLS context, the proxy the environment names, the
sockets ``cancel()`` shuts down, and no secret in the stack's DEBUG trace."""

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


class _ShutdownOnCancel(httpcore.SyncBackend):
    """httpcore's socket backend, remembering its sockets so ``cancel()`` can shut them down.

    Closing a socket from another thread does not wake a thread blocked in ``send`` on it (a
    stalled upload); ``shutdown`` does, so Ctrl-C stops an upload within moments, not after the
    write timeout. After ``shutdown_all`` it opens no new connection: a request that was waiting
    for a free connection when the pools closed must not start sending.
    """

    def __init__(self) -> None:
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._shut = False

    def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        if self._shut:
            raise httpcore.ConnectError("cancelled: no new connections")
        stream = super().connect_tcp(*args, **kwargs)
        sock = stream.get_extra_info("socket")
        if sock is not None and not self._remember(sock):
            stream.close()
            raise httpcore.ConnectError("cancelled: no new connections")
        return stream

    def track(self, sock: socket.socket) -> None:
        """Remember a socket of the lean send path (``lean.LeanPool``); refused once cancelled."""
        if not self._remember(sock):
            raise httpx.ConnectError("cancelled: no new connections")

    def _remember(self, sock: socket.socket) -> bool:
        """Remember ``sock``; False when ``shutdown_all`` ran (also while it was being opened)."""
        with self._lock:
            self._sockets.add(sock)
            return not self._shut

    def shutdown_all(self) -> None:
        with self._lock:
            self._shut = True
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):  # already closed
                sock.shutdown(socket.SHUT_RDWR)


def _ssl_context(verify: bool | str) -> ssl.SSLContext | bool:
    if isinstance(verify, str):
        try:
            return ssl.create_default_context(cafile=verify)
        except (OSError, ssl.SSLError) as exc:
            raise InputError(
                f"Cannot load the CA bundle {verify}: {exc}",
                hint="Point XNAT_CA_BUNDLE at a PEM file",
                flow_hint="Point the CA bundle of the run's xnat-credentials Block at a PEM file on the worker host",
            ) from None
    return verify


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for ``url``: HTTPS_PROXY/HTTP_PROXY by scheme, else
    ALL_PROXY, unless NO_PROXY covers the host (the variables httpx, curl and pip read).

    A loopback host never goes through a proxy (as Go's net/http decides): a proxy elsewhere
    cannot reach this machine's loopback, and an emulator on 127.0.0.1 must work on a host whose
    environment names a proxy for the internet.
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
