"""Helpers of the CLI tests: run a command on a pseudo-terminal of its own, as a person would."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import subprocess
import termios
import time
from collections.abc import Callable, Mapping
from pathlib import Path


def _take_stdin_as_controlling_terminal() -> None:  # in the child, after setsid, before exec
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    # As in a shell's foreground job: Ctrl-C interrupts, even when the test run ignores SIGINT
    # (a background job, or a CI runner, passes SIG_IGN on to its children).
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_on_terminal(
    argv: list[str],
    env: Mapping[str, str],
    answers: Mapping[str, str],
    *,
    cwd: Path | None = None,
    timeout: float = 60.0,
) -> tuple[int, str]:
    """Run ``argv`` on a pseudo-terminal; type ``answers[prompt]`` when ``prompt`` appears (each
    once); return (exit code, everything the terminal showed).

    The command runs in a new session whose controlling terminal is that pseudo-terminal, so its
    /dev/tty (where getpass prompts and reads) is the test's, never the terminal `make test` runs
    in, and a background `make test` is not stopped for reading from it.
    """
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        argv,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=dict(env),
        cwd=cwd,
        close_fds=True,
        start_new_session=True,  # setsid: no controlling terminal inherited from the test run
        preexec_fn=_take_stdin_as_controlling_terminal,
    )
    os.close(terminal)
    output, answered, deadline = b"", set(), time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(controller, 4096)
                except OSError:  # the terminal closed: the process ended
                    break
                if not chunk:
                    break
                output += chunk
                for prompt, answer in answers.items():
                    if prompt not in answered and prompt.encode() in output:
                        os.write(controller, answer.encode() + b"\n")
                        answered.add(prompt)
            elif process.poll() is not None:
                break
        return process.wait(timeout=max(1.0, deadline - time.monotonic())), output.decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
        os.close(controller)


def run_watched(
    argv: list[str], env: Mapping[str, str], *, timeout: float, diagnose: Callable[[], str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run`` of a command that may start Prefect's temporary server, with a diagnosis
    when it outlasts ``timeout``: Python's faulthandler dumps every thread of the child (SIGABRT)
    into the failure, instead of pytest-timeout's dump of the test process, which waited; and
    ``diagnose()``, taken before the child is stopped, says what the other side (an emulator) holds."""
    process = subprocess.Popen(
        argv, env={**env, "PYTHONFAULTHANDLER": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        other_side = ""
        if diagnose is not None:
            try:
                other_side = f"\nmeanwhile: {diagnose()}"
            except Exception as exc:  # noqa: BLE001 - a diagnosis must not hide the hang
                other_side = f"\nmeanwhile: (diagnosis failed: {exc!r})"
        process.send_signal(signal.SIGABRT)
        try:
            out, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        raise AssertionError(
            f"{' '.join(argv[-8:])} still ran after {timeout:g} s{other_side}\nits threads:\n{err[-12000:]}\n{out[-2000:]}"
        ) from None
    return subprocess.CompletedProcess(argv, process.returncode, out, err)
