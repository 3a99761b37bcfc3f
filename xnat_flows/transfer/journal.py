"""Resume support: remember which batches (or instances) already reached a destination.

An entry is keyed by the destination (server URL and session, ``resume_key``) and a content digest of what was sent (relative paths,
sizes, modification times, SOP Instance UIDs: cheap, no file reads), so a re-run after a
failure sends only what did not land, and a file changed since then is sent again. The
journal lives in the profile directory (``journal/``, mode 0600) and is cleared once a
session has been uploaded (and verified) completely.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from xnat_flows.transfer.scan import DicomFile


def content_digest(files: Iterable[DicomFile]) -> str:
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.relpath}\0{f.size}\0{f.mtime_ns}\0{f.sop_instance_uid}\n".encode())
    return digest.hexdigest()


def resume_key(server_url: str, destination: str) -> str:
    """The journal's name for a destination on one server: the same labels on another XNAT are
    another destination, and what was delivered to one was not delivered to the other."""
    return f"{server_url.rstrip('/')}|{destination}"


class UploadJournal:
    def __init__(self, directory: Path | None = None) -> None:
        # the settings module (pydantic) is imported here, not at module level: the C-STORE
        # sender imports this module, and its start-up time is part of its throughput
        from xnat_flows.client.settings import profile_dir

        self.directory = Path(directory) if directory is not None else profile_dir() / "journal"
        self._lock = threading.Lock()

    def _path(self, destination: str) -> Path:
        return self.directory / f"{hashlib.sha256(destination.encode()).hexdigest()[:32]}.log"

    def done(self, destination: str) -> set[str]:
        """Digests recorded for ``destination`` (a partly written last line is ignored)."""
        try:
            lines = self._path(destination).read_text(encoding="ascii").splitlines()
        except (OSError, UnicodeDecodeError):
            return set()
        return {line for line in lines if len(line) == 64}

    def record(self, destination: str, digest: str) -> None:
        from xnat_flows.client.settings import ensure_private_dir

        with self._lock:
            ensure_private_dir(self.directory)
            fd = os.open(self._path(destination), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a", encoding="ascii") as handle:
                handle.write(digest + "\n")

    def clear(self, destination: str) -> None:
        with self._lock:
            self._path(destination).unlink(missing_ok=True)
