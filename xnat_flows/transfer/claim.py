"""One upload at a time per destination session: a claim under the user's profile directory.

Two uploads to one session label at once would both pass the destination check (each sees the
label free, or holding its own study) and then meet in XNAT, where the later one is parked in
CONFLICT or, worse, merged. ``DestinationClaim`` serialises them on this machine: an advisory
lock (``fcntl.flock``) on one file per server, project and label under ``PROFILE/claims/``, which
the kernel releases when the process ends, however it ends. Flows use a Prefect concurrency slot
of the same name instead (``tasks.upload.destination_slots``), which holds across workers.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import IO

from xnat_flows.client.errors import ConflictError
from xnat_flows.client.paths import ensure_private_dir, profile_dir

DEFAULT_CLAIM_WAIT_SECONDS = 900.0


def destination_name(server_url: str, project: str, session: str) -> str:
    """The name of one destination.

    XNAT's session labels are unique within a project, whatever the subject, so two uploads to
    P/S1/E and P/S2/E claim the same one.

    Args:
        server_url: The server's URL.
        project: The project's ID.
        session: The session label.

    Returns:
        The claim's name.
    """
    host = server_url.split("://", 1)[-1].rstrip("/").replace("/", ":")
    return f"xnat-session:{host}:{project}:{session}"


class DestinationBusyError(ConflictError):
    """Another upload to the same session label kept its claim longer than we may wait."""

    default_hint = "Wait for the other upload to finish (its own report says where its data went), then run this again"


class DestinationClaim:
    """Hold the claim of every ``names``, waiting a bounded time for another process that holds one.

    Names are taken in sorted order, so two uploads never wait on each other in a circle.

    Args:
        names: The destinations' names (``destination_name``).
        wait_seconds: How long to wait at most for another holder.
        poll_seconds: The wait between tries.
        directory: Where the lock files live (the profile's by default).
        on_wait: Told once who holds a claim this one waits for.
    """

    def __init__(
        self,
        names: Iterable[str],
        *,
        wait_seconds: float = DEFAULT_CLAIM_WAIT_SECONDS,
        poll_seconds: float = 0.2,
        directory: Path | None = None,
        on_wait=None,
    ) -> None:
        self.names = sorted(set(names))
        self.wait_seconds = wait_seconds
        self.poll_seconds = poll_seconds
        self.directory = directory if directory is not None else profile_dir() / "claims"
        self.on_wait = on_wait
        self._held: list[IO[str]] = []

    def _path(self, name: str) -> Path:
        return self.directory / (hashlib.sha256(name.encode()).hexdigest()[:24] + ".lock")

    def __enter__(self) -> DestinationClaim:
        ensure_private_dir(self.directory)
        deadline = time.monotonic() + self.wait_seconds
        try:
            for name in self.names:
                self._held.append(self._take(name, deadline))
        except BaseException:
            self._release()
            raise
        return self

    def _take(self, name: str, deadline: float) -> IO[str]:
        handle = open(self._path(name), "a+", encoding="utf-8")  # noqa: SIM115 - kept open while held
        announced = False
        try:
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise
                holder = _holder(handle)
                if time.monotonic() >= deadline:
                    raise DestinationBusyError(
                        f"Another upload to {_readable(name)} ({holder}) is still running after {self.wait_seconds:g} s "
                        "of waiting: nothing was sent"
                    )
                if not announced and self.on_wait is not None:
                    announced = True
                    self.on_wait(f"another upload to {_readable(name)} is running ({holder}): waiting for it to finish")
                time.sleep(self.poll_seconds)
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            handle.flush()
            return handle
        except BaseException:
            handle.close()
            raise

    def _release(self) -> None:
        for handle in self._held:
            with contextlib.suppress(OSError):
                fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
        self._held = []

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._release()


def _holder(handle: IO[str]) -> str:
    handle.seek(0)
    return handle.read().strip() or "a process of this user"


def _readable(name: str) -> str:
    """``xnat-session:HOST:PORT:P:E`` as ``P/E on HOST:PORT``."""
    parts = name.split(":")
    return f"{parts[-2]}/{parts[-1]} on {':'.join(parts[1:-2])}" if len(parts) >= 4 else name
