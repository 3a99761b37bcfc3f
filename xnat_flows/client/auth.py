"""XNAT's JSESSION for one client.

The token (given, cached in the profile, or from a login with HTTP Basic), one shared re-login
when it expires, and no secret in an error.

Every thread of a client shares one ``SessionAuth``: when XNAT expires the session (idle timeout,
concurrent-session eviction) the first thread to see the 401 logs in again while the others wait
and reuse the new token — eight threads seeing 401 cause one login, not eight.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import TypeVar

import httpx

from xnat_flows.client.credentials import Credentials, TokenCache
from xnat_flows.client.errors import AuthenticationError, XnatError, error_for_response
from xnat_flows.client.retry import parse_retry_after
from xnat_flows.client.sender import Sender

log = logging.getLogger("xnat_flows.client")

_TOKEN_RE = re.compile(r"[A-Za-z0-9._~-]{8,512}")
_Error = TypeVar("_Error", bound=XnatError)  # scrub hands back the error it was given


class SessionAuth:
    """The session token of ``credentials`` on ``sender``'s server.

    ``login_timeout`` bounds a
    login's wait for an answer.
    """

    def __init__(
        self,
        credentials: Credentials,
        sender: Sender,
        token_cache: TokenCache | None,
        login_timeout: httpx.Timeout,
    ) -> None:
        self.credentials = credentials
        self.sender = sender
        self.token_cache = token_cache
        self.login_timeout = login_timeout
        self._lock = threading.Lock()
        self._state: tuple[int, str | None] = (0, None)  # (generation, JSESSIONID)
        self._loaded = False
        self.login_count = 0
        self._secrets = [s.get_secret_value() for s in (credentials.password, credentials.token) if s]

    @property
    def token(self) -> str | None:
        """The current JSESSIONID, or None before a login or a cached token."""
        return self._state[1]

    @property
    def generation(self) -> int:
        """How many tokens were taken so far: a request that saw a 401 passes it to ``relogin``."""
        return self._state[0]

    @property
    def can_login(self) -> bool:
        """Whether there is a password to log in (again) with."""
        return self.credentials.password is not None

    def login(self) -> None:
        """Open a new JSESSION with HTTP Basic (username:password or alias:secret)."""
        with self._lock:
            self._login_locked()

    def logout(self) -> None:
        """End the JSESSION on the server and forget it locally."""
        with self._lock:
            token = self._state[1]
            self._state = (self._state[0] + 1, None)
            self._loaded = True
        if self.token_cache is not None:
            self.token_cache.delete(self.credentials.url, self.credentials.username)
        if token:
            try:
                self.sender.send("DELETE", "/data/JSESSION", token=token)
            except XnatError as exc:  # the session dies on its own after the idle timeout
                log.info("logout request failed: %s", exc)

    def touch_cache(self) -> None:
        """Mark the cached token as used now (on close: the session stays valid for the next process)."""
        if self._state[1] and self.token_cache is not None:
            try:
                self.token_cache.touch(self.credentials.url, self.credentials.username)
            except OSError as exc:
                log.warning("could not update the token cache: %s", exc)

    def _login_locked(self) -> None:
        creds = self.credentials
        if not creds.username or creds.password is None:
            raise AuthenticationError(
                f"No valid XNAT session for {creds.url} and no password to log in",
                hint="Give a user name and password (or an alias token)",
                reason="no-password",
                url=creds.url,
            )
        response = self.sender.send(
            "POST",
            "/data/JSESSION",
            auth=httpx.BasicAuth(creds.username, creds.password.get_secret_value()),
            timeout=self.login_timeout,
            where=creds.url,
        )
        if response.status_code in (401, 403):
            raise AuthenticationError(
                f"XNAT at {creds.url} refused the login for user {creds.username!r} (HTTP {response.status_code})",
                status=response.status_code,
                url=creds.url,
            )
        if response.status_code != 200:
            raise self.scrub(error_for_response(response, parse_retry_after(response.headers.get("Retry-After"))))
        # The body is the session id; a proxy that strips bodies still passes the cookie.
        token = response.text.strip() or response.cookies.get("JSESSIONID") or ""
        if "<html" in token[:1000].lower() or not _TOKEN_RE.fullmatch(token):
            # Old or proxied XNATs answer a failed login with their HTML login page and 200.
            raise AuthenticationError(
                f"XNAT at {creds.url} answered the login for {creds.username!r} with a web page instead of a session id",
                status=200,
                hint="The user name or password is probably wrong; also check that the URL is XNAT's base URL",
            )
        self._state = (self._state[0] + 1, token)
        self._loaded = True
        self.login_count += 1
        log.info("logged in to %s as %s", creds.url, creds.username)
        if self.token_cache is not None:
            try:
                self.token_cache.put(
                    creds.url, creds.username, token, creds.password.get_secret_value() if creds.password else None
                )
            except OSError as exc:
                log.warning("could not write the token cache: %s", exc)

    def session(self) -> tuple[int, str | None]:
        """The current (generation, token), logging in first if there is nothing to reuse.

        Returns:
            The token's generation and the token (None only for a server that needs no login).
        """
        if not self._loaded:
            with self._lock:
                if not self._loaded:
                    creds = self.credentials
                    token = creds.token.get_secret_value() if creds.token else None
                    if token is None and self.token_cache is not None:
                        token = self.token_cache.get(
                            creds.url, creds.username, creds.password.get_secret_value() if creds.password else None
                        )
                    if token is not None:
                        self._state = (self._state[0] + 1, token)
                        self._loaded = True
                    else:
                        self._login_locked()
        return self._state

    def relogin(self, seen_generation: int) -> None:
        """Replace the token that just got a 401, unless another thread already did.

        Args:
            seen_generation: The generation of the token the 401 answered.
        """
        with self._lock:
            if self._state[0] != seen_generation:
                return
            if self.token_cache is not None:
                self.token_cache.delete(self.credentials.url, self.credentials.username)
            self._login_locked()

    def revalidate(self, generation: int) -> bool:
        """After a connection lost mid-body: was it an expired session? Then log in again.

        Servers may refuse a request with a dead session by closing the connection while the
        body is still being sent, so the client sees a broken pipe instead of the 401.

        Args:
            generation: The generation of the token the lost request carried.

        Returns:
            True when the session had expired and a new one was opened (the request may be sent again).
        """
        token = self._state[1]
        if token is None or self.credentials.password is None:
            return False
        try:
            probe = self.sender.send("GET", "/data/JSESSION", token=token, timeout=30.0)
        except XnatError:
            return False
        if probe.status_code != 401:
            return False
        log.info("session expired during an upload; logging in again")
        self.relogin(generation)
        return True

    def session_ended(self, method: str, path: str) -> AuthenticationError:
        """A 401 to a client holding only a session token (no password): that session has ended.

        Args:
            method: The refused request's method.
            path: The refused request's path.

        Returns:
            The error to raise, saying to log in again.
        """
        creds = self.credentials
        who = f"{creds.username}@{creds.url}" if creds.username else creds.url
        return AuthenticationError(
            f"{method} {path}: the XNAT session for {who} has ended (HTTP 401) and there is no password to log in again",
            status=401,
            hint="Log in again with a user and password",
            reason="session-ended",
            url=creds.url,
        )

    def scrub(self, error: _Error) -> _Error:
        """Belt and braces: no password or token text in an error, whatever the server echoed.

        Args:
            error: The error about to be raised.

        Returns:
            ``error``, its message and server message with each secret replaced by ``***``.
        """
        for secret in self._secrets + [self._state[1] or ""]:
            if secret and len(secret) >= 4:
                error.message = error.message.replace(secret, "***")
                error.server_message = error.server_message.replace(secret, "***")
        error.args = (error.message,)
        return error
