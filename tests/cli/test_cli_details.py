"""What a new user notices in the first minutes: --version, help order and metavars, one error
style, plurals, one throughput figure, and what Ctrl-C says where nothing is being sent."""

from __future__ import annotations

import os
import re
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from cli_helpers import run_on_terminal
from typer.main import get_command
from typer.testing import CliRunner

from xnat_flows.cli.main import app
from xnat_flows.cli.options import counted
from xnat_flows.testing.synth import write_studies

CLI = [sys.executable, "-m", "xnat_flows.cli.main"]
PASSWORD = "details-password-5e1c"


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(app, list(args), input=input, terminal_width=100)


def _commands(group, path=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name)


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0 and result.output.strip() == f"xnat-flows {version('xnat-flows')}"


def test_help_lists_auth_first_as_its_own_text_says_to_start_there() -> None:
    listing = run("--help").output
    commands = [line.split()[0] for line in listing.split("Commands:")[1].splitlines() if line.strip()]
    assert commands[:2] == ["auth", "whoami"] and "Start with `xnat-flows auth login`" in " ".join(listing.split())


def test_every_command_shows_plain_metavars() -> None:
    commands = list(_commands(get_command(app)))
    assert ("session", "upload") in commands and len(commands) > 10
    for command in commands:
        text = run(*command, "--help").output
        assert not re.search(r"\{\w+\}|<(str|int|float|text|path|int range|float range)>", text, re.I), (command, text)
    upload = run("session", "upload", "--help").output
    assert "Usage: xnat-flows session upload [OPTIONS] SOURCE" in upload
    assert "--project PROJECT" in upload and "--archive-format [auto|tar|tgz|zip]" in upload


def test_usage_errors_and_our_errors_share_one_prefix() -> None:
    usage = run("synth", "/nonexistent-dir", "--modality", "XX")
    assert usage.exit_code == 2 and "error: Invalid value for --modality" in usage.output
    missing = run("session", "upload")
    assert missing.exit_code == 2 and "error: Missing argument 'SOURCE'" in missing.output
    ours = run("resource", "upload", "X", "BAD LABEL", __file__)
    assert ours.exit_code == 2 and "error: Invalid resource label" in ours.output
    for result in (usage, missing, ours):
        assert "Error:" not in result.output


def test_counts_are_pluralised(tmp_path: Path) -> None:
    assert [counted(1, "study"), counted(2, "study"), counted(0, "file"), counted(1, "file")] == [
        "1 study",
        "2 studies",
        "0 files",
        "1 file",
    ]
    one = run("synth", str(tmp_path / "one"), "--instances", "2", "--instance-kb", "4")
    assert "wrote 2 instances in 1 study," in one.output and "0 junk files" in one.output


def _fresh_env(home: Path) -> dict[str, str]:
    """The caller's environment without XNAT_*, with the profile (login, token) under ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XNAT_")}
    return env | {"HOME": str(home), "XNAT_FLOWS_HOME": str(home / ".config" / "xnat-flows")}


def _login(xnat, env: dict[str, str]) -> None:
    login = CliRunner().invoke(
        app, ["auth", "login", "--url", xnat.url, "-u", "admin", "--password-stdin"], input=PASSWORD, env=env
    )
    assert login.exit_code == 0, login.output


@pytest.mark.e2e
def test_progress_bar_rate_and_summary_rate_are_one_figure(tmp_path: Path, xnat_emulator_factory) -> None:
    xnat = xnat_emulator_factory(tmp_path / "xnat", projects=("CLI",), password=PASSWORD, latency_ms=30)
    write_studies(tmp_path / "export", series=2, instances=60, instance_kb=32, seed=71)
    home = tmp_path / "home"
    env = _fresh_env(home) | {"COLUMNS": "160"}
    _login(xnat, env)
    args = ["session", "upload", str(tmp_path / "export"), "-P", "CLI", "-S", "R", "-E", "R_MR1"]
    code, output = run_on_terminal(CLI + args, env, {}, timeout=120)
    assert code == 0, output
    drawn = re.findall(r"([\d.]+) MB/s", output.split("sent in")[0])
    assert drawn, output  # the bar was drawn (on a terminal) and shows a rate
    (summary,) = re.findall(r"sent in [\d.]+ s \(([\d.]+) MB/s\)", output)
    assert drawn[-1] == summary, output


def test_anon_check_shows_a_bar_on_a_terminal_and_only_the_report_elsewhere(tmp_path: Path) -> None:
    write_studies(tmp_path / "export", series=1, instances=12, instance_kb=4, seed=72)
    args = ["anon", "check", str(tmp_path / "export"), "--anon-profile", "basic"]
    code, output = run_on_terminal(CLI + args, _fresh_env(tmp_path / "home"), {}, timeout=120)
    assert code == 0, output
    assert "checking" in output and "12/12" in output, output  # the bar, then the report
    assert output.rstrip().endswith("OK"), output
    piped = run(*args)
    assert piped.exit_code == 0 and "checking" not in piped.output and piped.output.rstrip().endswith("OK")


def test_the_rate_is_timed_from_the_first_request_and_what_came_before_apart(monkeypatch, capsys) -> None:
    """The library reports once as sending starts: the rate is bytes over the time from that report to
    the last, and a long wait before it (a --anon-require-clean check of every file) is said apart."""
    from types import SimpleNamespace

    from xnat_flows.cli import session_cmd
    from xnat_flows.transfer.progress import Progress
    from xnat_flows.transfer.upload_result import UploadResult

    clock = iter([10.0, 12.0, 12.5, 13.0])  # entered; first report (nothing sent); half; all
    monkeypatch.setattr(session_cmd, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    bar = session_cmd._progress_bar("DICOM-zip", enabled=False, timed=True)
    with bar as progress:
        progress(Progress(0, 2, 0, 200_000_000))
        progress(Progress(1, 2, 100_000_000, 200_000_000))
        progress(Progress(2, 2, 200_000_000, 200_000_000))
    assert (bar.seconds_before_sending, bar.sending_seconds) == (2.0, 1.0)
    result = UploadResult(sessions=[], skipped=[], seconds=3.0, upload_seconds=1.0)
    session_cmd._report(result, bar.sending_seconds, bar.seconds_before_sending)
    assert "sent in 1.0 s (0.0 MB/s) after 2.0 s of planning and checks" in capsys.readouterr().out
    summary = session_cmd._summary(result, bar.sending_seconds, bar.seconds_before_sending)
    assert (summary["transfer_seconds"], summary["seconds_before_sending"]) == (1.0, 2.0)


@pytest.mark.e2e
def test_ctrl_c_at_a_password_prompt_does_not_talk_of_sending(tmp_path: Path, xnat_emulator_factory) -> None:
    xnat = xnat_emulator_factory(tmp_path / "xnat", projects=("CLI",), password=PASSWORD)
    home = tmp_path / "home"
    env = _fresh_env(home)
    _login(xnat, env)
    xnat.sessions.invalidate_user("admin")  # whoami will ask for the password again
    code, output = run_on_terminal(CLI + ["whoami"], env, {"Password for": "\x03"})  # Ctrl-C typed at the prompt
    assert code == 130, output
    plain = re.sub(r"\x1b\[[0-9;]*m", "", output)  # without the terminal's colours
    assert plain.rstrip().endswith("\ninterrupted") and "send the rest" not in plain and "Traceback" not in plain
