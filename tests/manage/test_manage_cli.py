"""``xnat-flows prearchive`` and ``xnat-flows resource`` through typer's CliRunner, on the emulator."""

from __future__ import annotations

import json

import pytest
from manage_helpers import archive_directly, emulator_client, stage_session
from typer.testing import CliRunner

from xnat_flows.cli.main import app
from xnat_flows.cli.options import exit_code_for
from xnat_flows.client import errors
from xnat_flows.client.archive import find_archived
from xnat_flows.client.prearchive import list_sessions

pytestmark = pytest.mark.e2e


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(app, list(args), input=input)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InputError("bad"), 2),
        (errors.AuthenticationError("who"), 3),
        (errors.PermissionDeniedError("no"), 3),
        (errors.NotFoundError("gone"), 4),
        (errors.ConflictError("exists"), 5),
        (errors.TransientError("busy"), 1),
        (errors.XnatError("other"), 1),
    ],
)
def test_exit_code_mapping(error, code):
    assert exit_code_for(error) == code


def test_list_as_table_and_json(client):
    staged = stage_session(client, "TEST", "S1")
    table = run("prearchive", "list", "--project", "TEST")
    assert table.exit_code == 0, table.output
    header, row = table.stdout.splitlines()
    assert header.split() == ["project", "timestamp", "folderName", "name", "subject", "status", "scan_date"]
    assert row.split()[:6] == ["TEST", staged.timestamp, "S1", "S1", "SUB1", "READY"]

    as_json = run("prearchive", "list", "--json")
    assert as_json.exit_code == 0
    (listed,) = json.loads(as_json.stdout)
    assert listed["folderName"] == "S1" and listed["status"] == "READY"


def test_archive_with_subject_and_label_then_again(client):
    staged = stage_session(client, "TEST", "S1")
    result = run("prearchive", "archive", "TEST", staged.timestamp, "S1", "--subject", "SUBX", "--label", "LBL")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Archived: /data/archive/projects/TEST/")
    assert find_archived(client, "TEST", "LBL", subject="SUBX") is not None

    again = run("prearchive", "archive", "TEST", staged.timestamp, "S1", "--label", "LBL", "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["already_archived"] is True


def test_archive_conflict_exit_code_and_overwrite(client, manual_xnat):
    manual_xnat.faults.force_next_session("CONFLICT")
    staged = stage_session(client, "TEST", "S1")
    refused = run("prearchive", "archive", "TEST", staged.timestamp, "S1")
    assert refused.exit_code == 5 and "overwrite" in refused.stderr
    merged = run("prearchive", "archive", "TEST", staged.timestamp, "S1", "--overwrite", "append")
    assert merged.exit_code == 0, merged.output


def test_archive_not_found_and_bad_option(client):
    missing = run("prearchive", "archive", "TEST", "20000101_000000000", "NOPE", "--wait-seconds", "0")
    assert missing.exit_code == 4 and "NOPE" in missing.stderr
    usage = run("prearchive", "archive", "TEST", "X", "Y", "--overwrite", "sometimes")
    assert usage.exit_code == 2


def test_wrong_password_exits_3_and_warns_about_password_option(manual_xnat):
    result = run("prearchive", "list", "--url", manual_xnat.url, "--username", "admin", "--password", "wrong")
    assert result.exit_code == 3
    assert "visible to other users" in result.stderr


def test_delete_asks_first_unless_yes(client):
    staged = stage_session(client, "TEST", "S1")
    declined = run("prearchive", "delete", "TEST", staged.timestamp, "S1", input="n\n")
    assert declined.exit_code == 1 and len(list_sessions(client, "TEST")) == 1
    confirmed = run("prearchive", "delete", "TEST", staged.timestamp, "S1", input="y\n")
    assert confirmed.exit_code == 0 and list_sessions(client, "TEST") == []
    gone = run("prearchive", "delete", "TEST", staged.timestamp, "S1", "--yes")
    assert gone.exit_code == 4


def test_move(client):
    staged = stage_session(client, "TEST", "S1")
    result = run("prearchive", "move", "TEST", staged.timestamp, "S1", "OTHER")
    assert result.exit_code == 0, result.output
    assert f"/prearchive/projects/OTHER/{staged.timestamp}/S1" in result.stdout
    assert [s.project for s in list_sessions(client)] == ["OTHER"]


def test_resource_upload_directory_and_duplicates(client, tmp_path):
    experiment = archive_directly(client, "TEST", "SUB1", "S1")
    (tmp_path / "qc" / "deep").mkdir(parents=True)
    (tmp_path / "qc" / "deep" / "a.png").write_bytes(b"png")
    (tmp_path / "qc" / ".DS_Store").write_bytes(b"x")

    first = run("resource", "upload", experiment, "QC", str(tmp_path / "qc"), "--json")
    assert first.exit_code == 0, first.output
    sent = json.loads(first.stdout)
    assert sent["files"] == ["deep/a.png"] and sent["skipped"][0]["path"] == ".DS_Store"

    again = run("resource", "upload", "S1", "QC", str(tmp_path / "qc"), "--project", "TEST")
    assert again.exit_code == 5 and "deep/a.png" in again.stderr and "--overwrite" in again.stderr
    forced = run("resource", "upload", "S1", "QC", str(tmp_path / "qc"), "-P", "TEST", "-S", "SUB1", "--overwrite")
    assert forced.exit_code == 0, forced.output


def test_resource_upload_to_missing_scan_is_not_found(client, tmp_path):
    experiment = archive_directly(client, "TEST", "SUB1", "S1")
    note = tmp_path / "n.txt"
    note.write_text("x")
    result = run("resource", "upload", experiment, "MISC", str(note), "--scan", "999")
    assert result.exit_code == 4, result.output


def test_archive_says_it_waits_for_a_receiving_session(monkeypatch, xnat_emulator_factory):
    xnat = xnat_emulator_factory(rebuild_idle_seconds=1.5)
    with emulator_client(xnat) as client:
        client.request("PUT", "/data/projects/TEST/prearchive_code/0")
        staged = stage_session(client, "TEST", "S1", commit=False)
        monkeypatch.setenv("XNAT_URL", xnat.url)
        monkeypatch.setenv("XNAT_USER", "admin")
        monkeypatch.setenv("XNAT_PASS", "admin")
        result = run("prearchive", "archive", "TEST", staged.timestamp, "S1", "--wait-seconds", "30")
    assert result.exit_code == 0, result.output
    assert "is RECEIVING; waiting" in result.stderr and result.stdout.startswith("Archived: ")
