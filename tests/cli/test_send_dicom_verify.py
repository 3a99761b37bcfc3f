"""``session send-dicom --verify``: exit 0 only once XNAT's archive holds every instance sent.

Against the emulator over real sockets, in a fresh HOME: project CLI archives what its receiver
takes (XNAT's auto-archive), project HOLD keeps it in the prearchive (prearchive code 0), so a
verification there must fail, with a non-zero exit, until a person archives the session.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xnat_flows.cli.main import app
from xnat_flows.cli.options import EXIT_AUTH, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE
from xnat_flows.testing import XnatEmulator
from xnat_flows.testing.synth import write_studies

pytestmark = pytest.mark.e2e
PASSWORD = "send-dicom-verify-password-5c1e"


@pytest.fixture
def xnat(tmp_path: Path, xnat_emulator_factory) -> XnatEmulator:
    return xnat_emulator_factory(
        tmp_path / "xnat",
        projects=("CLI", "HOLD"),
        password=PASSWORD,
        rebuild_idle_seconds=0.3,
        scp_port=0,
        prearchive_codes={"HOLD": 0},  # what the receiver takes for HOLD stays in the prearchive
    )


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(app, list(args), input=input)


def login(xnat: XnatEmulator) -> None:
    result = run("auth", "login", "--url", xnat.url, "--username", "admin", "--password-stdin", input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output


def send(xnat: XnatEmulator, source: Path, *extra: str):
    return run("session", "send-dicom", str(source), "--host", "127.0.0.1", "--port", str(xnat.scp_port), *extra)


def test_verify_waits_for_the_archive_and_names_each_session(xnat, home: Path, tmp_path: Path) -> None:
    login(xnat)
    manifest = write_studies(tmp_path / "export", series=2, instances=3, instance_kb=4, seed=61)
    text = send(xnat, tmp_path / "export", "-P", "CLI", "-S", "S1", "-E", "S1_MR1", "--verify")
    assert text.exit_code == EXIT_OK, text.output
    assert "archived as CLI/S1/S1_MR1" in text.output
    assert f"{len(manifest.files)} files for {len(manifest.files)} instances sent" in text.output

    write_studies(tmp_path / "second", series=1, instances=4, instance_kb=4, seed=62)
    as_json = send(xnat, tmp_path / "second", "-P", "CLI", "-S", "S2", "-E", "S2_MR1", "--verify", "--json")
    assert as_json.exit_code == EXIT_OK, as_json.output
    summary = json.loads(as_json.stdout)
    assert summary["ok"] is True and summary["verified"] is True and summary["not_verified"] is None
    (study,) = summary["archived"]
    assert (study["project"], study["subject"], study["label"], study["files"]) == ("CLI", "S2", "S2_MR1", 4)
    assert study["experiment_id"] and study["uri"] == f"/data/experiments/{study['experiment_id']}"


def test_data_left_in_the_prearchive_fails_verification_and_a_rerun_completes(xnat, home: Path, tmp_path: Path) -> None:
    """The receiver stores every instance, but XNAT does not archive them: never exit 0 for that."""
    login(xnat)
    manifest = write_studies(tmp_path / "export", series=1, instances=4, instance_kb=4, seed=63)
    args = ["-P", "HOLD", "-S", "S3", "-E", "S3_MR1", "--verify", "--verify-timeout", "2"]
    held = send(xnat, tmp_path / "export", *args)
    assert held.exit_code == EXIT_PARTIAL, held.output
    assert f"{len(manifest.files)} sent" in held.output  # what the receiver stored is still said
    assert "not verified: 1 of 1 sent studies not complete in the archive" in held.stderr
    assert "xnat-flows prearchive list" in held.stderr and "run the same command again" in held.stderr

    again = send(xnat, tmp_path / "export", *args, "--json")  # nothing sent twice, still not archived
    assert again.exit_code == EXIT_PARTIAL, again.output
    summary = json.loads(again.stdout)
    assert summary["ok"] is False and summary["verified"] is False and summary["archived"] == []
    assert summary["sent"] == 0 and summary["resumed"] == len(manifest.files)
    assert "not complete in the archive" in summary["not_verified"]

    (row,) = json.loads(run("prearchive", "list", "--project", "HOLD", "--json").stdout)
    archived = run("prearchive", "archive", "HOLD", row["timestamp"], row["folderName"])
    assert archived.exit_code == EXIT_OK, archived.output
    done = send(xnat, tmp_path / "export", *args)
    assert done.exit_code == EXIT_OK, done.output
    assert "archived as HOLD/S3/S3_MR1" in done.output


def test_verify_needs_xnats_rest_api_before_anything_is_sent(xnat, home: Path, tmp_path: Path) -> None:
    write_studies(tmp_path / "export", series=1, instances=2, instance_kb=4, seed=64)
    unchecked = send(xnat, tmp_path / "export", "--verify", "--no-xnat-check")
    assert unchecked.exit_code == EXIT_USAGE, unchecked.output
    assert "--no-xnat-check" in unchecked.stderr and " sent, " not in unchecked.output
    no_login = send(xnat, tmp_path / "export", "--verify")
    assert no_login.exit_code == EXIT_AUTH, no_login.output
    assert "--verify reads XNAT's archive" in no_login.stderr and "xnat-flows auth login" in no_login.stderr
    assert " sent, " not in no_login.output and xnat.prearchive_sessions() == []
