"""A thread-safe XNAT REST client on httpx: JSESSION auth, one shared re-login, retries.

One ``XnatClient`` is meant to be shared by all upload threads of a process. It composes three
parts, each in its own module: ``auth.SessionAuth`` (the session token, the token cache, one shared
re-login), ``request_loop.RequestLoop`` (retries, re-login on 401, cancel, requests in doubt) and
``sender.Sender`` (one attempt through one ``httpx.Client`` on ``transport.XnatTransport``: httpx's
own transport, and ``lean.LeanTransport`` for gradual-DICOM's many small requests).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from xnat_flows.client.auth import SessionAuth
from xnat_flows.client.credentials import Credentials, TokenCache
from xnat_flows.client.errors import (
    AuthenticationError,
    CancelledError,
    NotFoundError,
    UnsupportedServerError,
    XnatError,
)
from xnat_flows.client.request_loop import InDoubtCount, RequestLoop
from xnat_flows.client.retry import NO_RETRY, RetryPolicy
from xnat_flows.client.sender import Content, Sender, connection_error
from xnat_flows.client.transport import proxy_for
from xnat_flows.client.urls import public_base_url
from xnat_flows.client.version import DIRECT_ARCHIVE_MIN_VERSION, at_least, parse_version

__all__ = ["DEFAULT_TIMEOUT", "Content", "XnatClient", "proxy_for"]

log = logging.getLogger("xnat_flows.client")

_DEFAULT = object()

# Seconds. Connect is short so an unreachable host fails fast; read is the upper bound for an
# upload's answer, whatever its size; pool is the wait for a free connection.
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=21600.0, write=300.0, pool=30.0)


def _at_most(limit: float | None, cap: float) -> float:
    """``cap``, or ``limit`` when that is shorter (httpx's ``None``: no limit)."""
    return cap if limit is None else min(limit, cap)


class XnatClient:
    """A client of one XNAT: login and token cache, retries, cancel, and the send paths.

    ``with XnatClient(creds) as xnat: xnat.get_rows("/data/projects")``.

    Args:
        credentials: Server, user and password or token.
        timeout: Httpx's per-phase timeouts of every request.
        stall: An upload ends when no byte moved for this many seconds.
        answer: A query's or a login's wait for an answer, in seconds.
        max_connections: Parallel connections (``reserve_connections`` raises it).
        token_cache: Where session tokens are kept (the profile's by default; None: none).
        retry: Which failures are retried, how often and after what wait.
        transport: An httpx transport to use instead of the network (tests).
    """

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
        self._sender = Sender(credentials.url, credentials.verify, self.timeout, max_connections, transport)
        self._auth = SessionAuth(
            credentials,
            self._sender,
            self.token_cache,
            httpx.Timeout(answer, connect=self.timeout.connect, pool=self.timeout.pool),
        )
        self._loop = RequestLoop(self._sender, self._auth)
        self._version: str | None | object = _DEFAULT

    @property
    def proxy(self) -> str | None:
        """The proxy the environment names for this server (``transport.proxy_for``), if any."""
        return self._sender.proxy

    @property
    def max_connections(self) -> int:
        """Connections the pool holds at most."""
        return self._sender.max_connections

    @property
    def login_count(self) -> int:
        """Logins this client made (a shared re-login counts once)."""
        return self._auth.login_count

    @property
    def requests_in_doubt(self) -> int:
        """Attempts XNAT may have acted on without our hearing.

        A POST or PUT that timed out or was cut after it reached XNAT, or a 504: uploads read it
        to tell whether a copy of what they sent may still be on its way into the session.
        """
        return self._loop.requests_in_doubt

    def reserve_connections(self, workers: int) -> None:
        """Size the connection pool for ``workers`` parallel requests (plus one for read-backs).

        Call before starting the workers: with fewer connections than workers the extra
        requests wait for a free one and fail on the pool timeout although XNAT is healthy.

        Args:
            workers: Parallel requests about to start.
        """
        self._sender.resize(workers + 1)

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> XnatClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close connections; the session stays valid (and cached) for the next process."""
        self._auth.touch_cache()
        self._sender.close()

    @property
    def base_url(self) -> str:
        """The server's URL, as given."""
        return self.credentials.url

    def cancel(self) -> None:
        """Stop every request of this client now, from any thread (e.g. on Ctrl-C).

        Backoffs end, streamed bodies stop at the next chunk and open connections are closed,
        so worker threads finish within moments with ``CancelledError``. The client cannot be
        used afterwards.
        """
        self._sender.cancel()

    @property
    def cancelled(self) -> bool:
        """Whether ``cancel()`` was called."""
        return self._sender.cancelled

    def check_cancelled(self) -> None:
        """Raise ``CancelledError`` if ``cancel()`` was called (for long loops and body generators)."""
        self._sender.check_cancelled()

    # -- authentication ----------------------------------------------------------------------

    def login(self) -> None:
        """Open a new JSESSION with HTTP Basic (username:password or alias:secret)."""
        self._auth.login()

    def logout(self) -> None:
        """End the JSESSION on the server and forget it locally."""
        self._auth.logout()

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
        in_doubt: InDoubtCount | None = None,
    ) -> httpx.Response:
        """Send a request; return the response (status < 400) or raise the classified XnatError.

        A 401 causes one shared re-login and a resend. Transient failures are retried per
        ``self.retry``; a body given as a plain iterator cannot be resent and is tried once.

        Args:
            method: HTTP method.
            path: Path on the server (``/data/...``).
            params: Query parameters.
            content: The body: bytes, text, a callable making a fresh body per attempt, or an iterator.
            headers: Extra request headers.
            timeout: This request's timeouts (the client's when None).
            retry: False for one attempt only (the client's policy otherwise).
            lean: Use the lean pool (``lean.LeanTransport``, http.client) where it applies: for many
                small requests, such as gradual-DICOM's one per instance.
            stream: Return the response with its body unread (``download`` reads it); retries end once
                the headers arrived.
            in_doubt: The caller's own count of this request's attempts that reached XNAT unanswered
                (``requests_in_doubt`` counts every request of the client).

        Returns:
            The response, status below 400.
        """
        return self._loop.request(
            method,
            path,
            policy=self.retry if retry else NO_RETRY,
            params=params,
            content=content,
            headers=headers,
            timeout=timeout,
            lean=lean,
            stream=stream,
            in_doubt=in_doubt,
        )

    # -- conveniences ------------------------------------------------------------------------

    def upload_timeout(self, size: int, store_rate: float = 2e6) -> httpx.Timeout:
        """The timeouts of one upload of ``size`` bytes.

        No byte moved for ``stall`` seconds ends it, and the answer may take ``stall`` plus the time
        XNAT needs to store the files at ``store_rate`` bytes/s.

        Args:
            size: The body's size in bytes.
            store_rate: The rate, in bytes per second, at which XNAT is assumed to store what it received.

        Returns:
            The timeouts for the upload's request.
        """
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
        """A GET whose body is read as it arrives (a file, a zip), never held whole.

        ``with client.download(path) as response: for chunk in response.iter_bytes(): ...``. Login,
        401 and retries are ``request``'s until the answer's headers arrive; a failure while the body
        is read (connection lost, nothing received for ``stall`` seconds) raises the classified
        ``XnatConnectionError``, for the caller to start that body again.

        Args:
            path: Path on the server.
            params: Query parameters.

        Yields:
            The response, its body unread.
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
            url = public_base_url(self.base_url)
            raise self._auth.scrub(connection_error(exc, f"GET {url}{path}", url)) from None
        except RuntimeError:
            if self.cancelled:  # the pool was closed under this response by cancel()
                raise CancelledError("Cancelled", hint=CancelledError.default_hint) from None
            raise
        finally:
            response.close()

    def get_json(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """GET ``path`` with ``format=json``.

        Args:
            path: Path on the server.
            params: Query parameters (``format=json`` is added).

        Returns:
            The decoded JSON.

        Raises:
            XnatError: The answer is not JSON (a login page or a proxy's page).
        """
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
        """Rows of an XNAT ResultSet listing, every value as a string ("" for null).

        Args:
            path: Path of the listing.
            params: Query parameters.

        Returns:
            The rows.
        """
        data = self.get_json(path, params)
        try:
            rows = data["ResultSet"]["Result"]
        except (KeyError, TypeError):
            raise XnatError(f"GET {path}: the answer is not an XNAT ResultSet", hint="") from None
        return [{str(k): _cell(v) for k, v in row.items()} for row in rows]

    def get_text(self, path: str, params: Mapping[str, Any] | None = None) -> str:
        """A plain-text answer (e.g. a prearchive code, a version), stripped.

        Args:
            path: Path on the server.
            params: Query parameters.

        Returns:
            The text.
        """
        return self.request("GET", path, params=params, timeout=self._query_timeout()).text.strip()

    def whoami(self) -> str:
        """The user name the session belongs to (``/xapi/users/username``)."""
        return self.get_text("/xapi/users/username")

    def server_version(self) -> str | None:
        """XNAT's version string, read once.

        Returns:
            The version, or None when the server does not say.
        """
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

        Args:
            project: The project's ID.
        """
        try:
            self.get_json(f"/data/projects/{project}")
        except NotFoundError:
            raise NotFoundError(
                f"Project {project!r} does not exist on {self.base_url} (or this account cannot see it)",
                status=404,
                hint="Check the project ID (case-sensitive), or ask an XNAT admin to create it",
                reason="unknown-project",
                url=self.base_url,
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
