"""``xnat-flows demo`` (what ``make demo`` runs) as a new user meets it: a fresh HOME, no Prefect set up."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
from cli_helpers import run_watched

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_demo_says_one_line_per_step_and_leaves_nothing_in_the_users_prefect(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XNAT_", "PREFECT_"))} | {"HOME": str(home)}
    # A user's own Prefect server, configured: the demo's run must not land there either.
    env["PREFECT_API_URL"] = "http://127.0.0.1:9/api"
    done = run_watched(
        [sys.executable, "-m", "xnat_flows.cli.main", "demo", "--instances", "40", "--instance-kb", "8"],
        env,
        timeout=240,  # under pytest-timeout's 300 s: a hang is diagnosed from the demo's own threads
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "verified    True" in output
    # Nothing alarming: no warnings, tracebacks, telemetry, or Prefect's own server chatter.
    for word in ("warning", "traceback", "error", "telemetry", "starting temporary server", "task run"):
        assert word not in output.lower(), output
    assert len(output.strip().splitlines()) <= 16, output
    # It says its emulator stopped and where its data was, and that folder is gone.
    (work,) = re.findall(r"was in (\S+) and is removed", output)
    assert "have stopped" in output and not Path(work).exists()
    assert not (home / ".prefect").exists()  # the user's own Prefect database is untouched
