"""Prefect's temporary API server, when ``--flow`` runs without a Prefect server, tied to the CLI.

Without ``PREFECT_API_URL`` Prefect starts a uvicorn child process for the run and stops it at exit
(``atexit``). A CLI killed by a signal never reaches ``atexit``, and the child inherits the whole
environment. Here the child is started with the kernel's parent-death signal (Linux ``prctl``), so
it ends with the CLI however the CLI ends, and without ``XNAT_*`` secrets in its environment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

SECRET_VARIABLES = ("XNAT_PASS", "XNAT_PASSWORD", "XNAT_TOKEN")


def quiet_prefect_for_cli_runs() -> None:
    """Settings for flow runs the CLI starts itself, set before Prefect reads its settings (the
    user's own settings win): no telemetry, and a temporary server given time to start on a busy
    machine (Prefect's default of 20 s is not enough on 2 loaded cores)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _die_with_parent() -> None:  # runs in the child between fork and exec
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _tied_popen(popen: Any) -> Any:
    def start(*args: Any, **kwargs: Any) -> subprocess.Popen:
        env = dict(kwargs.get("env") or os.environ)
        kwargs["env"] = {k: v for k, v in env.items() if k not in SECRET_VARIABLES}
        if sys.platform.startswith("linux"):
            kwargs.setdefault("preexec_fn", _die_with_parent)
        return popen(*args, **kwargs)

    return start


@contextmanager
def ephemeral_server_dies_with_this_process() -> Iterator[None]:
    """Within this block, a temporary Prefect server started for a flow run dies with this process.

    SIGTERM and SIGHUP become a normal exit (so Prefect's own clean-up runs); SIGKILL is covered by
    the parent-death signal. Nothing changes when a Prefect server is configured.
    """
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer

    class TiedServer(SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen:
            with mock.patch.object(subprocess, "Popen", _tied_popen(subprocess.Popen)):
                return super()._run_uvicorn_command()

    TiedServer()  # Prefect's server is one instance per port: this one is what Prefect starts
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGHUP):
            previous[signum] = signal.signal(signum, _exit_on_signal)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
