"""The exceptions every XNAT call raises, and the mapping from an HTTP answer to one of them.

Each error carries the HTTP status, the server's own message (XNAT explains most import
problems in the body of a 400) and a ``hint`` telling the user what to do next. Messages are
built from the URL path, the status and the server's text only: never from request headers,
so a password or JSESSIONID cannot leak into a log or a Prefect UI.

Whether an error is worth retrying is decided by one attribute, ``retryable``: the client's
request retries (``client.retry``) and the Prefect task retries (``tasks.policies``) both read it.

The tree of the client's own errors (other layers subclass these: ``XnatError.__subclasses__()``)::

    XnatError                          retryable=False
    ├── AuthenticationError            401, refused login, no session and no password
    ├── PermissionDeniedError          403
    ├── NotFoundError                  404, unknown project, a URL that is not XNAT's base URL
    ├── ConflictError                  409
    ├── PermanentUploadError           XNAT's permanent 400 import messages
    ├── UnsupportedServerError         XNAT too old for the feature
    ├── StorageFullError               XNAT's disk or quota is full
    ├── CancelledError                 XnatClient.cancel() (Ctrl-C)
    ├── InputError                     bad local input, raised before anything is sent
    ├── UnreachableError               nothing answered: check host, port, network, TLS
    └── TransientError                 retryable=True: 423, 429, 5xx, XNAT's passing 400s
        └── XnatConnectionError        no HTTP answer; retryable=False when the host refused
            │                          or is unknown (status None: unreachable; ``refused``)
            └── NoAnswerError          connections taken, never answered: the wait is over
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: the scanner and the C-STORE sender import these errors
    import httpx

_MAX_SERVER_MESSAGE = 500

# 400 answers of the import service that clear up on their own (XNAT is busy with the same
# session); harvested from the messages compiled into XNAT 1.9.2.1 (see docs/library.md).
TRANSIENT_400_FRAGMENTS = (
    "session processing in progress",
    "concurrent modification is discouraged",
    "duplicate archive attempt",
    "destination session in use",
    "concurrent file sends of the same data",
    "unknown prearchive session",  # two batches of one session archiving at once
)

# 400 answers that will never succeed on a retry: the request itself is wrong.
PERMANENT_400_FRAGMENTS = (
    "unable to deduce session label",
    "unable to identify subject",
    "unable to identify destination project",
    "not allowed to create new subjects",
    "unable to create new subject id",
    "unable to create new session id",
    "session already exists, retry with overwrite enabled",
    "via archive process",
    "session already contains a scan",
    "already exists for another subject",
    "src uri is invalid",
    "expected a catalog file, however it was missing",
    "non-standard prearchive structure",
    "non-dicom (or non-parsable dicom) files",
    "is required when requesting",
    "unable to read dicom object",
    "contains no sop class uid",
    "contains no sop instance uid",
    "unsupported format",
    "unable to identify upload format",
    "importer is limited to one uploaded resource",
    "in-body file posts must include the file",
    "parameter dest format error",
)


class XnatError(Exception):
    """Base class: something went wrong talking to XNAT.

    The facts: ``status`` is the HTTP status (``None`` when no answer arrived), ``server_message``
    the server's text (trimmed), ``url`` the server or request it concerns, ``reason`` a stable name
    for the condition where one class covers several (e.g. ``"no-password"``), ``retryable``
    whether the same request may succeed later, ``facts`` named values the hint tables may quote. ``hint`` says what to do in words any reader
    understands; the command line and the Prefect layer replace it with advice in their reader's
    terms (flags and commands; Blocks and run parameters), looked up by ``reason`` and class
    (``cli.hints``, ``tasks.hints``).
    """

    default_hint = "Check the XNAT server's log (Administer > Site Administration > Logging) for the request"
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        server_message: str = "",
        hint: str | None = None,
        reason: str | None = None,
        url: str | None = None,
        retry_after: float | None = None,
        facts: Mapping[str, str] | None = None,
    ) -> None:
        self.message = message
        # Named values a reader's hint table may put into its words (``{label}``), e.g. the label
        # that completes a session.
        self.facts = dict(facts or {})
        self.status = status
        self.server_message = server_message
        self.hint = hint if hint is not None else self.default_hint
        self.reason = reason
        self.url = url
        self.retry_after = retry_after
        super().__init__(message)

    def __str__(self) -> str:
        text = self.message
        if self.server_message and self.server_message not in text:
            text += f" — XNAT said: {self.server_message}"
        if self.hint:
            text += f" ({self.hint})"
        return text

    def __reduce__(self):  # picklable across Prefect/process boundaries despite keyword-only args
        return (_rebuild, (type(self), self.message), dict(self.__dict__))


def reworded(exc: XnatError, by_reason: Mapping[str, str], by_class: Mapping[type[XnatError], str]) -> str:
    """The hint a reader's layer gives for ``exc`` from its own tables.

    By the error's ``reason``, else by its class when the hint is the class's own (not advice the
    raiser wrote), else the hint the error carries. The tables hold the words (``cli.hints``,
    ``tasks.hints``).

    Args:
        exc: The error to word.
        by_reason: Hints by the error's ``reason``.
        by_class: Hints by error class, used only where the error carries its class's default hint.

    Returns:
        The hint for this reader.
    """
    if exc.reason is not None and exc.reason in by_reason:
        words = by_reason[exc.reason]
        return words.format_map(exc.facts) if exc.facts else words
    owner = next(klass for klass in type(exc).__mro__ if "default_hint" in vars(klass))
    if exc.hint == vars(owner)["default_hint"] and owner in by_class:
        return by_class[owner]
    return exc.hint


def _rebuild(cls: type[XnatError], message: str) -> XnatError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    return error  # pickle then restores the attributes from the state dict


class AuthenticationError(XnatError):
    """XNAT did not accept the credentials, or the session ended with no password to log in again."""

    default_hint = (
        "Check the user name and password; if the account has too many open sessions, ask an admin to end them"
    )


class PermissionDeniedError(XnatError):
    """The account may not do this (HTTP 403)."""

    default_hint = "The account is logged in but lacks rights on this project; ask the project owner for member access"


class NotFoundError(XnatError):
    """What the request names does not exist on the server (HTTP 404)."""

    default_hint = "Check the project, subject and session identifiers (labels are case-sensitive)"


class ConflictError(XnatError):
    """XNAT refuses because of what it already holds (HTTP 409, or a session in CONFLICT)."""

    default_hint = "It already exists in XNAT: choose how to merge into it (overwrite), or use another label"


class TransientError(XnatError):
    """XNAT is busy, overloaded or unreachable for a moment: the same request may work later."""

    default_hint = "XNAT is busy or temporarily unavailable; retry later (resuming sends only what did not land)"
    retryable = True


class XnatConnectionError(TransientError):
    """No HTTP answer: DNS, refused connection, TLS failure, dropped connection, timeout."""

    default_hint = "Check the XNAT URL, your network and (for TLS errors) the CA bundle"

    def __init__(
        self, message: str, *, retryable: bool = True, timed_out: bool = False, refused: bool = False, **kwargs
    ) -> None:
        super().__init__(message, **kwargs)
        self.retryable = retryable
        self.timed_out = timed_out  # connected (or connecting), but no answer came in time
        # Nothing listens at the address (XNAT down or restarting): not worth the client's quick
        # request retries, but a flow run's task retries (minutes apart) may find it back up.
        self.refused = refused


class NoAnswerError(XnatConnectionError):
    """The server took the connection but did not answer, attempt after attempt: the wait is over."""

    default_hint = (
        "XNAT (or a proxy in front of it) accepts connections but does not answer: check that the "
        "server is up and not overloaded, and that the URL is XNAT's (not a port that swallows requests)"
    )


class StorageFullError(XnatError):
    """XNAT cannot store anything: its disk (or quota) is full. Retrying will not help until space is freed."""

    default_hint = (
        "XNAT's storage is full: ask the XNAT administrator to free space, then re-run (only what did not land is sent)"
    )


class UnreachableError(XnatError):
    """Nothing answered at the given address (refused connection, unknown host, firewall): no data was sent."""

    default_hint = "Check the host name, the port, your network and (for TLS errors) the CA bundle"


class PermanentUploadError(XnatError):
    """XNAT rejected the upload for a reason a retry will not fix (its message says which)."""

    default_hint = "Fix the input or the destination named in XNAT's message; retrying will not help"


class UnsupportedServerError(XnatError):
    """The server's XNAT version cannot do what was asked (e.g. Direct-Archive before 1.8.3)."""

    default_hint = "Upgrade XNAT, or upload through the prearchive instead"


class CancelledError(XnatError):
    """The operation was stopped by ``XnatClient.cancel()`` (e.g. on Ctrl-C)."""

    default_hint = "Re-run to resume: only what did not reach XNAT is sent again"


class InputError(XnatError):
    """Bad local input (paths, labels, options): raised before anything is sent."""

    default_hint = ""


# Server messages that say the disk is full (Java's IOException text, Tomcat's 507).
STORAGE_FULL_FRAGMENTS = ("no space left on device", "disk full", "insufficient storage", "disk quota exceeded")

_SERVER_FAULT_HINT = (
    "XNAT failed with an internal error; it was retried. If it persists, the cause is in XNAT's log "
    "(ask the XNAT administrator); re-running sends only what did not land"
)
_UNRECOGNISED_400_HINT = (
    "XNAT refused the request for the reason in its message, which this tool does not know as a "
    "passing condition: fix what it names, then re-run (only what did not land is sent)"
)


def server_message(response: httpx.Response) -> str:
    """The useful part of an error body: plain text, or the <title>/<h1> of a Tomcat error page.

    Args:
        response: The server's answer.

    Returns:
        The text, whitespace collapsed and trimmed; empty when the body cannot be read.
    """
    try:
        text = response.text
    except Exception:  # noqa: BLE001 - undecodable or unread streaming body: the status alone must do
        return ""
    text = text.strip()
    if "<html" in text[:500].lower():
        match = re.search(r"<(?:h1|title)[^>]*>(.*?)</", text, re.IGNORECASE | re.DOTALL)
        text = match.group(1).strip() if match else ""
    text = re.sub(r"\s+", " ", text)
    return text[:_MAX_SERVER_MESSAGE]


def _matches(message: str, fragments: tuple[str, ...]) -> bool:
    lowered = message.lower()
    return any(fragment in lowered for fragment in fragments)


def is_transient_400(message: str) -> bool:
    """Whether a 400's message names a passing condition (retried).

    Args:
        message: The server's message.

    Returns:
        True for a message of ``TRANSIENT_400_FRAGMENTS``.
    """
    return _matches(message, TRANSIENT_400_FRAGMENTS)


def is_permanent_400(message: str) -> bool:
    """Whether a 400's message names a refusal that a retry will not change.

    Args:
        message: The server's message.

    Returns:
        True for a message of ``PERMANENT_400_FRAGMENTS``.
    """
    return _matches(message, PERMANENT_400_FRAGMENTS)


def error_for_response(response: httpx.Response, retry_after: float | None = None) -> XnatError:
    """Classify a non-success answer into the exception a caller can act on.

    Args:
        response: The server's answer (status 400 or above).
        retry_after: Seconds from the answer's ``Retry-After``, if any.

    Returns:
        The error, with the status, the server's message and the hint.
    """
    status = response.status_code
    text = server_message(response)
    where = f"{response.request.method} {response.request.url.path}"
    summary = f"{where} failed with HTTP {status}"
    kwargs: dict[str, Any] = {"status": status, "server_message": text, "retry_after": retry_after}
    if status == 401:
        return AuthenticationError(f"{where}: XNAT did not accept the credentials (HTTP 401)", **kwargs)
    if status == 403:
        return PermissionDeniedError(f"{where}: permission denied (HTTP 403)", **kwargs)
    if status == 404:
        path = response.request.url.path
        if path.endswith("/data/JSESSION"):
            # Every XNAT answers /data/JSESSION: a 404 here means the base path of the URL is wrong.
            base = str(response.request.url).split("/data/JSESSION", 1)[0]
            return NotFoundError(
                f"{base} is not an XNAT base URL: {where} answered HTTP 404",
                **kwargs,
                hint="Use the address of XNAT's start page, e.g. https://xnat.example.org "
                "(with a path such as /xnat only where XNAT is deployed under one)",
            )
        return NotFoundError(f"{where}: not found (HTTP 404)", **kwargs)
    if status == 409:
        return ConflictError(f"{where}: conflict (HTTP 409)", **kwargs)
    if status == 507 or _matches(text, STORAGE_FULL_FRAGMENTS):
        return StorageFullError(f"{where}: XNAT's storage is full (HTTP {status})", **kwargs)
    if status in (423, 429, 503):
        return TransientError(summary, **kwargs)
    if status >= 500:
        return TransientError(summary, hint=_SERVER_FAULT_HINT, **kwargs)
    if status == 400:
        if is_permanent_400(text):
            return PermanentUploadError(summary, **kwargs)
        if is_transient_400(text):
            return TransientError(summary, **kwargs)
        return XnatError(summary, hint=_UNRECOGNISED_400_HINT, **kwargs)
    return XnatError(summary, **kwargs)
