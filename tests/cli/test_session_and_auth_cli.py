"""``xnat-flows session upload``, ``auth login|logout`` and ``whoami`` against the emulator."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xnat_flows.cli.main import app
from xnat_flows.testing import XnatEmulator
from xnat_flows.testing.synth import write_studies

pytestmark = pytest.mark.e2e
PASSWORD = "cli-test-password-19d2"


@pytest.fixture
def xnat(tmp_path: Path, xnat_emulator_factory) -> XnatEmulator:
    return xnat_emulator_factory(tmp_path / "xnat", projects=("CLI",), password=PASSWORD, rebuild_idle_seconds=0.3)


def run(*args: str, env: dict[str, str] | None = None, input: str | None = None):
    return CliRunner().invoke(app, list(args), env=env, input=input)


def upload_args(xnat: XnatEmulator, source: Path, *extra: str) -> list[str]:
    return [
        "session",
        "upload",
        str(source),
        "-P",
        "CLI",
        "-S",
        "SUBJ",
        "-E",
        "SESS",
        "--url",
        xnat.url,
        "--username",
        "admin",
        *extra,
    ]


@pytest.mark.parametrize("extra", [[], ["--archive-format", "zip", "--workers", "2"], ["--gradual", "--workers", "3"]])
def test_upload_succeeds_and_reports_where_it_landed(xnat, tmp_path: Path, extra: list[str]) -> None:
    manifest = write_studies(tmp_path / "export", series=2, instances=10, instance_kb=4, seed=21, junk=True)
    # the junk holds two cut-short files: sent without them only when asked (tests/reliability/test_changing_folders.py)
    result = run(*upload_args(xnat, tmp_path / "export", *extra, "--skip-truncated"), env={"XNAT_PASS": PASSWORD})
    assert result.exit_code == 0, result.output
    assert f"{len(manifest.files)}/{len(manifest.files)} files" in result.output
    assert "verify: " in result.output and "/data/experiments/XNAT_E" in result.output
    assert "skipped" in result.output  # the junk files are named, with their reason
    (experiment,) = xnat.archived_experiments("CLI")
    assert len(xnat.archived_files(experiment["ID"])) == len(manifest.files)


def test_repeating_a_gradual_upload_says_nothing_was_sent(xnat, tmp_path: Path) -> None:
    write_studies(tmp_path / "export", series=2, instances=6, instance_kb=4, seed=24)
    args = upload_args(xnat, tmp_path / "export", "--gradual")
    assert run(*args, env={"XNAT_PASS": PASSWORD}).exit_code == 0
    imports_before = xnat.stats()["imports"]
    again = run(*args, env={"XNAT_PASS": PASSWORD})
    assert again.exit_code == 0, again.output
    assert "6 files delivered by an earlier run (resume journal): not sent again" in again.output
    assert "nothing new to send: XNAT has all 6 files; verified in" in again.output
    elsewhere = run(*args, env={"XNAT_PASS": PASSWORD, "XNAT_FLOWS_HOME": str(tmp_path / "another-host")})
    assert elsewhere.exit_code == 0, elsewhere.output  # no journal: the archive is asked
    assert "already complete in XNAT's archive: nothing sent" in elsewhere.output
    assert xnat.stats()["imports"] == imports_before


def test_partial_upload_exits_6_and_rerun_completes(xnat, tmp_path: Path) -> None:
    manifest = write_studies(tmp_path / "export", series=2, instances=12, instance_kb=4, seed=22)
    xnat.faults.add(
        method="POST",
        path=r"/data/services/import",
        status=400,
        message="Unable to identify subject.",
        after=1,
        times=50,
    )
    first = run(*upload_args(xnat, tmp_path / "export"), env={"XNAT_PASS": PASSWORD})
    assert first.exit_code == 6, first.output
    assert "not sent" in first.stderr and "Unable to identify subject." in first.stderr
    assert "run the same command again" in first.stderr
    xnat.faults.clear()
    imports_before = xnat.stats()["imports"]
    second = run(*upload_args(xnat, tmp_path / "export"), env={"XNAT_PASS": PASSWORD})
    assert second.exit_code == 0, second.output
    # the one batch that landed is not re-sent (the output says why if it is: a retry, a stale journal)
    assert xnat.stats()["imports"] - imports_before == 3, second.output
    (experiment,) = xnat.archived_experiments("CLI")
    assert len(xnat.archived_files(experiment["ID"])) == len(manifest.files)


def test_a_verification_that_outwaits_xnats_idle_timer_says_so_and_the_rerun_sends_nothing(
    tmp_path: Path, home: Path, xnat_emulator_factory
) -> None:
    """A label XNAT already archived takes the re-run through its prearchive, archived after the idle
    timer (minutes on XNAT): exit 6, but "still archiving", not "incomplete"; once XNAT has archived,
    the same command verifies and sends nothing again."""
    xnat = xnat_emulator_factory(tmp_path / "xnat", projects=("CLI",), password=PASSWORD, rebuild_idle_seconds=60.0)
    manifest = write_studies(tmp_path / "export", series=2, instances=8, instance_kb=4, seed=25)
    earlier = tmp_path / "earlier"  # an earlier upload of 6 of the 8 instances
    for f in manifest.files[::4][:2] + manifest.files[1::4] + manifest.files[2::4]:
        relative = f.path.relative_to(tmp_path / "export")
        (earlier / relative).parent.mkdir(parents=True, exist_ok=True)
        (earlier / relative).write_bytes(f.path.read_bytes())
    env = {"XNAT_PASS": PASSWORD}
    assert run(*upload_args(xnat, earlier), env=env).exit_code == 0

    waiting = run(*upload_args(xnat, tmp_path / "export", "--verify-timeout", "1"), env=env)
    assert waiting.exit_code == 6, waiting.output
    assert "XNAT was still processing this upload when the wait ran out" in waiting.stderr
    assert "Not verified yet: XNAT is still archiving" in waiting.stderr
    assert "Upload incomplete" not in waiting.stderr

    xnat.prearchive.rebuild_idle_seconds = 0.0  # XNAT's idle timer has passed
    xnat.rebuild_now()
    imports_before = xnat.stats()["imports"]
    done = run(*upload_args(xnat, tmp_path / "export", "--verify-timeout", "30"), env=env)
    assert done.exit_code == 0, done.output
    assert xnat.stats()["imports"] == imports_before, done.output
    (experiment,) = xnat.archived_experiments("CLI")
    assert len(xnat.archived_files(experiment["ID"])) == len(manifest.files)


def test_bad_label_is_a_usage_error(xnat, tmp_path: Path) -> None:
    write_studies(tmp_path / "export", series=1, instances=2, instance_kb=4, seed=23)
    result = run(
        "session",
        "upload",
        str(tmp_path / "export"),
        "-P",
        "CLI",
        "-S",
        "bad subject!",
        "-E",
        "SESS",
        "--url",
        xnat.url,
        "--username",
        "admin",
        env={"XNAT_PASS": PASSWORD},
    )
    assert result.exit_code == 2
    assert "bad subject!" in result.output


def test_wrong_password_is_an_auth_error_and_the_password_option_warns(xnat, tmp_path: Path) -> None:
    write_studies(tmp_path / "export", series=1, instances=2, instance_kb=4, seed=24)
    result = run(*upload_args(xnat, tmp_path / "export", "--password", "not-the-password"))
    assert result.exit_code == 3
    assert "visible to other users" in result.output
    assert "not-the-password" not in result.output


def test_login_caches_a_private_token_then_whoami_and_logout(xnat, isolated_profile: Path) -> None:
    login = run("auth", "login", "--url", xnat.url, "--username", "admin", env={"XNAT_PASS": PASSWORD})
    assert login.exit_code == 0, login.output
    token_files = [p for p in isolated_profile.rglob("*") if p.is_file()]
    assert token_files, "login cached no token"
    for path in token_files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert PASSWORD not in path.read_text()

    # No password anywhere now: the cached session token is enough.
    whoami = run("whoami", "--url", xnat.url, "--username", "admin", env={"XNAT_PASS": ""})
    assert whoami.exit_code == 0, whoami.output
    assert whoami.output.strip() == "admin"

    logout = run("auth", "logout", "--url", xnat.url, "--username", "admin", env={"XNAT_PASS": ""})
    assert logout.exit_code == 0, logout.output
    after = run("whoami", "--url", xnat.url, "--username", "admin", env={"XNAT_PASS": ""})
    assert after.exit_code == 3


def test_an_unreadable_file_makes_the_upload_partial_and_is_listed_apart(xnat, tmp_path: Path, monkeypatch) -> None:
    import builtins

    import xnat_flows.transfer.scan as scan

    manifest = write_studies(tmp_path / "export", series=2, instances=6, instance_kb=4, seed=25, junk=True)
    locked = manifest.files[3].path
    real_open = builtins.open

    def refusing_open(path, *args, **kwargs):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(scan, "open", refusing_open, raising=False)
    result = run(*upload_args(xnat, tmp_path / "export", "--skip-truncated"), env={"XNAT_PASS": PASSWORD})
    assert result.exit_code == 6, result.output
    assert f"not read, not sent: {locked}: unreadable: permission denied" in result.stderr
    assert "could not be read" in result.stderr and "README.txt" in result.stderr  # junk still listed as skipped
    (experiment,) = xnat.archived_experiments("CLI")
    assert len(xnat.archived_files(experiment["ID"])) == len(manifest.files) - 1


def test_a_corrected_copy_of_an_instance_is_sent_and_the_conflict_is_said(xnat, tmp_path: Path) -> None:
    import os

    import pydicom

    manifest = write_studies(tmp_path / "export", series=1, instances=4, instance_kb=4, seed=26)
    original = manifest.files[2].path
    corrected = tmp_path / "export" / "zz_corrected" / "IM1"  # sorts after the original: it lost before
    corrected.parent.mkdir()
    ds = pydicom.dcmread(original)
    ds.PatientComments = "corrected re-export"
    ds.save_as(corrected, enforce_file_format=True)
    stamp = original.stat().st_mtime_ns + 10**9
    os.utime(corrected, ns=(stamp, stamp))
    result = run(*upload_args(xnat, tmp_path / "export"), env={"XNAT_PASS": PASSWORD})
    assert result.exit_code == 0, result.output
    assert "1 SOP Instance UIDs are held by different files" in result.stderr
    assert "sent the newest" in result.stderr and "conflicting copy" in result.stderr
    (experiment,) = xnat.archived_experiments("CLI")
    files = xnat.archived_files(experiment["ID"])
    assert len(files) == len(manifest.files)
    comments = {str(pydicom.dcmread(p, stop_before_pixels=True).get("PatientComments", "")) for p in files.values()}
    assert "corrected re-export" in comments
    stopped = run(*upload_args(xnat, tmp_path / "export", "--duplicates", "stop"), env={"XNAT_PASS": PASSWORD})
    assert stopped.exit_code != 0 and " and zz_corrected/IM1" in stopped.output


@pytest.mark.parametrize("extra", [[], ["--archive-format", "zip"], ["--gradual"]])
def test_file_names_that_are_not_utf8_upload(xnat, tmp_path: Path, extra: list[str]) -> None:
    """An export written under another locale: names whose bytes are not UTF-8 (before: a
    UnicodeEncodeError in every transport, DICOM-zip leaving a partial session)."""
    import os

    manifest = write_studies(tmp_path / "export", series=2, instances=4, instance_kb=4, seed=27)
    for index, item in enumerate(manifest.files[:2]):
        os.rename(item.path, os.fsdecode(os.fsencode(item.path.parent) + b"/IM\xe9\xff" + bytes([48 + index])))
    (tmp_path / "export" / os.fsdecode(b"notes-\xe9.txt")).write_bytes(b"not DICOM")
    # the junk holds two cut-short files: sent without them only when asked (tests/reliability/test_changing_folders.py)
    result = run(*upload_args(xnat, tmp_path / "export", *extra, "--skip-truncated"), env={"XNAT_PASS": PASSWORD})
    assert result.exit_code == 0, result.output
    assert f"{len(manifest.files)}/{len(manifest.files)} files" in result.output
    assert "notes-" in result.stderr  # the junk file is named, undecodable bytes escaped
    (experiment,) = xnat.archived_experiments("CLI")
    assert len(xnat.archived_files(experiment["ID"])) == len(manifest.files)


def test_the_cstore_command_is_named_send_dicom_and_keeps_xnatctls_spelling_hidden(tmp_path: Path) -> None:
    """``session send-dicom`` is C-STORE (as the ``send-dicom`` flow); ``upload-dicom`` (xnatctl's
    guide) runs the same command but is not listed, so ``--help`` names each command by what it does."""
    listed = run("session", "--help")
    assert "send-dicom" in listed.output and "upload-dicom" not in listed.output
    for spelling in ("send-dicom", "upload-dicom"):
        refused = run("session", spelling, str(tmp_path), "--host", "127.0.0.1", "--port", "104", "--workers", "0")
        assert refused.exit_code == 2 and "--workers" in refused.output, (spelling, refused.output)
