"""The optional re-identification table: a CSV the user names, mode 0600, never logged.

Nothing is recorded unless a caller passes a :class:`MappingCsv` to ``apply_bytes``; the engine
then records each identifying value it replaced (attribute, value before, value after), once.
"""

from __future__ import annotations

import csv
import os
import threading
from pathlib import Path
from types import TracebackType


class MappingCsv:
    """Append-only ``attribute,original,replacement`` rows, written as they come (a crash loses
    nothing already recorded). Safe to share between upload threads.

    The file is created with mode 0600 (and an existing file is re-moded to 0600 before anything
    is appended): it holds the identifiers the script removed.
    """

    HEADER = ("attribute", "original", "replacement")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._seen: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)  # an existing file keeps whatever mode it had otherwise
        self._file = os.fdopen(fd, "a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file)
        if self._file.tell() == 0:
            self._writer.writerow(self.HEADER)
            self._file.flush()

    def record(self, attribute: str, original: str, replacement: str) -> None:
        row = (attribute, original, replacement)
        with self._lock:
            if row in self._seen:
                return
            self._seen.add(row)
            self._writer.writerow(row)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> MappingCsv:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:  # never the rows
        return f"MappingCsv({str(self.path)!r})"
