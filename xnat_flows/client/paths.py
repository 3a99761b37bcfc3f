"""Where the profile lives on disk.

No pydantic here: the C-STORE command's upload journal needs only these paths, and its start-up
time is part of its throughput (docs/cstore.md).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path


def profile_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The profile directory: ``$XNAT_FLOWS_HOME``, else ``~/.config/xnat-flows``.

    Args:
        environ: The environment to read (``os.environ`` when None).

    Returns:
        The directory (not created here).
    """
    environ = os.environ if environ is None else environ
    home = environ.get("XNAT_FLOWS_HOME")
    if home:
        return Path(home).expanduser()
    return Path(environ.get("HOME") or Path.home()).expanduser() / ".config" / "xnat-flows"


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700): it holds session tokens.

    Args:
        path: The directory to create or tighten.

    Returns:
        ``path``.
    """
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(OSError):  # not ours (e.g. a shared mount): the files inside are still 0600
        path.chmod(0o700)
    return path
