"""Fault injection for the emulator: rules matched per request, plus forced session outcomes.

Settable from Python (``emulator.faults.add(...)``) and over HTTP (``POST /_emulator/faults``) so a
test can drive an emulator that runs in another process.
"""

from __future__ import annotations

import errno
import os
import re
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

# Messages XNAT really sends (xnat-web `Importer`, `GradualDicomImporter`), handy for tests of a retry classifier.
TRANSIENT_400 = "Session processing in progress"
PERMANENT_400 = "Unable to identify subject."

_RULE_KEYS = {
    "method",
    "path",
    "handler",
    "times",
    "after",
    "status",
    "message",
    "retry_after",
    "delay_ms",
    "drop",
    "evict_token",
    "error_body",
    "headers",
    "bytes_per_second",
}


@dataclass
class FaultRule:
    """One rule. A request matches on method, path regex (searched) and optional import-handler.

    The first ``after`` matching requests pass untouched; then the rule fires ``times`` times
    (None = forever). Effects, combinable: ``delay_ms`` (slow response), ``drop`` (close the
    connection after reading part of the body, no response), ``evict_token`` (invalidate the
    caller's JSESSION, then answer 401), ``status``+``message`` (+``retry_after`` seconds),
    ``error_body`` (answer 200 with this body, as XNAT's prearchive services do on failure),
    ``bytes_per_second`` (handle normally, then send the response body at this rate).
    """

    path: str = ".*"
    method: str = "*"
    handler: str | None = None
    times: int | None = 1
    after: int = 0
    status: int | None = None
    message: str = ""
    retry_after: float | None = None
    delay_ms: int = 0
    drop: bool = False
    evict_token: bool = False
    error_body: str | None = None
    bytes_per_second: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    id: int = 0
    seen: int = 0
    fired: int = 0

    def matches(self, method: str, path: str, handler: str | None) -> bool:
        if self.method != "*" and self.method.upper() != method.upper():
            return False
        if self.handler is not None and (handler or "").lower() != self.handler.lower():
            return False
        return re.search(self.path, path) is not None


class Faults:
    """Thread-safe registry of fault rules and of forced outcomes for the next sessions."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._next_id = 1
        self._forced_outcomes: list[str] = []
        self._disk_full = False

    def add(self, path: str = ".*", method: str = "*", **options: Any) -> FaultRule:
        unknown = set(options) - _RULE_KEYS
        if unknown:
            raise ValueError(f"unknown fault options: {sorted(unknown)}")
        rule = FaultRule(path=path, method=method, **options)
        with self._lock:
            rule.id = self._next_id
            self._next_id += 1
            self._rules.append(rule)
        return rule

    def add_from_json(self, spec: dict[str, Any]) -> FaultRule:
        if "disk_full" in spec:
            self.set_disk_full(bool(spec["disk_full"]))
            return FaultRule(path="", times=0)
        if "next_session" in spec:
            self.force_next_session(str(spec["next_session"]))
            return FaultRule(path="", times=0)
        return self.add(**spec)

    def remove(self, rule_id: int) -> None:
        with self._lock:
            self._rules = [r for r in self._rules if r.id != rule_id]

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self._forced_outcomes.clear()
            self._disk_full = False

    def rules(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(r) for r in self._rules]

    def match(self, method: str, path: str, handler: str | None) -> FaultRule | None:
        """Return the rule that fires for this request (and count it), or None."""
        with self._lock:
            for rule in self._rules:
                if not rule.matches(method, path, handler):
                    continue
                rule.seen += 1
                if rule.seen <= rule.after:
                    continue
                if rule.times is not None and rule.fired >= rule.times:
                    continue
                rule.fired += 1
                return rule
        return None

    def force_next_session(self, outcome: str) -> None:
        """Make the next session build end in ``CONFLICT`` or ``ERROR`` (XNAT wiki: Using Direct-to-Archive Uploading)."""
        outcome = outcome.upper()
        if outcome not in {"CONFLICT", "ERROR"}:
            raise ValueError("outcome must be CONFLICT or ERROR")
        with self._lock:
            self._forced_outcomes.append(outcome)

    def take_forced_outcome(self) -> str | None:
        with self._lock:
            return self._forced_outcomes.pop(0) if self._forced_outcomes else None

    # -- a full disk --------------------------------------------------------------------------------
    def set_disk_full(self, full: bool = True) -> None:
        """While set, every file the emulator writes fails with ENOSPC, as on a full disk."""
        with self._lock:
            self._disk_full = full

    @property
    def disk_full(self) -> bool:
        return self._disk_full

    def check_disk_space(self) -> None:
        if self._disk_full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
