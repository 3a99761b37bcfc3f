"""A thread-safe XNAT REST client on httpx: JSESSION auth, one shared re-login, retries.

One ``XnatClient`` is meant to be shared by all upload threads of a process: it keeps a
connection pool, and when XNAT expires the session (idle timeout, concurrent-session
eviction) the first thread to see the 401 logs in again while the others wait and reuse the
new token — eight threads seeing 401 cause one login, not eight.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import re
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any, TypeVar

import httpcore
import httpx

from xnat_flows import __version__
from xnat_flows.client.credentials import Credentials, TokenCache
from xnat_flows.client.errors import (
    AuthenticationError,
    CancelledError,
    InputError,
    NoAnswerError,
    NotFoundError,
    UnsupportedServerError,
    XnatConnectionError,
    XnatError,
    error_for_response,
)
from xnat_flows.client.lean import AnswerTooSlow, LeanPool, answer_deadline, read_answer
from xnat_flows.client.retry import NO_RETRY, RetryPolicy, parse_retry_after
from xnat_flows.client.version import DIRECT_ARCHIVE_MIN_VERSION, at_least, parse_version

log = logging.getLogger("xnat_flows.client")


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

# A request body: bytes, or a zero-argument callable returning a fresh iterable of bytes for
# every attempt (so a streamed upload can be sent again after a retry or a re-login).
Content = bytes | str | Callable[[], Iterable[bytes]] | None


@contextlib.contextmanager
def _opened(content: Content) -> Iterator[bytes | str | Iterable[bytes] | None]:
    """The request body (a callable makes a fresh one for each attempt); a streaming generator is
    closed afterwards, whatever happened, which closes the file it reads."""
    body = content() if callable(content) else content
    try:
        yield body
    finally:
        close = getattr(body, "close", None)
        if callable(close):
            close()


_TOKEN_RE = re.compile(r"[A-Za-z0-9._~-]{8,512}")
_DEFAULT = object()
_Error = TypeVar("_Error", bound=XnatError)  # _scrub hands back the error it was given


# Seconds. Connect is short so an unreachable host fails fast; read is the upper bound for an
# upload's answer, whatever its size; pool is the wait for a free connection.
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=21600.0, write=300.0, pool=30.0)


def _at_most(limit: float | None, cap: float) -> float:
    """``cap``, or ``limit`` when that is shorter (httpx's ``None``: no limit)."""
    return cap if limit is None else min(limit, cap)


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


def _maybe_acted_on(error: XnatError) -> bool:
    """The request reached XNAT and no answer says what became of it: the connection was made and
    then timed out or dropped, or a gateway gave up waiting (504) while XNAT may still work on it."""
    if isinstance(error, XnatConnectionError):
        return error.retryable or error.timed_out
    return error.status == 504


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


class XnatClient:
    """``with XnatClient(creds) as xnat: xnat.get_rows("/data/projects")``."""

    def __init__(
        self,
        credentials: Credentials,
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        stall: float = 300.0,
        answer: float = 60.0,
        max_connections: int = 16,
        token_cache: TokenCache | None = _DEFAULT,  # type: ignore[assignment]
        retry: RetryPolicy = RetryPolicy(),
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.credentials = credentials
        # httpx's Timeout bounds each phase of every request. Two bounds it has no notion of are
        # ours: ``stall`` ends an upload when no byte moved for that long (so its read allowance
        # grows with the body, ``upload_timeout``), and ``answer`` bounds a query's or a login's
        # wait for an answer, far below an upload's.
        self.timeout = httpx.Timeout(timeout)
        self.stall = stall
        self.answer = answer
        self.retry = retry
        self.token_cache: TokenCache | None = TokenCache() if token_cache is _DEFAULT else token_cache
        self._verify = _ssl_context(credentials.verify)
        self._custom_transport = transport
        self._backend = _ShutdownOnCancel()
        self.max_connections = max_connections
        # httpx reads no proxy from the environment when it is given a transport, as it is here:
        # the proxy is found here and given to the transport (``proxy_for``).
        self.proxy = proxy_for(credentials.url) if transport is None else None
        # The lean send path (``_send_lean``) needs the very connections httpx would make: only
        # with httpx's own transport (tests' mock transports must see every request) and without a
        # proxy. One TLS context, built by httpx, serves both paths.
        self._tls: ssl.SSLContext | None = None
        if transport is None and self.proxy is None:
            self._tls = httpx.create_ssl_context(verify=self._verify)
        self._lean_urls: dict[tuple[str, str, tuple[tuple[str, Any], ...]], tuple[httpx.URL, str]] = {}
        self._http = self._new_http(max_connections)
        self._lean = self._new_lean_pool(max_connections)
        self._lean_headers = {name.lower(): value for name, value in self._http.headers.items()}
        self._auth_lock = threading.Lock()
        self._auth_state: tuple[int, str | None] = (0, None)  # (generation, JSESSIONID)
        self._auth_loaded = False
        self.login_count = 0
        self._version: str | None | object = _DEFAULT
        self._secrets = [s.get_secret_value() for s in (credentials.password, credentials.token) if s]
        self._cancelled = threading.Event()
        # Attempts XNAT may have acted on without our hearing (``request``); read by uploads to
        # tell whether a copy of what they sent may still be on its way into the session.
        self.requests_in_doubt = 0
        self._in_doubt_lock = threading.Lock()

    def _new_http(self, max_connections: int) -> httpx.Client:
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        transport = self._custom_transport
        if transport is None:
            # httpx retries failed connection attempts itself; everything else is our policy.
            transport = httpx.HTTPTransport(
                verify=self._tls or self._verify, limits=limits, retries=2, proxy=self.proxy
            )
            pool = getattr(transport, "_pool", None)
            if isinstance(pool, httpcore.ConnectionPool):  # also through a proxy (HTTPProxy): our socket backend
                pool._network_backend = self._backend
        return httpx.Client(
            base_url=self.credentials.url,
            transport=transport,
            verify=self._verify,
            limits=limits,
            timeout=self.timeout,
            headers={"User-Agent": f"xnat-flows/{__version__}"},
            # The token travels in an explicit Cookie header; a jar would keep stale ones.
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
            follow_redirects=False,
        )

    def _new_lean_pool(self, max_connections: int) -> LeanPool | None:
        """The lean path's connections (``lean.LeanPool``): same origin, limits, TLS context and
        connect retries as httpx's transport, sockets known to ``cancel()``."""
        if self._tls is None:
            return None
        origin = httpx.URL(self.credentials.url)
        scheme = origin.scheme
        if scheme not in ("http", "https"):
            return None
        port = origin.port or (443 if scheme == "https" else 80)
        return LeanPool(
            origin.host, port, self._tls if scheme == "https" else None, max_connections, self._backend.track
        )

    def reserve_connections(self, workers: int) -> None:
        """Size the connection pool for ``workers`` parallel requests (plus one for read-backs).

        Call before starting the workers: with fewer connections than workers the extra
        requests wait for a free one and fail on the pool timeout although XNAT is healthy.
        """
        wanted = workers + 1
        if wanted <= self.max_connections or self._custom_transport is not None:
            return
        old, self._http = self._http, self._new_http(wanted)
        old_lean, self._lean = self._lean, self._new_lean_pool(wanted)
        self.max_connections = wanted
        old.close()
        if old_lean is not None:
            old_lean.close()

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> XnatClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close connections; the session stays valid (and cached) for the next process."""
        token = self._auth_state[1]
        if token and self.token_cache is not None:
            try:
                self.token_cache.touch(self.credentials.url, self.credentials.username)
            except OSError as exc:
                log.warning("could not update the token cache: %s", exc)
        self._http.close()
        if self._lean is not None:
            self._lean.close()

    @property
    def base_url(self) -> str:
        return self.credentials.url

    def cancel(self) -> None:
        """Stop every request of this client now, from any thread (e.g. on Ctrl-C).

        Backoffs end, streamed bodies stop at the next chunk and open connections are closed,
        so worker threads finish within moments with ``CancelledError``. The client cannot be
        used afterwards.
        """
        self._cancelled.set()
        self._backend.shutdown_all()
        self._http.close()
        if self._lean is not None:
            self._lean.close()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def check_cancelled(self) -> None:
        """Raise ``CancelledError`` if ``cancel()`` was called (for long loops and body generators)."""
        if self._cancelled.is_set():
            raise CancelledError("Cancelled", hint=CancelledError.default_hint)

    # -- authentication ----------------------------------------------------------------------

    def login(self) -> None:
        """Open a new JSESSION with HTTP Basic (username:password or alias:secret)."""
        with self._auth_lock:
            self._login_locked()

    def logout(self) -> None:
        """End the JSESSION on the server and forget it locally."""
        with self._auth_lock:
            token = self._auth_state[1]
            self._auth_state = (self._auth_state[0] + 1, None)
            self._auth_loaded = True
        if self.token_cache is not None:
            self.token_cache.delete(self.credentials.url, self.credentials.username)
        if token:
            try:
                self._http.request("DELETE", "/data/JSESSION", headers={"Cookie": f"JSESSIONID={token}"})
            except httpx.HTTPError as exc:  # the session dies on its own after the idle timeout
                log.info("logout request failed: %s", exc)

    def _login_locked(self) -> None:
        creds = self.credentials
        if not creds.username or creds.password is None:
            raise AuthenticationError(
                f"No valid XNAT session for {creds.url} and no password to log in",
                hint="Set XNAT_USER and XNAT_PASS, pass --username/--password, or run `xnat-flows auth login`",
                flow_hint="Pick an xnat-credentials Block (with user and password) in the run's connection parameter, "
                "or give the Block of this deployment a user and password",
            )
        try:
            response = self._http.post(
                "/data/JSESSION",
                auth=httpx.BasicAuth(creds.username, creds.password.get_secret_value()),
                timeout=httpx.Timeout(self.answer, connect=self.timeout.connect, pool=self.timeout.pool),
            )
        except httpx.HTTPError as exc:
            raise self._connection_error(exc) from None
        if response.status_code in (401, 403):
            raise AuthenticationError(
                f"XNAT at {creds.url} refused the login for user {creds.username!r} (HTTP {response.status_code})",
                status=response.status_code,
            )
        if response.status_code != 200:
            raise self._scrub(error_for_response(response, parse_retry_after(response.headers.get("Retry-After"))))
        # The body is the session id; a proxy that strips bodies still passes the cookie.
        token = response.text.strip() or response.cookies.get("JSESSIONID") or ""
        if "<html" in token[:1000].lower() or not _TOKEN_RE.fullmatch(token):
            # Old or proxied XNATs answer a failed login with their HTML login page and 200.
            raise AuthenticationError(
                f"XNAT at {creds.url} answered the login for {creds.username!r} with a web page instead of a session id",
                status=200,
                hint="The user name or password is probably wrong; also check that the URL is XNAT's base URL",
            )
        self._auth_state = (self._auth_state[0] + 1, token)
        self._auth_loaded = True
        self.login_count += 1
        log.info("logged in to %s as %s", creds.url, creds.username)
        if self.token_cache is not None:
            try:
                self.token_cache.put(
                    creds.url, creds.username, token, creds.password.get_secret_value() if creds.password else None
                )
            except OSError as exc:
                log.warning("could not write the token cache: %s", exc)

    def _session(self) -> tuple[int, str | None]:
        """The current (generation, token), logging in first if there is nothing to reuse."""
        if not self._auth_loaded:
            with self._auth_lock:
                if not self._auth_loaded:
                    creds = self.credentials
                    token = creds.token.get_secret_value() if creds.token else None
                    if token is None and self.token_cache is not None:
                        token = self.token_cache.get(
                            creds.url, creds.username, creds.password.get_secret_value() if creds.password else None
                        )
                    if token is not None:
                        self._auth_state = (self._auth_state[0] + 1, token)
                        self._auth_loaded = True
                    else:
                        self._login_locked()
        return self._auth_state

    def _relogin(self, seen_generation: int) -> None:
        """Replace the token that just got a 401, unless another thread already did."""
        with self._auth_lock:
            if self._auth_state[0] != seen_generation:
                return
            if self.token_cache is not None:
                self.token_cache.delete(self.credentials.url, self.credentials.username)
            self._login_locked()

    # -- requests ----------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        content: Content = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | httpx.Timeout | None = None,
        retry: bool = True,
        lean: bool = False,
        stream: bool = False,
    ) -> httpx.Response:
        """Send a request; return the response (status < 400) or raise the classified XnatError.

        A 401 causes one shared re-login and a resend. Transient failures are retried per
        ``self.retry``; a body given as a plain iterator cannot be resent and is tried once.
        ``lean=True`` sends through ``lean.LeanPool`` (http.client) where that is safe (``_send_lean``): for
        many small requests, such as gradual-DICOM's one per instance. ``stream=True`` returns the
        response with its body unread (``download`` reads it); retries end once the headers arrived.
        """
        policy = self.retry if retry else NO_RETRY
        single_use = content is not None and not isinstance(content, (bytes, str)) and not callable(content)
        relogged = False
        attempt = 0
        slept = 0.0
        unanswered = 0
        started = time.monotonic()
        generation = self._auth_state[0]
        while True:
            try:
                self.check_cancelled()
                generation, token = self._session()  # a login that meets a busy server is retried too
                if lean and self._lean is not None:
                    response = self._send_lean(self._lean, method, path, params, content, headers, timeout, token)
                else:
                    response = self._send(method, path, params, content, headers, timeout, token, stream)
                if stream and response.status_code >= 400:
                    response.read()  # an error's body is short, and the error quotes it
                    response.close()
                if (
                    response.status_code == 401
                    and not relogged
                    and self.credentials.password is not None
                    and not single_use
                ):
                    relogged = True
                    log.info("%s %s: session expired (401); logging in again", method, path)
                    self._relogin(generation)
                    continue
            except XnatError as exc:
                if self.cancelled:  # whatever broke, the reason is the cancel
                    raise CancelledError("Cancelled", hint=CancelledError.default_hint) from None
                error = exc
            else:
                if response.status_code < 400:
                    return response
                error = self._scrub(
                    self._session_ended(method, path)
                    if response.status_code == 401 and self.credentials.password is None
                    else error_for_response(response, parse_retry_after(response.headers.get("Retry-After")))
                )
            attempt += 1
            if method in ("POST", "PUT") and _maybe_acted_on(error):
                with self._in_doubt_lock:
                    self.requests_in_doubt += 1
            if isinstance(error, XnatConnectionError) and error.timed_out:
                unanswered += 1
                if unanswered >= policy.unanswered_attempts:
                    # A server that swallowed the request this often will not answer the next one either.
                    raise self._scrub(
                        NoAnswerError(
                            f"{method} {path}: {self.base_url} took the connection but sent no answer "
                            f"({unanswered} attempts, {time.monotonic() - started:.0f} s in all)",
                            retryable=False,
                            timed_out=True,
                        )
                    )
            if single_use or attempt >= policy.attempts or not policy.should_retry(error, method, path):
                raise error
            if isinstance(error, XnatConnectionError) and content is not None and not relogged:
                relogged = self._revalidate(generation)
            wait = policy.delay(attempt - 1, error.retry_after)
            if slept + wait > policy.budget_seconds:
                raise error
            log.warning(
                "%s %s: %s; retry %d/%d in %.1f s", method, path, error.message, attempt, policy.attempts - 1, wait
            )
            if policy.sleep is not None:
                policy.sleep(wait)
            elif self._cancelled.wait(wait):
                self.check_cancelled()
            slept += wait

    def _session_ended(self, method: str, path: str) -> AuthenticationError:
        """A 401 to a client holding only a session token (no password): that session has ended."""
        creds = self.credentials
        who = f"{creds.username}@{creds.url}" if creds.username else creds.url
        return AuthenticationError(
            f"{method} {path}: the XNAT session for {who} has ended (HTTP 401) and there is no password to log in again",
            status=401,
            hint="Run `xnat-flows auth login` (in a script: `... | xnat-flows auth login --password-stdin`)",
            flow_hint="Give the run's xnat-credentials Block a user and password, so the run can log in again",
        )

    def _revalidate(self, generation: int) -> bool:
        """After a connection lost mid-body: was it an expired session? Then log in again.

        Servers may refuse a request with a dead session by closing the connection while the
        body is still being sent, so the client sees a broken pipe instead of the 401.
        """
        token = self._auth_state[1]
        if token is None or self.credentials.password is None:
            return False
        try:
            probe = self._http.get("/data/JSESSION", headers={"Cookie": f"JSESSIONID={token}"}, timeout=30.0)
        except httpx.HTTPError:
            return False
        if probe.status_code != 401:
            return False
        log.info("session expired during an upload; logging in again")
        self._relogin(generation)
        return True

    def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        content: Content,
        headers: Mapping[str, str] | None,
        timeout: float | httpx.Timeout | None,
        token: str | None,
        stream: bool = False,
    ) -> httpx.Response:
        merged = dict(headers or {})
        if token:
            merged["Cookie"] = f"JSESSIONID={token}"
        limits = self.timeout if timeout is None else httpx.Timeout(timeout)
        sent_at = [time.monotonic()]

        def noting_the_end(chunks: Iterable[bytes]) -> Iterator[bytes]:
            yield from chunks
            sent_at[0] = time.monotonic()  # the answer's allowance counts from the end of the body

        with _opened(content) as body:
            if body is not None and not isinstance(body, (bytes, str)):
                body = noting_the_end(body)
            try:
                request = self._http.build_request(
                    method, path, params=params, content=body, headers=merged, timeout=limits
                )
                response = self._http.send(request, stream=True)
                if stream:  # the caller reads the body as it arrives (``download``)
                    return response
                try:
                    if response.is_stream_consumed:  # a transport that hands answers read (httpx.MockTransport)
                        return response
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
                raise self._connection_error(exc, f"{method} {path}") from None
            except RuntimeError:
                if self.cancelled:  # the pool was closed under this request by cancel()
                    raise CancelledError("Cancelled", hint=CancelledError.default_hint) from None
                raise

    def _send_lean(
        self,
        pool: LeanPool,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        content: Content,
        headers: Mapping[str, str] | None,
        timeout: float | httpx.Timeout | None,
        token: str | None,
    ) -> httpx.Response:
        """``_send`` through ``lean.LeanPool`` (http.client), for many small requests: about half
        the CPU of httpx's path (docs/performance.md). The same URL (built by httpx once per path
        and parameters), headers, timeouts and TLS context, and httpx's errors and ``Response``
        for everything above."""
        url, target = self._lean_url(method, path, params)
        merged = dict(self._lean_headers)
        for name, value in (headers or {}).items():
            merged[name.lower()] = value
        if token:
            merged["cookie"] = f"JSESSIONID={token}"
        limits = self.timeout if timeout is None else httpx.Timeout(timeout)
        with _opened(content) as body:
            if isinstance(body, str):
                body = body.encode("utf-8")
            try:
                status, answer_headers, data = pool.request(method, target, merged, body, limits)
            except httpx.TransportError as exc:
                raise self._connection_error(exc, f"{method} {path}") from None
            except Exception:
                if self.cancelled:  # the sockets were shut under this request by cancel()
                    raise CancelledError("Cancelled", hint=CancelledError.default_hint) from None
                raise
        response = httpx.Response(
            status, headers=answer_headers, stream=httpx.ByteStream(data), request=httpx.Request(method, url)
        )
        response.read()  # decodes a Content-Encoding as httpx does
        return response

    def _lean_url(self, method: str, path: str, params: Mapping[str, Any] | None) -> tuple[httpx.URL, str]:
        """The URL httpx would send to, and its request target (path and query) for the lean pool.

        Gradual-DICOM sends thousands of requests to one URL: it is built once."""
        key = (method, path, tuple((params or {}).items()))
        try:
            known = self._lean_urls.get(key)
            cacheable = True
        except TypeError:  # an unhashable parameter value: build it every time
            known, cacheable = None, False
        if known is None:
            url = self._http.build_request(method, path, params=params).url
            known = (url, url.raw_path.decode("ascii"))
            if cacheable:
                if len(self._lean_urls) >= 64:  # many distinct targets: keep the cache small
                    self._lean_urls.clear()
                self._lean_urls[key] = known
        return known

    def _connection_error(self, exc: Exception, where: str | None = None) -> XnatConnectionError:
        where = where or self.credentials.url
        # A refused or timed-out connection after httpx's own connect retries means the host
        # is down or unreachable: fail fast. A connection lost mid-request is worth a retry.
        reachable = not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol))
        if isinstance(exc, AnswerTooSlow):  # answered, slowly: a second attempt would drip as long
            return self._scrub(
                NoAnswerError(
                    f"{where}: {exc}",
                    retryable=False,
                    timed_out=True,
                    hint="XNAT (or a proxy in front of it) sends its answers far too slowly: check the server's load "
                    "and the network or proxy between",
                )
            )
        kind = type(exc).__name__
        unanswered = isinstance(exc, (httpx.ReadTimeout, httpx.WriteTimeout))
        detail = f"no byte moved for the timeout ({exc})" if unanswered else str(exc)
        return self._scrub(XnatConnectionError(f"{where}: {kind}: {detail}", retryable=reachable, timed_out=unanswered))

    def _scrub(self, error: _Error) -> _Error:
        """Belt and braces: no password or token text in an error, whatever the server echoed."""
        for secret in self._secrets + [self._auth_state[1] or ""]:
            if secret and len(secret) >= 4:
                error.message = error.message.replace(secret, "***")
                error.server_message = error.server_message.replace(secret, "***")
        error.args = (error.message,)
        return error

    # -- conveniences ------------------------------------------------------------------------

    def upload_timeout(self, size: int, store_rate: float = 2e6) -> httpx.Timeout:
        """For one upload of ``size`` bytes: no byte moved for ``stall`` seconds ends it, and the answer
        may take ``stall`` plus the time XNAT needs to store the files at ``store_rate`` bytes/s."""
        return httpx.Timeout(
            connect=self.timeout.connect,
            read=_at_most(self.timeout.read, self.stall + size / store_rate),
            write=_at_most(self.timeout.write, self.stall),
            pool=self.timeout.pool,
        )

    def _query_timeout(self) -> httpx.Timeout:
        # Read-backs get a minute, not the hours an upload may need: a stalled server should
        # fail a listing (and let the retries work) rather than hang it.
        return httpx.Timeout(
            _at_most(self.timeout.read, self.answer), connect=self.timeout.connect, pool=self.timeout.pool
        )

    @contextlib.contextmanager
    def download(self, path: str, params: Mapping[str, Any] | None = None) -> Iterator[httpx.Response]:
        """``with client.download(path) as response: for chunk in response.iter_bytes(): ...``

        A GET whose body is read as it arrives (a file, a zip), never held whole. Login, 401 and
        retries are ``request``'s until the answer's headers arrive; a failure while the body is
        read (connection lost, nothing received for ``stall`` seconds) raises the classified
        ``XnatConnectionError``, for the caller to start that body again.
        """
        limits = httpx.Timeout(
            connect=self.timeout.connect,
            read=_at_most(self.timeout.read, self.stall),
            write=self.timeout.write,
            pool=self.timeout.pool,
        )
        response = self.request("GET", path, params=params, timeout=limits, stream=True)
        try:
            yield response
        except httpx.HTTPError as exc:
            if self.cancelled:
                raise CancelledError("Cancelled", hint=CancelledError.default_hint) from None
            raise self._connection_error(exc, f"GET {path}") from None
        except RuntimeError:
            if self.cancelled:  # the pool was closed under this response by cancel()
                raise CancelledError("Cancelled", hint=CancelledError.default_hint) from None
            raise
        finally:
            response.close()

    def get_json(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        response = self.request("GET", path, params={"format": "json", **(params or {})}, timeout=self._query_timeout())
        try:
            return response.json()
        except json.JSONDecodeError:
            raise XnatError(
                f"GET {path}: expected JSON, got {response.headers.get('Content-Type', 'no content type')}",
                status=response.status_code,
                hint="Check that the URL is XNAT's base URL (not a login page or a proxy)",
            ) from None

    def get_rows(self, path: str, params: Mapping[str, Any] | None = None) -> list[dict[str, str]]:
        """Rows of an XNAT ResultSet listing, every value as a string ("" for null)."""
        data = self.get_json(path, params)
        try:
            rows = data["ResultSet"]["Result"]
        except (KeyError, TypeError):
            raise XnatError(f"GET {path}: the answer is not an XNAT ResultSet", hint="") from None
        return [{str(k): _cell(v) for k, v in row.items()} for row in rows]

    def get_text(self, path: str, params: Mapping[str, Any] | None = None) -> str:
        """A plain-text answer (e.g. a prearchive code, a version), stripped."""
        return self.request("GET", path, params=params, timeout=self._query_timeout()).text.strip()

    def whoami(self) -> str:
        return self.get_text("/xapi/users/username")

    def server_version(self) -> str | None:
        """XNAT's version string, read once; ``None`` when the server does not say."""
        if self._version is _DEFAULT:
            version: str | None = None
            try:
                text = self.request("GET", "/xapi/siteConfig/buildInfo/version", timeout=15.0, retry=False).text.strip()
                if text.startswith("{"):
                    text = str(json.loads(text).get("version", ""))
                version = text if parse_version(text) else None
            except AuthenticationError:
                raise
            except (XnatError, ValueError) as exc:
                log.info("server version unknown: %s", exc)
            self._version = version
        return self._version  # type: ignore[return-value]

    def require_project(self, project: str) -> None:
        """Raise ``NotFoundError`` with advice when ``project`` is not on the server.

        Checked before uploading: XNAT files data for an unknown project under *Unassigned* in the
        prearchive instead of refusing it.
        """
        try:
            self.get_json(f"/data/projects/{project}")
        except NotFoundError:
            raise NotFoundError(
                f"Project {project!r} does not exist on {self.base_url} (or this account cannot see it)",
                status=404,
                hint="Check the project ID (case-sensitive), or ask an XNAT admin to create it",
                flow_hint="Check the project in the run's parameters (case-sensitive), or ask an XNAT admin to "
                "create it",
            ) from None

    def require_direct_archive(self) -> None:
        """Raise ``UnsupportedServerError`` on XNAT older than 1.8.3; proceed when unknown."""
        version = self.server_version()
        if version and at_least(version, DIRECT_ARCHIVE_MIN_VERSION) is False:
            raise UnsupportedServerError(
                f"Direct-Archive needs XNAT {DIRECT_ARCHIVE_MIN_VERSION} or newer; {self.base_url} runs {version}"
            )


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
