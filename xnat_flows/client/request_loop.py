"""The request loop: one request sent until it is answered, under the client's retry policy.

A 401 causes one shared re-login (``auth.SessionAuth``) and a resend; transient failures are
retried with backoff, cut short by ``cancel()``; a server that takes the connection and never
answers fails after ``RetryPolicy.unanswered_attempts``; the attempts XNAT may have acted on
without our hearing are counted (``requests_in_doubt``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import httpx

from xnat_flows.client.auth import SessionAuth
from xnat_flows.client.errors import CancelledError, NoAnswerError, XnatConnectionError, XnatError, error_for_response
from xnat_flows.client.retry import RetryPolicy, parse_retry_after
from xnat_flows.client.sender import Content, Sender

log = logging.getLogger("xnat_flows.client")


def _maybe_acted_on(error: XnatError) -> bool:
    """Whether the request reached XNAT and no answer says what became of it.

    Returns:
        True when the connection was made and then timed out or dropped, or a gateway gave up
        waiting (504) while XNAT may still work on it.
    """
    if isinstance(error, XnatConnectionError):
        return error.retryable or error.timed_out
    return error.status == 504


class InDoubtCount:
    """One caller's count of attempts XNAT may have acted on without our hearing (thread-safe).

    A caller gives its own to ``request(..., in_doubt=)``: parallel uploads sharing one client
    (DICOM-zip batches) each learn of their own requests only, which a before/after difference
    of the client-wide count cannot tell apart.
    """

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    def add(self) -> None:
        """Count one more attempt in doubt."""
        with self._lock:
            self._count += 1

    @property
    def value(self) -> int:
        """The attempts counted so far."""
        return self._count


class RequestLoop:
    """Requests through ``sender`` with ``auth``'s session."""

    def __init__(self, sender: Sender, auth: SessionAuth) -> None:
        self.sender = sender
        self.auth = auth
        # Attempts XNAT may have acted on without our hearing; read by uploads to tell whether a
        # copy of what they sent may still be on its way into the session.
        self.requests_in_doubt = 0
        self._in_doubt_lock = threading.Lock()

    def request(
        self,
        method: str,
        path: str,
        *,
        policy: RetryPolicy,
        params: Mapping[str, Any] | None = None,
        content: Content = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | httpx.Timeout | None = None,
        lean: bool = False,
        stream: bool = False,
        in_doubt: InDoubtCount | None = None,
    ) -> httpx.Response:
        """Send one request with retries, re-login and cancel; the response, or the classified error.

        A body given as a plain iterator cannot be sent again and is tried once.

        Args:
            method: HTTP method.
            path: Path on the server (``/data/...``).
            policy: Which failures are retried, how often and after what wait.
            params: Query parameters.
            content: The body: bytes, text, a callable making a fresh body per attempt, or an iterator.
            headers: Extra request headers.
            timeout: The request's timeout, overriding the client's.
            lean: Send through the lean transport (the gradual-DICOM path).
            stream: Leave a successful response's body unread, for the caller to read and close.
            in_doubt: The caller's own count of this request's attempts XNAT may have acted on
                unanswered (besides the client's).

        Returns:
            The response, status below 400.

        Raises:
            XnatError: The classified failure once retries are spent or not allowed.
        """
        sender, auth = self.sender, self.auth
        single_use = content is not None and not isinstance(content, (bytes, str)) and not callable(content)
        relogged = False
        attempt = 0
        slept = 0.0
        unanswered = 0
        started = time.monotonic()
        generation = auth.generation
        while True:
            try:
                sender.check_cancelled()
                generation, token = auth.session()  # a login that meets a busy server is retried too
                response = sender.send(
                    method,
                    path,
                    params=params,
                    content=content,
                    headers=headers,
                    timeout=timeout,
                    token=token,
                    lean=lean,
                    stream=stream,
                )
                if stream and response.status_code >= 400:
                    response.read()  # an error's body is short, and the error quotes it
                    response.close()
                if response.status_code == 401 and not relogged and auth.can_login and not single_use:
                    relogged = True
                    log.info("%s %s: session expired (401); logging in again", method, path)
                    auth.relogin(generation)
                    continue
            except XnatError as exc:
                if sender.cancelled:  # whatever broke, the reason is the cancel
                    raise CancelledError("Cancelled", hint=CancelledError.default_hint) from None
                error = auth.scrub(exc)
            else:
                if response.status_code < 400:
                    return response
                error = auth.scrub(
                    auth.session_ended(method, path)
                    if response.status_code == 401 and not auth.can_login
                    else error_for_response(response, parse_retry_after(response.headers.get("Retry-After")))
                )
            attempt += 1
            if method in ("POST", "PUT") and _maybe_acted_on(error):
                with self._in_doubt_lock:
                    self.requests_in_doubt += 1
                if in_doubt is not None:
                    in_doubt.add()
            if isinstance(error, XnatConnectionError) and error.timed_out:
                unanswered += 1
                if unanswered >= policy.unanswered_attempts:
                    # A server that swallowed the request this often will not answer the next one either.
                    raise auth.scrub(
                        NoAnswerError(
                            f"{method} {path}: {sender.url} took the connection but sent no answer "
                            f"({unanswered} attempts, {time.monotonic() - started:.0f} s in all)",
                            retryable=False,
                            timed_out=True,
                        )
                    )
            if single_use or attempt >= policy.attempts or not policy.should_retry(error, method, path):
                raise error
            if isinstance(error, XnatConnectionError) and content is not None and not relogged:
                relogged = auth.revalidate(generation)
            wait = policy.delay(attempt - 1, error.retry_after)
            if slept + wait > policy.budget_seconds:
                raise error
            log.warning(
                "%s %s: %s; retry %d/%d in %.1f s", method, path, error.message, attempt, policy.attempts - 1, wait
            )
            if policy.sleep is not None:
                policy.sleep(wait)
            else:
                sender.wait(wait)
            slept += wait
