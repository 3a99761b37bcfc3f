"""Users and JSESSIONs (XNAT wiki: User Session Management API): idle expiry, optional per-user session cap, token eviction."""

from __future__ import annotations

import base64
import threading
import time
from dataclasses import dataclass

from xnat_flows.testing.state import Store


@dataclass
class LiveSession:
    token: str
    username: str
    created: float
    last_used: float


class Sessions:
    """JSESSION tokens, persisted (so a restart keeps them) with last-use tracked in memory."""

    def __init__(self, store: Store, idle_timeout: float, max_per_user: int | None) -> None:
        self.store = store
        self.idle_timeout = idle_timeout
        self.max_per_user = max_per_user
        self._lock = threading.Lock()
        now = time.time()
        self._live = {r["token"]: LiveSession(r["token"], r["username"], r["created"], now) for r in store.jsessions()}

    def login(self, username: str) -> str:
        token = self.store.create_jsession(username)
        now = time.time()
        with self._lock:
            self._live[token] = LiveSession(token, username, now, now)
            evicted = self._over_cap(username)
            for old in evicted:
                del self._live[old]
        if evicted:
            self.store.delete_jsessions(evicted)
        return token

    def _over_cap(self, username: str) -> list[str]:
        if not self.max_per_user:
            return []
        mine = sorted((s for s in self._live.values() if s.username == username), key=lambda s: s.created)
        return [s.token for s in mine[: max(0, len(mine) - self.max_per_user)]]

    def user_for(self, token: str) -> str | None:
        """The user of a live token (refreshing its idle clock), or None if unknown/expired."""
        now = time.time()
        with self._lock:
            live = self._live.get(token)
            if live is None:
                return None
            if now - live.last_used > self.idle_timeout:
                del self._live[token]
                expired = True
            else:
                live.last_used = now
                return live.username
        if expired:
            self.store.delete_jsessions([token])
        return None

    def invalidate(self, token: str) -> None:
        with self._lock:
            self._live.pop(token, None)
        self.store.delete_jsessions([token])

    def invalidate_user(self, username: str) -> int:
        with self._lock:
            tokens = [t for t, s in self._live.items() if s.username == username]
            for token in tokens:
                del self._live[token]
        self.store.delete_jsessions(tokens)
        return len(tokens)

    def count(self) -> int:
        with self._lock:
            return len(self._live)


def parse_basic(header: str | None) -> tuple[str, str] | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip()).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    if ":" not in decoded:
        return None
    user, password = decoded.split(":", 1)
    return user, password
