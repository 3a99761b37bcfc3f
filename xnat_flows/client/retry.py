"""When to retry a failed request, and how long to wait first."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from xnat_flows.client.errors import XnatConnectionError, XnatError

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})

# POSTs that may be sent again: the import service names files after their UIDs and the
# uploads use overwrite semantics, so a resent batch or instance replaces itself.
RESENDABLE_POST_PATHS = ("/data/services/import", "/REST/services/import")
# POSTs that may be sent again when the connection failed under them (no answer at all): the
# archive service acts on a prearchive session once, and sent again after it did, it answers 404
# for the session that is gone; ``prearchive.archive_session`` then finds it in the archive. An
# answer (a 500) says XNAT tried; that one is for the caller to look at, not to repeat.
RESENDABLE_AFTER_CONNECTION_LOSS = ("/data/services/archive", "/REST/services/archive")


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date).

    Args:
        value: The header's value, or ``None`` when absent.

    Returns:
        Seconds (0 for a date in the past), or ``None`` when absent or unreadable.
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with jittered exponential backoff (a random wait in [d/2, d], d doubling).

    ``attempts`` counts the first try (6 = 5 retries, as xnatctl). ``budget_seconds`` caps the
    total time spent sleeping for one request; ``unanswered_attempts`` the attempts that time out
    waiting for an answer, so a server that takes connections and never answers fails a command
    after about that many timeouts instead of six. ``sleep`` is injectable for tests; by default
    the client waits on its cancel event, so ``XnatClient.cancel()`` cuts a backoff short.
    """

    attempts: int = 6
    backoff_base: float = 2.0
    backoff_max: float = 32.0
    retry_after_max: float = 300.0
    budget_seconds: float = 900.0
    unanswered_attempts: int = 2  # timed-out attempts (connected, no answer) before giving up
    sleep: Callable[[float], None] | None = field(default=None, repr=False, compare=False)

    def should_retry(self, error: XnatError, method: str, path: str) -> bool:
        """Whether a failed request may be sent again.

        Idempotent methods and the resendable POSTs retry on any retryable error; other POSTs only
        when the server certainly did not act on them, or acting twice is harmless.

        Args:
            error: The classified failure of the attempt.
            method: The request's HTTP method.
            path: The request's path.

        Returns:
            True when another attempt may be made.
        """
        if not error.retryable:
            return False
        if method.upper() in IDEMPOTENT_METHODS or path.rstrip("/").endswith(RESENDABLE_POST_PATHS):
            return True
        # Other POSTs: only when the server certainly did not act on them, or acting twice is harmless.
        if isinstance(error, XnatConnectionError):
            return path.rstrip("/").endswith(RESENDABLE_AFTER_CONNECTION_LOSS)
        return error.status in (429, 503)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based).

        Args:
            attempt: How many retries came before this one.
            retry_after: The server's ``Retry-After`` in seconds, which wins (capped) when given.

        Returns:
            The wait in seconds.
        """
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.retry_after_max)
        ceiling = min(self.backoff_max, self.backoff_base * (2**attempt))
        return random.uniform(ceiling / 2, ceiling)


NO_RETRY = RetryPolicy(attempts=1)
