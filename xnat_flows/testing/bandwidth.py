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


class _Paced:
    """A wrapped socket file that books every byte in a shared bucket and waits its turn."""

    def __init__(self, raw: Any, bucket: TokenBucket, sleep: Callable[[float], None] = time.sleep) -> None:
        self._raw = raw
        self._bucket = bucket
        self._sleep = sleep

    def _pace(self, count: int) -> None:
        if count:
            wait = self._bucket.take(count)
            if wait > 0:
                self._sleep(wait)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class ThrottledReader(_Paced):
    """Reads paced by the bucket (what ``http.server`` and the body reader use); same results as the raw file."""

    def read(self, size: int | None = -1) -> bytes:
        wanted = None if size is None or size < 0 else size
        parts: list[bytes] = []
        got = 0
        while wanted is None or got < wanted:
            piece = self._raw.read(_PIECE if wanted is None else min(_PIECE, wanted - got))
            if not piece:
                break
            self._pace(len(piece))
            parts.append(piece)
            got += len(piece)
        return b"".join(parts)

    def read1(self, size: int = -1) -> bytes:
        data = self._raw.read1(_PIECE if size is None or size < 0 else min(size, _PIECE))
        self._pace(len(data))
        return data

    def readline(self, size: int = -1) -> bytes:
        data = self._raw.readline(size)
        self._pace(len(data))
        return data

    def readinto(self, buffer: Any) -> int:
        count = self._raw.readinto(memoryview(buffer)[:_PIECE]) or 0
        self._pace(count)
        return count


class ThrottledWriter(_Paced):
    """Writes paced by the bucket, in pieces so that concurrent connections interleave."""

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        for start in range(0, len(view), _PIECE):
            piece = view[start : start + _PIECE]
            self._pace(len(piece))
            self._raw.write(piece)
        return len(view)
