"""Inbox folder mechanics (plain Python, no Prefect): quiet period, atomic claim, done/failed moves.

Layout of an inbox::

    inbox/
      <session folder>/      dropped by a scanner or a person; a candidate once quiet
      processing/<folder>/   claimed by a run (or left there by a run that crashed)
      done/<folder>/         uploaded and verified, with <folder>.report.json beside it
      failed/<folder>/       not uploaded, with <folder>.report.json saying why

A claim is an exclusive ``flock`` on the folder's directory inode, taken before the folder is
renamed into ``processing/``. The lock follows the inode through renames and the kernel drops it
when its process dies, so (a) two runs never take the same folder and (b) a folder that a crashed
run left in ``processing/`` is unlocked and the next run picks it up again. Locks are local to a
host: point runs on different hosts at different inboxes (NFS does not carry ``flock`` reliably).
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

PROCESSING, DONE, FAILED = "processing", "done", "failed"
RESERVED = frozenset({PROCESSING, DONE, FAILED})
REPORT_SUFFIX = ".report.json"


@dataclass(frozen=True)
class InboxLayout:
    root: Path

    @property
    def processing(self) -> Path:
        return self.root / PROCESSING

    @property
    def done(self) -> Path:
        return self.root / DONE

    @property
    def failed(self) -> Path:
        return self.root / FAILED

    def ensure(self) -> None:
        if not self.root.is_dir():
            raise FileNotFoundError(f"inbox {self.root} does not exist (or is not a directory)")
        for directory in (self.processing, self.done, self.failed):
            directory.mkdir(exist_ok=True)


def _session_dirs(directory: Path) -> list[Path]:
    """Visible sub-directories, in name order (hidden ones are work in progress of copy tools)."""
    if not directory.is_dir():
        return []
    return sorted(
        (
            Path(entry.path)
            for entry in os.scandir(directory)
            if entry.is_dir(follow_symlinks=False) and not entry.name.startswith(".")
        ),
        key=lambda p: p.name,
    )


def candidate_folders(layout: InboxLayout) -> list[Path]:
    """Every session folder dropped in the inbox (quiet or not)."""
    return [p for p in _session_dirs(layout.root) if p.name not in RESERVED]


def orphaned_folders(layout: InboxLayout) -> list[Path]:
    """Folders in ``processing/``: being handled by a live run, or left behind by a crashed one."""
    return _session_dirs(layout.processing)


def last_change(folder: Path) -> float:
    """Latest change anywhere in the tree, in epoch seconds.

    Uses ctime as well as mtime: copy tools that preserve timestamps (``cp -p``, ``rsync -a``)
    set old mtimes, but every write, rename or chmod still moves ctime, which nobody can set.
    """
    latest = 0.0
    for directory, subdirs, files in os.walk(folder):
        for name in (".", *subdirs, *files):
            try:
                info = os.lstat(os.path.join(directory, name))
            except FileNotFoundError:  # removed while we looked: that is a change too
                return time.time()
            latest = max(latest, info.st_mtime, info.st_ctime)
    return latest


def is_quiet(folder: Path, quiet_seconds: float, now: float | None = None) -> bool:
    """True when nothing in the folder changed for ``quiet_seconds`` (the export is complete):
    no file or folder anywhere in it was written, added, removed or renamed for that long."""
    return ((now if now is not None else time.time()) - last_change(folder)) >= quiet_seconds


FolderState = dict[str, tuple[int, int, int]]


def folder_state(folder: Path) -> FolderState:
    """Every file in the tree, by its path inside ``folder``: (size, mtime, ctime) in ns. Taken
    before an upload and compared after it (``changes``), since files may still arrive or change
    while the folder is being sent, quiet period or not. Renaming the folder itself (into
    ``processing/``) changes none of it."""
    state: FolderState = {}
    for directory, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(directory, name)
            try:
                info = os.lstat(path)
            except FileNotFoundError:  # removed while we looked: missing from the state, so a change
                continue
            state[os.path.relpath(path, folder)] = (info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    return state


def changes(before: FolderState, after: FolderState) -> str | None:
    """What differs between two ``folder_state``s, in words (None: nothing)."""
    added = sorted(after.keys() - before.keys())
    removed = sorted(before.keys() - after.keys())
    changed = sorted(name for name in before.keys() & after.keys() if before[name] != after[name])
    parts = [
        f"{len(names)} {what} (e.g. {names[0]})"
        for names, what in ((added, "new"), (changed, "changed"), (removed, "removed"))
        if names
    ]
    return ", ".join(parts) or None


def unique_path(directory: Path, name: str) -> Path:
    """``directory/name``, or ``name.2``, ``name.3``... when a folder (or its report) is already there."""
    candidate, n = directory / name, 1
    while candidate.exists() or candidate.with_name(candidate.name + REPORT_SUFFIX).exists():
        n += 1
        candidate = directory / f"{name}.{n}"
    return candidate


class FolderClaim:
    """An exclusive hold on one session folder; release it with ``release()`` or a ``with`` block."""

    def __init__(self, path: Path, fd: int, original_name: str, recovered: bool) -> None:
        self.path = path
        self.original_name = original_name
        self.recovered = recovered  # True: picked up from processing/ after a crashed run
        self._fd: int | None = fd

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def move_to(self, directory: Path) -> Path:
        """Rename the folder into ``directory`` under a free name; the lock moves with it."""
        target = unique_path(directory, self.path.name)
        os.rename(self.path, target)
        self.path = target
        return target

    def finish(self, directory: Path, report: dict[str, Any]) -> tuple[Path, Path]:
        """Move the folder to ``done/`` or ``failed/`` and write its report beside it."""
        moved = self.move_to(directory)
        report_path = moved.with_name(moved.name + REPORT_SUFFIX)
        write_json_atomic(report_path, report)
        self.release()
        return moved, report_path


def _lock_directory(path: Path) -> int | None:
    """An fd holding an exclusive flock on ``path``; None when another process holds it or it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    # The name may have been moved (by the run that held the lock) between open and flock.
    try:
        still_there = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        still_there = False
    if not still_there:
        os.close(fd)
        return None
    return fd


def claim_new(layout: InboxLayout, folder: Path) -> FolderClaim | None:
    """Lock a dropped folder and move it into ``processing/``; None if another run got it first."""
    fd = _lock_directory(folder)
    if fd is None:
        return None
    claim = FolderClaim(folder, fd, original_name=folder.name, recovered=False)
    try:
        claim.move_to(layout.processing)
    except FileNotFoundError:  # moved away by a run that does not lock (e.g. a person): not ours
        claim.release()
        return None
    except BaseException:
        claim.release()
        raise
    return claim


def claim_orphan(folder: Path) -> FolderClaim | None:
    """Take over a folder in ``processing/`` whose run died; None while a live run holds it."""
    fd = _lock_directory(folder)
    if fd is None:
        return None
    return FolderClaim(folder, fd, original_name=folder.name, recovered=True)


def write_json_atomic(path: Path, document: dict[str, Any]) -> None:
    """Write via a temporary file and rename, so a reader (or a crash) never sees half a report."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
