"""Keep-alive HTTP/1.1 connections of the standard library's ``http.client``, for many small requests.

gradual-DICOM sends one request per instance, thousands in a run. Through httpcore each costs
~0.5 ms of client CPU; ``http.client`` sends the same request for about half of that
(docs/performance.md). ``LeanTransport`` puts this pool behind httpx's transport interface
(``httpx.BaseTransport.handle_request``, httpx's extension point), so the client builds, sends
and reads every request through one ``httpx.Client``, whichever pool carries it:
``XnatClient.request(..., lean=True)`` marks a request for this pool (``transport.XnatTransport``).
Failures are raised as the httpx exceptions of the same meaning, as httpx's own transport does.
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable

import httpx


class AnswerTooSlow(httpx.ReadTimeout):
    """The answer kept coming, a few bytes at a time, past its deadline.

    httpx's read timeout bounds each read, not the whole answer, so a server (or proxy) dripping
    it would hold the request for as long as it likes.
    """


def read_answer(chunks: Iterable[bytes], deadline: float, allowance: float | None) -> bytes:
    """The whole answer body from ``chunks``; one bound on the whole answer, for both send paths.

    Args:
        chunks: The body as it arrives.
        deadline: The monotonic time by which the whole body must be in (None: no bound).
        allowance: The allowance in seconds, for the error's message.

    Returns:
        The body.

    Raises:
        AnswerTooSlow: ``deadline`` passed before the body's end.
    """
    parts: list[bytes] = []
    for chunk in chunks:
        parts.append(chunk)
        if time.monotonic() > deadline:
            raise AnswerTooSlow(
                f"the answer was still arriving {allowance:.3g} s after the request "
                f"({sum(len(p) for p in parts)} bytes so far)"
            )
    return b"".join(parts)


def answer_deadline(timeout: httpx.Timeout) -> tuple[float, float | None]:
    """The bound on a whole answer, from now (the request sent).

    Args:
        timeout: The request's timeouts; ``timeout.read`` is the allowance (httpx's None: no bound).

    Returns:
        The monotonic time by which the whole answer must be in (None: no bound), and the allowance.
    """
    allowance = timeout.read
    return (time.monotonic() + allowance if allowance is not None else float("inf")), allowance


# httpx's transport retries a failed connection twice, the second time after 0.5 s (httpcore's
# ``retries=2`` with its backoff); the same here.
_CONNECT_RETRY_DELAYS = (0.0, 0.5)


class LeanPool:
    """Up to ``max_connections`` connections to one origin, reused while the server keeps them.

    ``track(sock)`` is called with every new socket (``cancel()`` shuts them down); it raises to
    refuse a new connection once the client is cancelled.
    """

    def __init__(
        self,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        max_connections: int,
        track: Callable[[socket.socket], None],
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.max_connections = max_connections
        self._track = track
        self._slots = threading.BoundedSemaphore(max_connections)
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    def request(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes | Iterable[bytes] | None,
        timeout: httpx.Timeout,
        chunked: bool = False,
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Send one request; its status, headers and whole body.

        A connection is returned to the pool only after a complete answer that does not close it.

        Args:
            method: HTTP method.
            target: The request target (path and query).
            headers: Request headers.
            body: The body: bytes, an iterable of chunks, or None.
            timeout: Connect, write and read timeouts; the read timeout bounds the whole answer.
            chunked: Send ``body`` in chunked transfer encoding (its length is not known beforehand).

        Returns:
            The status, the headers and the body.
        """
        if not self._slots.acquire(timeout=timeout.pool if timeout.pool is not None else -1):
            raise httpx.PoolTimeout("no free connection in time")
        try:
            connection = self._idle_connection() or self._connect(timeout.connect)
            try:
                status, answer_headers, content, reusable = self._exchange(
                    connection, method, target, headers, body, timeout, chunked
                )
            except BaseException:
                connection.close()
                raise
            if not (reusable and self._keep(connection)):
                connection.close()
            return status, answer_headers, content
        finally:
            self._slots.release()

    def close(self) -> None:
        """Close every idle connection; later requests are refused."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def _keep(self, connection: http.client.HTTPConnection) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._idle.append(connection)
            return True

    def _idle_connection(self) -> http.client.HTTPConnection | None:
        """The most recently used idle connection the server has not closed meanwhile."""
        while True:
            with self._lock:
                if not self._idle:
                    return None
                connection = self._idle.pop()
            sock = connection.sock
            # An idle connection with something to read has been closed by the server (or holds
            # garbage): sending on it would fail half-way, so open another (as httpcore does).
            if sock is not None and not select.select([sock], [], [], 0)[0]:
                return connection
            connection.close()

    def _connect(self, connect_timeout: float | None) -> http.client.HTTPConnection:
        for delay in _CONNECT_RETRY_DELAYS:
            try:
                connection = self._open(connect_timeout)
                break
            except httpx.TransportError:
                time.sleep(delay)
        else:
            connection = self._open(connect_timeout)
        assert connection.sock is not None
        try:
            self._track(connection.sock)
        except BaseException:
            connection.close()
            raise
        return connection

    def _open(self, connect_timeout: float | None) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection
        if self.tls is not None:
            connection = http.client.HTTPSConnection(self.host, self.port, timeout=connect_timeout, context=self.tls)
        else:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=connect_timeout)
        try:
            connection.connect()
        except TimeoutError as exc:
            connection.close()
            raise httpx.ConnectTimeout(str(exc) or "timed out") from None
        except OSError as exc:  # refused, unreachable, TLS (ssl.SSLError is an OSError)
            connection.close()
            raise httpx.ConnectError(str(exc)) from exc  # the cause says which (e.g. ConnectionRefusedError)
        assert connection.sock is not None
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection

    @staticmethod
    def _exchange(
        connection: http.client.HTTPConnection,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes | Iterable[bytes] | None,
        timeout: httpx.Timeout,
        chunked: bool,
    ) -> tuple[int, list[tuple[str, str]], bytes, bool]:
        sock = connection.sock
        assert sock is not None
        sock.settimeout(timeout.write)
        try:
            connection.request(method, target, body=body, headers=headers, encode_chunked=chunked)
        except TimeoutError as exc:
            raise httpx.WriteTimeout(str(exc) or "timed out") from None
        except (OSError, http.client.HTTPException) as exc:
            raise httpx.WriteError(str(exc) or type(exc).__name__) from None
        sock.settimeout(timeout.read)
        deadline, allowance = answer_deadline(timeout)
        try:
            response = connection.getresponse()
            content = read_answer(iter(lambda: response.read1(65536), b""), deadline, allowance)
            response.read()  # nothing left: marks the answer complete, so the connection can be reused
        except TimeoutError as exc:
            raise httpx.ReadTimeout(str(exc) or "timed out") from None
        except http.client.HTTPException as exc:  # closed without an answer, a bad status line, cut short
            raise httpx.RemoteProtocolError(str(exc) or type(exc).__name__) from None
        except OSError as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__) from None
        # read() has consumed the whole answer and released the response
        return response.status, response.getheaders(), content, not response.will_close


class LeanTransport(httpx.BaseTransport):
    """``LeanPool`` as an httpx transport.

    The request httpx built (URL, headers, body) goes out on a kept ``http.client`` connection
    with the request's own timeouts; the answer comes back as an ``httpx.Response`` that httpx
    reads and decodes as any other.
    """

    def __init__(self, pool: LeanPool) -> None:
        self.pool = pool

    @classmethod
    def for_origin(
        cls, url: str, tls: ssl.SSLContext, max_connections: int, track: Callable[[socket.socket], None]
    ) -> LeanTransport | None:
        """The transport for ``url``'s origin; ``None`` for a scheme other than http(s).

        Args:
            url: Any URL on the server.
            tls: The TLS context for https.
            max_connections: Connections kept at most.
            track: Called with every new socket (``cancel()`` shuts them down).

        Returns:
            The transport, or None.
        """
        origin = httpx.URL(url)
        if origin.scheme not in ("http", "https"):
            return None
        https = origin.scheme == "https"
        port = origin.port or (443 if https else 80)
        return cls(LeanPool(origin.host, port, tls if https else None, max_connections, track))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` on a kept connection (httpx's transport interface).

        Args:
            request: The request httpx built.

        Returns:
            The answer, its body read whole.
        """
        timeout = httpx.Timeout(
            None, **request.extensions.get("timeout", {})
        )  # as httpx: a phase not given has no limit
        headers = dict(request.headers)
        body: bytes | Iterable[bytes] | None
        try:
            body = request.content  # bytes given to httpx: read already
        except httpx.RequestNotRead:
            body = request.stream  # type: ignore[assignment]  # a sync request's stream iterates bytes
        if body == b"" and "content-length" not in headers:
            body = None  # no body, and no "Content-Length: 0" httpx would not have sent
        status, answer_headers, content = self.pool.request(
            request.method,
            request.url.raw_path.decode("ascii"),
            headers,
            body,
            timeout,
            chunked=headers.get("transfer-encoding") == "chunked",
        )
        return httpx.Response(
            status,
            headers=answer_headers,
            stream=httpx.ByteStream(content),
            extensions={"http_version": b"HTTP/1.1"},
        )

    def close(self) -> None:
        """Close the pool's connections."""
        self.pool.close()
