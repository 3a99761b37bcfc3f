"""A scratch directory removed on every path, and running a command-line tool in it.

Processing steps write their inputs (downloaded DICOM) and outputs (converted files) somewhere;
``scratch_directory`` is that place, removed when the block ends whatever happened (an error, a
failed tool, Ctrl-C, a cancelled Prefect run). ``run_tool`` runs a program there with a bounded
wait and keeps the end of its output, which is what a person needs when the tool fails.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from pydantic import BaseModel

from xnat_flows.client.errors import XnatError

log = logging.getLogger(__name__)
_OUTPUT_KEPT = 4000  # characters of a tool's output kept for reports


class ToolFailedError(XnatError):
    """A tool exited with an error, or ran past its time limit."""

    default_hint = "Read the tool's message above; fix the input or the tool's options"


class ToolRun(BaseModel):
    args: list[str]
    returncode: int
    output: str  # stdout and stderr interleaved, the end of it when long
    seconds: float


@contextlib.contextmanager
def scratch_directory(prefix: str = "xnat-flows-", root: str | Path | None = None) -> Iterator[Path]:
    """A new private directory (under ``root``, else the system's temporary directory), removed
    with everything in it when the block ends, however it ends."""
    if root is not None:
        Path(root).mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_tool(args: Sequence[str | Path], cwd: str | Path, *, timeout: float = 3600.0, check: bool = True) -> ToolRun:
    """Run ``args`` in ``cwd``, waiting at most ``timeout`` seconds; ``ToolFailedError`` (with the
    end of the tool's output) on a non-zero exit when ``check``, or when the time runs out."""
    import time

    command = [str(a) for a in args]
    started = time.monotonic()
    try:
        completed = subprocess.run(
            command,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.output if isinstance(exc.output, str) else (exc.output or b"").decode(errors="replace")
        raise ToolFailedError(
            f"{Path(command[0]).name} ran longer than {timeout:g} s and was stopped: {_tail(output)}",
            hint="Give the step a longer timeout, or check the input",
        ) from None
    except FileNotFoundError:
        raise ToolFailedError(f"{command[0]} is not installed (not found)", hint="Install it on the worker") from None
    run = ToolRun(
        args=command,
        returncode=completed.returncode,
        output=_tail(completed.stdout),
        seconds=time.monotonic() - started,
    )
    log.debug("%s exited %d in %.1f s", command[0], run.returncode, run.seconds)
    if check and run.returncode != 0:
        raise ToolFailedError(f"{Path(command[0]).name} exited with {run.returncode}: {last_lines(run.output)}")
    return run


def _tail(text: str) -> str:
    return text if len(text) <= _OUTPUT_KEPT else "..." + text[-_OUTPUT_KEPT:]


def last_lines(output: str, count: int = 3) -> str:
    """The lines of a tool's output that say what went wrong (errors first, else the last ones)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.lower().startswith(("error", "warning: unable", "fatal"))]
    return " / ".join((errors or lines)[-count:]) or "no output"
