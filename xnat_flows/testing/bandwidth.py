"""A bandwidth cap shared by all of the emulator's connections (``--bandwidth-mbit``).

One token bucket counts the bytes of request bodies received and responses sent, whatever the
connection: like one network link in front of an XNAT, many parallel uploads share the rate
instead of each getting it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class TokenBucket:
    """``take(n)`` returns how long to wait before sending ``n`` bytes at ``rate`` bytes/s.

    Up to ``burst`` bytes pass at once after an idle spell; beyond that, bytes are booked at the
    rate (the bucket goes into debt and each caller waits its share), so the long-run throughput
    over all callers never exceeds the rate. ``clock`` is injectable for tests.
    """

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(64 * 1024, rate / 20))
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()
        self._lock = threading.Lock()

    def take(self, count: int) -> float:
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= count
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    @classmethod
    def from_mbit(cls, mbit_per_s: float, **kwargs: Any) -> TokenBucket:
        return cls(mbit_per_s * 1_000_000 / 8, **kwargs)


_PIECE = 16 * 1024  # bytes booked per step, so concurrent connections interleave smoothly


class ThrottledReader:
    """A socket file whose reads are paced by a shared bucket (what ``http.server`` and the body reader use)."""

    def __init__(self, raw: Any, bucket: TokenBucket, sleep: Callable[[float], None] = time.sleep) -> None:
        self._raw = raw
        self._bucket = bucket
        self._sleep = sleep

    def _paced(self, data: bytes) -> bytes:
        if data:
            wait = self._bucket.take(len(data))
            if wait > 0:
                self._sleep(wait)
        return data

    def read(self, size: int = -1) -> bytes:
        return self._paced(self._raw.read(_PIECE if size is None or size < 0 or size > _PIECE else size))

    def read1(self, size: int = -1) -> bytes:
        return self._paced(self._raw.read1(_PIECE if size is None or size < 0 or size > _PIECE else size))

    def readline(self, size: int = -1) -> bytes:
        return self._paced(self._raw.readline(size))

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)[:_PIECE]
        count = self._raw.readinto(view)
        if count:
            wait = self._bucket.take(count)
            if wait > 0:
                self._sleep(wait)
        return count or 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class ThrottledWriter:
    """A socket file whose writes are paced by a shared bucket."""

    def __init__(self, raw: Any, bucket: TokenBucket, sleep: Callable[[float], None] = time.sleep) -> None:
        self._raw = raw
        self._bucket = bucket
        self._sleep = sleep

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        for start in range(0, len(view), _PIECE):
            piece = view[start:start + _PIECE]
            wait = self._bucket.take(len(piece))
            if wait > 0:
                self._sleep(wait)
            self._raw.write(piece)
        return len(view)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)
