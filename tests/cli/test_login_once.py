"""Log in once, then every command works with nothing given; honest hints on their real triggers.

Every test runs in a fresh HOME (the profile lands in ``$HOME/.config/xnat-flows``) against the
emulator over real sockets.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import run_on_terminal, run_watched
from typer.testing import CliRunner

from xnat_flows.cli.main import app
from xnat_flows.testing import XnatEmulator
from xnat_flows.testing.pytest_plugin import wait_until
from xnat_flows.testing.synth import write_studies

pytestmark = pytest.mark.e2e
PASSWORD = "login-once-password-7f3a"
CLI = [sys.executable, "-m", "xnat_flows.cli.main"]


@pytest.fixture
def xnat(tmp_path: Path, xnat_emulator_factory):
    return xnat_emulator_factory(
        tmp_path / "xnat",
        projects=("CLI",),
        password=PASSWORD,
        rebuild_idle_seconds=0.3,
        scp_port=0,
        prearchive_codes={"CLI": 0},
    )  # staged sessions stay staged


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(app, list(args), input=input)


def login(xnat: XnatEmulator, *extra: str):
    result = run(
        "auth", "login", "--url", xnat.url, "--username", "admin", "--password-stdin", *extra, input=PASSWORD + "\n"
    )
    assert result.exit_code == 0, result.output
    return result


def files_under(home: Path) -> list[Path]:
    return [p for p in home.rglob("*") if p.is_file()]


def assert_no_password_under(home: Path) -> None:
    for path in files_under(home):
        assert PASSWORD.encode() not in path.read_bytes(), path


def test_login_once_then_every_command_needs_nothing(xnat, home: Path, tmp_path: Path) -> None:
    result = login(xnat)
    assert "saved as profile 'default'" in result.output
    config = home / ".config" / "xnat-flows" / "config.toml"
    assert f'url = "{xnat.url}"' in config.read_text() and 'username = "admin"' in config.read_text()
    for path in files_under(home):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path

    assert run("whoami").output.strip() == "admin"

    manifest = write_studies(tmp_path / "export", series=2, instances=8, instance_kb=4, seed=31)
    upload = run("session", "upload", str(tmp_path / "export"), "-P", "CLI", "-S", "S1", "-E", "S1_MR1")
    assert upload.exit_code == 0, upload.output
    assert f"{len(manifest.files)}/{len(manifest.files)} files" in upload.output
    (experiment,) = xnat.archived_experiments("CLI")

    write_studies(tmp_path / "staged", series=1, instances=3, instance_kb=4, seed=33)
    staged = run(
        "session",
        "upload",
        str(tmp_path / "staged"),
        "-P",
        "CLI",
        "-S",
        "S2",
        "-E",
        "S2_MR1",
        "--prearchive",
        "--no-verify",
    )
    assert staged.exit_code == 0, staged.output
    listing = run("prearchive", "list", "--json")
    assert listing.exit_code == 0, listing.output
    assert [row["name"] for row in json.loads(listing.output)] == ["S2_MR1"]

    (tmp_path / "bids").mkdir()
    (tmp_path / "bids" / "dataset_description.json").write_text("{}")
    resource = run("resource", "upload", experiment["ID"], "BIDS", str(tmp_path / "bids"))
    assert resource.exit_code == 0, resource.output
    assert_no_password_under(home)


@pytest.mark.usefixtures("prefect_harness")
def test_login_once_then_upload_with_flow_needs_nothing(xnat, home: Path, tmp_path: Path) -> None:
    login(xnat)
    manifest = write_studies(tmp_path / "export", series=1, instances=6, instance_kb=4, seed=32)
    result = run("session", "upload", str(tmp_path / "export"), "-P", "CLI", "-S", "F1", "-E", "F1_MR1", "--flow")
    assert result.exit_code == 0, result.output
    # the one printer of an upload's result, with or without --flow: verification found every file
    assert f"verify: {len(manifest.files)}/{len(manifest.files)} files" in result.output
    assert "telemetry" not in result.output.lower()
    assert_no_password_under(home)


def test_second_login_replaces_the_profile_and_a_named_profile_is_kept_apart(xnat, home: Path) -> None:
    login(xnat)
    login(xnat, "--profile", "other")
    text = (home / ".config" / "xnat-flows" / "config.toml").read_text()
    assert "[profiles.default]" in text and "[profiles.other]" in text
    assert run("whoami", "--profile", "other").output.strip() == "admin"


def test_expired_session_without_a_terminal_names_auth_login_and_password_stdin(xnat, home: Path) -> None:
    login(xnat)
    xnat.sessions.invalidate_user("admin")  # the server ended the session (expiry, admin, eviction)
    result = run("whoami")
    assert result.exit_code == 3, result.output
    assert "xnat-flows auth login" in result.stderr and "--password-stdin" in result.stderr
    status = run("auth", "status")
    assert status.exit_code == 3 and "expired or ended" in status.output


def test_expired_session_on_a_terminal_asks_for_the_password_again(xnat, home: Path) -> None:
    login(xnat)
    xnat.sessions.invalidate_user("admin")
    env = {k: v for k, v in os.environ.items() if not k.startswith("XNAT_")} | {"HOME": str(home)}
    code, output = run_on_terminal(CLI + ["whoami"], env, {"Password for": PASSWORD})
    assert code == 0, output
    assert "has ended; log in again" in output and output.rstrip().endswith("admin")
    # A second `auth login` on a terminal prompts too (a cached session is no reason to refuse).
    code, output = run_on_terminal(CLI + ["auth", "login"], env, {"Password for": PASSWORD})
    assert code == 0, output
    assert "Password for admin@" in output and "Logged in" in output
    assert_no_password_under(home)


def test_logout_ends_the_server_session_then_whoami_fails(xnat, home: Path) -> None:
    login(xnat)
    assert run("auth", "status").exit_code == 0
    sessions_before = xnat.stats()["jsessions"]
    logout = run("auth", "logout")
    assert logout.exit_code == 0, logout.output
    assert "ended on the server" in logout.output
    assert xnat.stats()["jsessions"] == sessions_before - 1
    assert "admin@" not in (home / ".config" / "xnat-flows" / "tokens.json").read_text()
    after = run("whoami")
    assert after.exit_code == 3 and "auth login" in after.stderr
    assert run("auth", "status").exit_code == 3


# -- hints on their real triggers ------------------------------------------------------------------


def test_a_wrong_base_path_says_so(xnat, home: Path) -> None:
    result = run("auth", "login", "--url", f"{xnat.url}/xnat", "-u", "admin", "--password-stdin", input=PASSWORD)
    assert result.exit_code == 4, result.output
    assert "is not an XNAT base URL" in result.stderr
    assert "check the project" not in result.stderr.lower()


def test_conflict_advice_matches_the_overwrite_chosen(xnat, home: Path, tmp_path: Path) -> None:
    login(xnat)
    write_studies(tmp_path / "first", series=1, instances=3, instance_kb=4, seed=41)
    write_studies(tmp_path / "second", series=1, instances=3, instance_kb=4, seed=42)  # another study
    assert run("session", "upload", str(tmp_path / "first"), "-P", "CLI", "-S", "S", "-E", "E").exit_code == 0
    staged = run(
        "session",
        "upload",
        str(tmp_path / "second"),
        "-P",
        "CLI",
        "-S",
        "S",
        "-E",
        "E",
        "--prearchive",
        "--no-verify",
        "--into-other-study",
    )
    assert staged.exit_code == 0, staged.output
    (row,) = json.loads(run("prearchive", "list", "-P", "CLI", "--json").output)
    args = ["prearchive", "archive", "CLI", row["timestamp"], row["folderName"], "--wait-seconds", "30"]
    plain = run(*args)
    assert plain.exit_code == 5, plain.output
    assert "--overwrite append" in plain.stderr and "--overwrite delete" in plain.stderr
    appended = run(*args, "--overwrite", "append")
    assert appended.exit_code == 5, appended.output
    assert "refused to append" in appended.stderr and "--overwrite delete" in appended.stderr
    assert "overwrite=append" not in appended.stderr


def test_http_port_for_cstore_names_the_port_not_a_timeout(xnat, home: Path, tmp_path: Path) -> None:
    write_studies(tmp_path / "export", series=1, instances=1, instance_kb=4, seed=43)
    login(xnat)  # -P needs it
    result = run(
        "session",
        "upload-dicom",
        str(tmp_path / "export"),
        "--host",
        "127.0.0.1",
        "--port",
        str(xnat.port),
        "-P",
        "CLI",
    )
    assert result.exit_code != 0
    assert (
        "DICOM port" in result.stderr
        and "web port such as 8080" in result.stderr
        and "timeout" not in result.stderr.split("(", 1)[1].lower()
    )


def test_cstore_project_routing_warns_or_checks(xnat, home: Path, tmp_path: Path) -> None:
    write_studies(tmp_path / "export", series=1, instances=2, instance_kb=4, seed=44)
    base = ["session", "upload-dicom", str(tmp_path / "export"), "--host", "127.0.0.1", "--port", str(xnat.scp_port)]
    unrouted = run(*base)
    assert unrouted.exit_code == 0, unrouted.output
    assert "no --project" in unrouted.stderr and "Unassigned" in unrouted.stderr
    unchecked = run(*base, "-P", "NOPE")  # no login: cannot ask XNAT, so nothing is sent
    assert unchecked.exit_code == 3, unchecked.output
    assert "not logged in" in unchecked.stderr and "xnat-flows auth login" in unchecked.stderr
    assert "--no-xnat-check" in unchecked.stderr and " sent, " not in unchecked.output
    login(xnat)
    unknown = run(*base, "-P", "NOPE")
    assert unknown.exit_code == 4, unknown.output
    assert "Project 'NOPE' does not exist" in unknown.stderr
    assert " sent, " not in unknown.output  # refused before anything was sent


def test_unknown_project_is_reported_wherever_a_command_takes_one(xnat, home: Path, tmp_path: Path) -> None:
    login(xnat)
    result = run("prearchive", "list", "--project", "NOPE")
    assert result.exit_code == 4, result.output
    assert "Project 'NOPE' does not exist" in result.stderr and "empty" not in result.output
    (tmp_path / "notes.txt").write_text("x")
    for args in (
        ["prearchive", "move", "CLI", "20240101_000000000", "S", "NOPE"],
        ["prearchive", "archive", "NOPE", "20240101_000000000", "S"],
        ["resource", "upload", "S1_MR1", "NOTES", str(tmp_path / "notes.txt"), "-P", "NOPE"],
    ):
        other = run(*args)
        assert other.exit_code == 4, (args, other.output)
        assert "Project 'NOPE' does not exist" in other.stderr, args


def test_resource_label_is_validated_like_other_labels(xnat, home: Path, tmp_path: Path) -> None:
    login(xnat)
    (tmp_path / "notes.txt").write_text("x")
    result = run("resource", "upload", "XNAT_E00001", "MY NOTES", str(tmp_path / "notes.txt"))
    assert result.exit_code == 2, result.output
    assert "Invalid resource label 'MY NOTES'" in result.stderr


def test_no_hint_names_an_option_that_does_not_exist(xnat, home: Path) -> None:
    login(xnat)
    xnat.faults.add(method="GET", path=r"/xapi/users/username", status=400, message="Something odd", times=10)
    result = run("whoami")
    assert result.exit_code == 1, result.output
    assert "--verbose" not in result.stderr and "Something odd" in result.stderr


def test_busy_port_is_one_line(home: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run("emulator", "serve", "--port", str(taken.getsockname()[1]))
    assert result.exit_code == 1
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) <= 2
    assert "cannot listen on" in result.stderr


# -- output ---------------------------------------------------------------------------------------


def test_json_summary_and_no_progress_bar_into_a_pipe(xnat, home: Path, tmp_path: Path) -> None:
    login(xnat)
    manifest = write_studies(tmp_path / "export", series=2, instances=6, instance_kb=4, seed=45)
    result = run("session", "upload", str(tmp_path / "export"), "-P", "CLI", "-S", "J", "-E", "J_MR1", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["ok"] is True and summary["files_sent"] == len(manifest.files)
    (session,) = summary["sessions"]
    assert session["verified"] is True and session["uri"].startswith("/data/experiments/")
    assert summary["transfer_seconds"] > 0 and summary["verify_seconds"] > 0

    text = run("session", "upload", str(tmp_path / "export"), "-P", "CLI", "-S", "J", "-E", "J_MR2")
    assert "━" not in text.output  # no bar drawn into a pipe
    assert "verified in" in text.output  # the verification time shown apart from the throughput

    cstore = run(
        "session",
        "upload-dicom",
        str(tmp_path / "export"),
        "--host",
        "127.0.0.1",
        "--port",
        str(xnat.scp_port),
        "-P",
        "CLI",
        "-S",
        "J",
        "-E",
        "J_C1",
        "--json",
    )
    assert cstore.exit_code == 0, cstore.output
    sent = json.loads(cstore.stdout)
    assert sent["ok"] is True and sent["sent"] == len(manifest.files)


def test_help_is_readable_at_80_columns(home: Path) -> None:
    for group in ([], ["session"], ["auth"], ["prearchive"], ["resource"], ["emulator"], ["anon"]):
        listing = CliRunner().invoke(app, [*group, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
        assert listing.exit_code == 0
        summaries = [line for line in listing.output.splitlines() if line.startswith("  ")]
        assert summaries and not [line for line in summaries if line.endswith("...")], listing.output  # none cut short
    for command in (
        ["session", "upload"],
        ["session", "upload-dicom"],
        ["session", "download"],
        ["auth", "login"],
        ["prearchive", "archive"],
    ):
        result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
        assert result.exit_code == 0
        assert "<bool>" not in result.output and "…" not in result.output
        assert all(len(line) <= 80 for line in result.output.splitlines())
        assert "--password-stdin" in result.output


def test_ctrl_c_says_how_to_resume(tmp_path: Path, home: Path, xnat_emulator_factory) -> None:
    xnat = xnat_emulator_factory(tmp_path / "slow", projects=("CLI",), password=PASSWORD, latency_ms=400)
    login(xnat)
    write_studies(tmp_path / "export", series=2, instances=40, instance_kb=4, seed=46)
    env = {k: v for k, v in os.environ.items() if not k.startswith("XNAT_")} | {"HOME": str(home)}
    process = subprocess.Popen(
        CLI + ["session", "upload", str(tmp_path / "export"), "-P", "CLI", "-S", "C", "-E", "C_MR1", "--gradual"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(
        lambda: xnat.stats()["imports"] >= 2 or process.poll() is not None, 60, what="two instances to be imported"
    )
    process.send_signal(2)  # SIGINT, as Ctrl-C
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted: re-run the same command to send the rest" in stderr
    assert "Traceback" not in stderr


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; the parent-death signal is Linux's")
def test_flow_password_stays_out_of_prefects_server_and_the_server_dies_with_the_cli(
    tmp_path: Path, home: Path, xnat_emulator_factory, seeded_prefect_home: Path
) -> None:
    """`--flow --password-stdin` without a Prefect server: Prefect starts a temporary API server
    child. The password must not be in its environment, and killing the CLI must not leave it running."""
    xnat = xnat_emulator_factory(tmp_path / "slow", projects=("CLI",), password=PASSWORD, latency_ms=300)
    write_studies(tmp_path / "export", series=2, instances=30, instance_kb=4, seed=47)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XNAT_", "PREFECT_"))}
    env |= {"HOME": str(home), "PREFECT_HOME": str(seeded_prefect_home)}
    process = subprocess.Popen(
        CLI
        + [
            "session",
            "upload",
            str(tmp_path / "export"),
            "-P",
            "CLI",
            "-S",
            "K",
            "-E",
            "K_MR1",
            "--flow",
            "--gradual",
            "--workers",
            "1",
            "--url",
            xnat.url,
            "-u",
            "admin",
            "--password-stdin",
        ],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    process.stdin.write(PASSWORD.encode() + b"\n")
    process.stdin.close()
    try:
        deadline, server = time.monotonic() + 120, None
        while server is None and time.monotonic() < deadline and process.poll() is None:
            server = next(
                (c for c in _children(process.pid) if b"uvicorn" in Path(f"/proc/{c}/cmdline").read_bytes()), None
            )
            time.sleep(0.2)
        assert server is not None, "no Prefect API server child appeared"
        assert PASSWORD.encode() not in Path(f"/proc/{server}/environ").read_bytes()
        process.kill()  # SIGKILL: no atexit, no signal handler
        process.wait(timeout=30)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{server}").exists() and time.monotonic() < deadline:
            stat_fields = Path(f"/proc/{server}/stat").read_text().rsplit(")", 1)[1].split()
            if stat_fields[0] == "Z":  # ended; only waiting to be reaped by init
                break
            time.sleep(0.2)
        assert not Path(f"/proc/{server}").exists() or stat_fields[0] == "Z", "the Prefect server outlived the CLI"
    finally:
        if process.poll() is None:
            process.kill()
        if server is not None and Path(f"/proc/{server}").exists():
            os.kill(server, 9)  # never leave it behind, even when the test fails
        stderr = process.stderr.read().decode(errors="replace")
    assert "telemetry" not in stderr.lower()
    assert_no_password_under(home)


@pytest.mark.slow
def test_flow_run_without_a_prefect_server_sends_no_telemetry(
    xnat, tmp_path: Path, home: Path, seeded_prefect_home: Path
) -> None:
    """Prefect's temporary server reports telemetry by default and logs an ERROR when that fails
    (no network): a `--flow` run started by the CLI turns it off."""
    login(xnat)
    write_studies(tmp_path / "export", series=1, instances=4, instance_kb=4, seed=48)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XNAT_", "PREFECT_"))}
    env |= {"HOME": str(home), "PREFECT_HOME": str(seeded_prefect_home)}
    done = run_watched(
        CLI + ["session", "upload", str(tmp_path / "export"), "-P", "CLI", "-S", "T", "-E", "T_MR1", "--flow"],
        env,
        timeout=240,  # under pytest-timeout's 300 s: a hang is diagnosed from the CLI's own threads
        diagnose=lambda: (
            f"emulator rebuilder running: {xnat.prearchive.running}; prearchive and Direct-Archive rows: "
            f"{xnat.prearchive_sessions(include_direct_archive=True)}; archived: {xnat.archived_experiments('CLI')}"
        ),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verify: 4/4 files" in done.stdout  # the one printer of an upload's result, as without --flow
    assert "telemetry" not in (done.stdout + done.stderr).lower()


def test_a_session_that_ends_mid_command_tells_a_token_only_user_to_log_in(xnat, home: Path) -> None:
    """Logged in once (no password kept), the session ends between the command's
    first request and the next one: the advice is `auth login`, not XNAT_USER/XNAT_PASS."""
    login(xnat)
    xnat.faults.add(path=r"/data/prearchive", evict_token=True, times=1)
    result = run("prearchive", "list", "-P", "CLI")
    assert result.exit_code == 3, result.output
    assert "has ended (HTTP 401)" in result.stderr and "xnat-flows auth login" in result.stderr
    assert "XNAT_USER" not in result.stderr
