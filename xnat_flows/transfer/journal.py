"""Resume support: remember which batches (or instances) already reached a destination.

An entry is keyed by the destination (server URL and session, ``resume_key``) and a content digest of what was sent (relative paths,
sizes, modification times, SOP Instance UIDs, the de-identification rules: cheap, no file reads), so a re-run after a
failure sends only what did not land, and a file changed since then is sent again. The
journal lives in the profile directory (``journal/``, mode 0600). A session's record stays after
a complete upload, so running the same upload again sends nothing; it is forgotten when
verification finds the session short of it or parked in the prearchive (``transfer.sequence``),
and trusted only while XNAT holds the study (``transfer.session.resume_state``). C-STORE writes
per-instance records as they happen (``InstanceLog``) and keeps them (``cstore.resume`` says why).
Nothing prunes the journal: a file per destination, 65 bytes per instance for gradual-DICOM (131
for C-STORE: sent, then confirmed), per batch for DICOM-zip (docs/reliability.md says what deleting records means).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterable, Sequence, Set
from pathlib import Path
from types import TracebackType

from xnat_flows.transfer.scan import DicomFile


def content_digest(files: Iterable[DicomFile]) -> str:
    """The content digest of ``files``: what was sent, told without reading the files.

    Each file's name, size, modification time and SOP Instance UID, and for a de-identified file the
    script and variables that rewrote it (``Rewrite.digest``), so a re-run with another script sends
    again, whatever the sizes and UIDs.

    Args:
        files: The files sent, in the order sent.

    Returns:
        A SHA-256 hex digest of ``files`` in that order.
    """
    digest = hashlib.sha256()
    for f in files:
        rules = f"\0{f.rewrite.digest}" if f.rewrite is not None else ""
        digest.update(f"{f.relpath}\0{f.size}\0{f.mtime_ns}\0{f.sop_instance_uid}{rules}\n".encode())
    return digest.hexdigest()


def resume_key(server_url: str, destination: str) -> str:
    """The journal's name for a destination on one server.

    The same labels on another XNAT are another destination, and what was delivered to one was not
    delivered to the other.

    Args:
        server_url: The XNAT's or the receiver's address.
        destination: The session (or receiver and routing) within it.

    Returns:
        ``server_url`` without a trailing slash and ``destination``, joined by ``|``.
    """
    return f"{server_url.rstrip('/')}|{destination}"


class UploadJournal:
    """The resume journal: per destination, the digests of what reached it, one file each.

    Args: directory: Where the files live; by default ``journal/`` in the profile directory (mode
    0600).
    """

    def __init__(self, directory: Path | None = None) -> None:
        from xnat_flows.client.paths import profile_dir  # not client.settings: no pydantic on the C-STORE path

        self.directory = Path(directory) if directory is not None else profile_dir() / "journal"
        self._lock = threading.Lock()
        self._directory_ready = False

    def _path(self, destination: str) -> Path:
        return self.directory / f"{hashlib.sha256(destination.encode()).hexdigest()[:32]}.log"

    def path_for(self, destination: str) -> Path:
        """The file holding ``destination``'s records (deleting it forgets every delivery there)."""
        return self._path(destination)

    def done(self, destination: str) -> set[str]:
        """Digests recorded for ``destination`` (a partly written last line is ignored)."""
        try:
            lines = self._path(destination).read_text(encoding="ascii").splitlines()
        except (OSError, UnicodeDecodeError):
            return set()
        return {line for line in lines if len(line) == 64}

    def in_flight(self, destination: str) -> set[str]:
        """Digests that went out to ``destination`` without an answer.

        Each has an ``InstanceLog.sending`` record with neither ``stored`` nor ``refused`` after it:
        the receiver may or may not hold them.

        Returns:
            The digests in doubt; empty when there is no journal file.
        """
        try:
            lines = self._path(destination).read_text(encoding="ascii").splitlines()
        except (OSError, UnicodeDecodeError):
            return set()
        pending: set[str] = set()
        for line in lines:
            if len(line) == 65 and line[0] == _SENDING:
                pending.add(line[1:])
            elif len(line) == 65 and line[0] == _REFUSED:
                pending.discard(line[1:])
            elif len(line) == 64:
                pending.discard(line)
        return pending

    def open_log(self, destination: str) -> InstanceLog:
        """An append-only log of instances going out to ``destination`` and being confirmed."""
        from xnat_flows.client.paths import ensure_private_dir

        ensure_private_dir(self.directory)
        return InstanceLog(self._path(destination))

    def record(self, destination: str, digest: str) -> None:
        """Append ``digest`` to ``destination``'s records (one write, so a crash loses nothing written)."""
        from xnat_flows.client.paths import ensure_private_dir

        line = f"{digest}\n".encode("ascii")
        path = self._path(destination)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        with self._lock:
            # gradual-DICOM records every instance: the directory is made once, not per record
            if not self._directory_ready:
                ensure_private_dir(self.directory)
                self._directory_ready = True
            try:
                fd = os.open(path, flags, 0o600)
            except FileNotFoundError:  # the directory was removed meanwhile
                ensure_private_dir(self.directory)
                fd = os.open(path, flags, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

    def clear(self, destination: str) -> None:
        """Forget every delivery to ``destination``: the next upload there sends everything again."""
        with self._lock:
            self._path(destination).unlink(missing_ok=True)


class ResumeState:
    """What earlier runs delivered to one destination, and the record of this run's deliveries.

    The one resume step of every resumable send (DICOM-zip batches and gradual instances in
    ``session``, C-STORE instances in ``cstore.resume``).

    ``done`` is read from ``journal`` unless the caller passes what it has checked (the REST
    uploads trust the journal only while XNAT still holds the session). Without a journal nothing
    counts as delivered and nothing is recorded.
    """

    def __init__(self, journal: UploadJournal | None, destination: str, done: Set[str] | None = None) -> None:
        self.journal = journal
        self.destination = destination
        if done is None:
            done = journal.done(destination) if journal is not None else set()
        self.done = frozenset(done)
        self._digests: dict[Path, str] = {}

    def digest(self, file: DicomFile) -> str:
        """One instance's content digest (worked out once per file)."""
        found = self._digests.get(file.path)
        if found is None:
            found = self._digests[file.path] = content_digest([file])
        return found

    def pending(self, files: Sequence[DicomFile]) -> list[DicomFile]:
        """The instances no earlier run delivered here, in order."""
        return [f for f in files if self.digest(f) not in self.done]

    def holds(self, batch: Sequence[DicomFile]) -> bool:
        """An earlier run delivered ``batch`` here as one request."""
        return content_digest(batch) in self.done

    def record(self, files: Sequence[DicomFile]) -> None:
        """``files`` reached the destination: one instance, or a batch sent as one request."""
        if self.journal is not None:
            digest = self.digest(files[0]) if len(files) == 1 else content_digest(files)
            self.journal.record(self.destination, digest)


_SENDING, _REFUSED = ">", "x"  # line prefixes of InstanceLog; a bare digest is a delivery


class InstanceLog:
    """Per-instance records, written as they happen.

    ``sending`` before an instance goes out, ``stored`` once the receiver confirmed it, ``refused``
    when it answered a failure.

    Each record is one ``write`` to the file (O_APPEND), so it is in the kernel's hands at once:
    killing the process (kill -9, Ctrl-C) loses nothing written. ``fsync`` runs at most every
    ``fsync_seconds`` and on close, so a power cut loses at most that tail, which the next run
    sends again. Safe to call from several threads.
    """

    def __init__(self, path: Path, fsync_seconds: float = 1.0) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._fsync_seconds = fsync_seconds
        self._last_fsync = time.monotonic()
        self._lock = threading.Lock()

    def sending(self, digest: str) -> None:
        """``digest`` is about to go out."""
        self._write(f"{_SENDING}{digest}\n")

    def stored(self, digest: str) -> None:
        """The receiver confirmed ``digest``."""
        self._write(f"{digest}\n")

    def refused(self, digest: str) -> None:
        """The receiver answered a failure for ``digest``: it was not stored."""
        self._write(f"{_REFUSED}{digest}\n")

    def _write(self, line: str) -> None:
        os.write(self._fd, line.encode("ascii"))  # one small O_APPEND write: atomic, never interleaved
        now = time.monotonic()
        if now - self._last_fsync >= self._fsync_seconds:
            with self._lock:
                if now - self._last_fsync < self._fsync_seconds:
                    return
                self._last_fsync = now
            os.fsync(self._fd)

    def close(self) -> None:
        """Sync the records to disk and close the file (a second call does nothing)."""
        with self._lock:
            if self._fd < 0:
                return
            fd, self._fd = self._fd, -1
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def __enter__(self) -> InstanceLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
