"""The progress snapshot of an upload.

The REST uploads report it (DICOM-zip batches, gradual instances), and the CLI's progress bar
shows it for every transfer (it builds one from C-STORE's instance counts,
``cstore.results.InstanceCountCallback``).

Its own module so that the C-STORE path and the CLI can use it without importing the HTTP
upload code (httpx and the REST client cost ~0.1 s of start-up).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """Reported as a session's sending starts, as DICOM-zip batches stream and finish, or per instance.

    The first report of a session comes before its first request (nothing done yet); DICOM-zip then
    reports as its batches stream and finish, gradual-DICOM after every instance.

    The callback runs in worker threads, one call at a time and in order: keep it quick.
    """

    done: int
    total: int
    bytes_done: int
    bytes_total: int
    failed: int = 0


ProgressCallback = Callable[[Progress], None]
