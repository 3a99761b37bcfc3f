"""One attempt at one request: ``Sender.send`` builds the ``httpx.Request``, hands it to the
transport (``transport.XnatTransport``, or a test's) and turns httpx's failures into
``XnatConnectionError``. No retry, no login here: that is ``request_loop`` and ``auth``.

``cancel()`` ends every request of the sender from any thread: sockets shut down, pools closed,
no new connection opened.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import httpx

from xnat_flows import __version__
from xnat_flows.client.errors import CancelledError, NoAnswerError, XnatConnectionError
from xnat_flows.client.lean import AnswerTooSlow, answer_deadline, read_answer
from xnat_flows.client.transport import LEAN, SocketRegistry, XnatTransport, proxy_for, ssl_verify
from xnat_flows.client.urls import public_base_url

# A request body: bytes, or a zero-argument callable returning a fresh iterable of bytes for
# every attempt (so a streamed upload can be sent again after a retry or a re-login).
Content = bytes | str | Callable[[], Iterable[bytes]] | None


@contextlib.contextmanager
def opened(content: Content) -> Iterator[bytes | str | Iterable[bytes] | None]:
    """The request body (a callable makes a fresh one for each attempt); a streaming generator is
    closed afterwards, whatever happened, which closes the file it reads."""
    body = content() if callable(content) else content
    try:
        yield body
    finally:
        close = getattr(body, "close", None)
        if callable(close):
            close()


def connection_error(exc: Exception, where: str, url: str | None = None) -> XnatConnectionError:
    """httpx's failure as ours, with the facts: what was sent where (``where``, ``url``), and whether
    the connection was refused. A refused or timed-out connection after httpx's own connect retries
    means the host is down or unreachable: no quick request retries. A connection lost
    mid-request is worth a retry."""
    reachable = not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol))
    if isinstance(exc, AnswerTooSlow):  # answered, slowly: a second attempt would drip as long
        return NoAnswerError(
            f"{where}: {exc}",
            retryable=False,
            timed_out=True,
            hint="XNAT (or a proxy in front of it) sends its answers far too slowly: check the server's load "
            "and the network or proxy between",
            url=url,
        )
    kind = type(exc).__name__
    unanswered = isinstance(exc, (httpx.ReadTimeout, httpx.WriteTimeout))
    detail = f"no byte moved for the timeout ({exc})" if unanswered else str(exc)
    return XnatConnectionError(
        # A space after the URL: a log viewer that links URLs (Prefect's UI) would take a colon along.
        f"{where} — {kind}: {detail}",
        retryable=reachable,
        timed_out=unanswered,
        refused=_caused_by(exc, ConnectionRefusedError),
        url=url,
    )


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """``exc`` or an exception it was raised from is a ``kind`` (httpx chains httpcore's, which
    chains the socket's ``OSError``)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# What httpx.Client sends by default, with our User-Agent; encodings httpx decodes without extras.
_DEFAULT_HEADERS = {
    "accept": "*/*",
    "accept-encoding": "gzip, deflate",
    "connection": "keep-alive",
    "user-agent": f"xnat-flows/{__version__}",
}


class Sender:
    """The client's connections to one XNAT: ``XnatTransport`` (or ``transport``, a test's),
    sized by ``resize``.

    Every request is built here (``httpx.Request``: the URL under the base URL, default headers,
    the session cookie, the timeouts as the ``timeout`` extension) and handed to the transport's
    ``handle_request``, httpx's extension point; the answer is read as ``httpx.Client.send`` would.
    Not through ``httpx.Client`` itself: its per-request work (merging headers, cookies, auth and
    redirect machinery) costs more client CPU than gradual-DICOM's whole send
    (docs/performance.md), and we use none of it: no cookie jar (the token travels in an explicit
    Cookie header), no redirects, auth only for the login (``httpx.BasicAuth``'s own flow).
    """

    def __init__(
        self,
        url: str,
        verify: bool | str,
        timeout: httpx.Timeout,
        max_connections: int,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.verify = ssl_verify(verify)
        self.custom_transport = transport
        self.sockets = SocketRegistry()
        # httpx reads no proxy from the environment when it is given a transport, as it is here:
        # the proxy is found here and given to the transport (``proxy_for``).
        self.proxy = proxy_for(url) if transport is None else None
        self.max_connections = max_connections
        self.transport: XnatTransport | None = None
        self._transport = transport or self._new_transport(max_connections)
        self._base = url.rstrip("/")
        self._urls: dict[tuple[str, tuple[tuple[str, Any], ...] | None], httpx.URL] = {}
        self._cancelled = threading.Event()

    def _new_transport(self, max_connections: int) -> XnatTransport:
        self.transport = XnatTransport(
            self.url, verify=self.verify, max_connections=max_connections, proxy=self.proxy, sockets=self.sockets
        )
        return self.transport

    def resize(self, max_connections: int) -> None:
        """Connections for ``max_connections`` parallel requests (a test's transport is kept)."""
        if max_connections <= self.max_connections or self.custom_transport is not None:
            return
        old, self._transport = self._transport, self._new_transport(max_connections)
        self.max_connections = max_connections
        old.close()

    def build_url(self, path: str, params: Mapping[str, Any] | None = None) -> httpx.URL:
        """``path`` under the base URL with ``params``, as ``httpx.Client(base_url=...)`` builds it.

        Gradual-DICOM sends thousands of requests to one URL: it is built once."""
        key = (path, None if params is None else tuple(params.items()))
        try:
            url = self._urls.get(key)
            cacheable = True
        except TypeError:  # an unhashable parameter value: build it every time
            url, cacheable = None, False
        if url is None:
            joined = self._base + "/" + path.lstrip("/")
            url = httpx.URL(joined) if params is None else httpx.URL(joined, params=params)
            if cacheable:
                if len(self._urls) >= 64:  # many distinct targets: keep the cache small
                    self._urls.clear()
                self._urls[key] = url
        return url

    def send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        content: Content = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | httpx.Timeout | None = None,
        token: str | None = None,
        auth: httpx.Auth | None = None,
        lean: bool = False,
        where: str | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """One attempt; any status is returned. httpx's failures raise ``XnatConnectionError``
        naming ``where`` (default: the method and path). ``stream=True`` returns the answer with
        its body unread (``XnatClient.download`` reads it as it arrives)."""
        merged = dict(_DEFAULT_HEADERS)
        for name, value in (headers or {}).items():
            merged[name.lower()] = value
        if token:
            merged["cookie"] = f"JSESSIONID={token}"
        limits = self.timeout if timeout is None else httpx.Timeout(timeout)
        extensions: dict[str, Any] = {"timeout": limits.as_dict()}
        if lean:
            extensions[LEAN] = True
        sent_at = [time.monotonic()]

        def noting_the_end(chunks: Iterable[bytes]) -> Iterator[bytes]:
            yield from chunks
            sent_at[0] = time.monotonic()  # the answer's allowance counts from the end of the body

        with opened(content) as body:
            if body is not None and not isinstance(body, (bytes, str)):
                body = noting_the_end(body)
            try:
                request = httpx.Request(
                    method, self.build_url(path, params), headers=merged, content=body, extensions=extensions
                )
                if auth is not None:
                    request = next(auth.sync_auth_flow(request))  # e.g. BasicAuth: the Authorization header
                response = self._transport.handle_request(request)
                response.request = request
                if stream:  # the caller reads the body as it arrives
                    return response
                if response.is_stream_consumed:  # handed over read (a mock transport's answer)
                    return response
                if isinstance(
                    response.stream, httpx.ByteStream
                ):  # in memory: the lean pool read it, under the deadline
                    response.read()  # decodes a Content-Encoding
                    return response
                # The whole answer is bounded too: the read timeout is also a deadline on its last byte.
                try:
                    deadline, allowance = answer_deadline(limits)
                    deadline -= time.monotonic() - sent_at[0]
                    raw = read_answer(response.iter_raw(), deadline, allowance)
                finally:
                    response.close()
                answer = httpx.Response(
                    response.status_code, headers=response.headers, stream=httpx.ByteStream(raw), request=request
                )
                answer.read()  # decodes a Content-Encoding, as httpx's own read would
                return answer
            except httpx.HTTPError as exc:
                url = public_base_url(self.url)
                raise connection_error(exc, where or f"{method} {url}{path}", url) from None
            except Exception:
                if self.cancelled:  # the pool was closed or the sockets shut under this request by cancel()
                    raise CancelledError("Cancelled", hint=CancelledError.default_hint) from None
                raise

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def check_cancelled(self) -> None:
        if self._cancelled.is_set():
            raise CancelledError("Cancelled", hint=CancelledError.default_hint)

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds``, cut short by ``cancel()`` (then ``CancelledError``)."""
        if self._cancelled.wait(seconds):
            self.check_cancelled()

    def cancel(self) -> None:
        self._cancelled.set()
        self.sockets.shutdown_all()
        self._transport.close()

    def close(self) -> None:
        self._transport.close()
