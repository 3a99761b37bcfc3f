"""Folders that change while they are read, and C-STORE re-runs against an XNAT that lost the data.

Against the emulator over real sockets (REST and its DICOM receiver):

* an export with files still being written (a thread finishes them while the CLI runs) is not
  sent in part and reported a success, in any transport: the scan fails (exit 6) naming the
  files, nothing reaches XNAT, and the re-run once the files are whole sends the whole study;
* a file rewritten while the upload runs is never stored torn and counted as sent;
* a C-STORE re-run trusts its journal only while XNAT holds the study: after the session was
  deleted, or against a fresh XNAT at the same address, it sends everything again; without a
  login it cannot ask, re-sends, and does not exit 0.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xnat_flows.cli.main import app
from xnat_flows.testing import XnatEmulator
from xnat_flows.testing.pytest_plugin import wait_until
from xnat_flows.testing.synth import write_studies

pytestmark = [pytest.mark.e2e]

PROJECT = "CHG"
PASSWORD = "changing-folders-pw-5c1"
TRANSPORTS = ["dicom-zip", "gradual", "c-store"]


@pytest.fixture
def xnat(tmp_path: Path, xnat_emulator_factory, monkeypatch: pytest.MonkeyPatch) -> XnatEmulator:
    emulator = xnat_emulator_factory(
        tmp_path / "xnat", projects=(PROJECT,), password=PASSWORD, scp_port=0, rebuild_idle_seconds=0.3
    )
    _log_in_by_environment(emulator, monkeypatch)
    return emulator


def _log_in_by_environment(xnat: XnatEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("XNAT_URL", xnat.url), ("XNAT_USER", "admin"), ("XNAT_PASS", PASSWORD)):
        monkeypatch.setenv(name, value)


def _command(xnat: XnatEmulator, transport: str, export: Path, label: str, *extra: str) -> list[str]:
    route = ["-P", PROJECT, "-S", label, "-E", label]
    if transport == "c-store":
        return [
            "session",
            "upload-dicom",
            str(export),
            "--host",
            "127.0.0.1",
            "--port",
            str(xnat.scp_port),
            *route,
            *extra,
        ]
    return ["session", "upload", str(export), *route, *(["--gradual"] if transport == "gradual" else []), *extra]


def _archived(xnat: XnatEmulator, label: str) -> int:
    return sum(len(xnat.archived_files(e["ID"])) for e in xnat.archived_experiments(PROJECT) if e["label"] == label)


def _half_written(export: Path, count: int, seed: int) -> tuple[int, list[tuple[Path, bytes]]]:
    """A 30-instance export of which ``count`` files are only half on disk; their whole bytes."""
    manifest = write_studies(export, series=3, instances=10, instance_kb=16, seed=seed)
    cut = []
    for item in manifest.files[5 : 5 + count]:
        whole = item.path.read_bytes()
        item.path.write_bytes(whole[: len(whole) // 2])
        cut.append((item.path, whole))
    return len(manifest.files), cut


def _finish_later(cut: list[tuple[Path, bytes]], delay: float) -> threading.Thread:
    """The exporter writing the rest of each file while the upload runs."""

    def finish() -> None:
        time.sleep(delay)
        for path, whole in cut:
            with open(path, "ab") as handle:
                handle.write(whole[path.stat().st_size :])

    writer = threading.Thread(target=finish, daemon=True)
    writer.start()
    return writer


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_export_still_being_written_is_not_sent_and_the_rerun_sends_it_whole(
    transport: str, xnat: XnatEmulator, tmp_path: Path
) -> None:
    total, cut = _half_written(tmp_path / "export", 3, seed=41)
    label = f"W_{transport.replace('-', '_')}"
    writer = _finish_later(cut, delay=3.0)

    first = CliRunner().invoke(app, _command(xnat, transport, tmp_path / "export", label))

    assert not writer.is_alive() or first.exit_code == 6, first.output  # decided before the writer finished
    assert first.exit_code == 6, first.output
    assert "3 DICOM files" in first.output and "cut short" in first.output and "--skip-truncated" in first.output
    for path, _ in cut:
        assert str(path) in first.output
    assert not xnat.archived_experiments(PROJECT)  # nothing sent: the study is never split over two runs
    assert not xnat.prearchive_sessions(include_direct_archive=True)
    if transport == "c-store":
        assert xnat.dicom_receiver.stores_seen == 0

    writer.join(10)
    rerun = CliRunner().invoke(app, _command(xnat, transport, tmp_path / "export", label))
    assert rerun.exit_code == 0, rerun.output
    wait_until(lambda: _archived(xnat, label) == total, 60, interval=0.05, what=f"{total} archived files")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_skip_truncated_sends_the_rest_and_says_what_was_skipped(
    transport: str, xnat: XnatEmulator, tmp_path: Path
) -> None:
    total, cut = _half_written(tmp_path / "export", 3, seed=42)
    label = f"K_{transport.replace('-', '_')}"

    result = CliRunner().invoke(app, _command(xnat, transport, tmp_path / "export", label, "--skip-truncated"))

    assert result.exit_code == 0, result.output
    for path, _ in cut:
        assert f"skipped {path}: truncated" in result.output
    if transport == "c-store":  # the summary no longer says "0 skipped" under three skip lines
        assert f"{total - 3} sent, 0 failed, 0 not accepted by the receiver" in result.output
        assert "3 other files under" in result.output and "were not sent" in result.output
    wait_until(lambda: _archived(xnat, label) == total - 3, 60, interval=0.05, what=f"{total - 3} archived files")


@pytest.mark.parametrize("transport", ["dicom-zip", "gradual"])
def test_a_file_rewritten_during_the_upload_is_not_stored_torn(
    transport: str, tmp_path: Path, xnat_emulator_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread rewrites one file (longer) while the upload runs: the upload fails naming it and
    the archive holds no instance cut from the changing file; the re-run completes."""
    import pydicom

    xnat = xnat_emulator_factory(tmp_path / "xnat", projects=(PROJECT,), password=PASSWORD, latency_ms=150)
    _log_in_by_environment(xnat, monkeypatch)
    manifest = write_studies(tmp_path / "export", series=1, instances=12, instance_kb=64, seed=43)
    victim = manifest.files[-1].path
    label = f"R_{transport.replace('-', '_')}"
    started = threading.Event()

    def rewrite() -> None:
        started.wait(10)
        ds = pydicom.dcmread(victim)
        ds.ImageComments = "corrected by the exporter " + "x" * 2000
        ds.save_as(victim)

    writer = threading.Thread(target=rewrite, daemon=True)
    writer.start()
    import xnat_flows.transfer.scan as scan

    real_scan = scan.scan_directory

    def scan_then_change(*args, **kwargs):
        result = real_scan(*args, **kwargs)
        started.set()
        writer.join(10)  # the file changes after the scan, before it is read for sending
        return result

    monkeypatch.setattr(scan, "scan_directory", scan_then_change)  # the command imports it when it runs

    command = [*_command(xnat, transport, tmp_path / "export", label), "--workers", "1"]
    first = CliRunner().invoke(app, command)
    assert first.exit_code == 6, first.output
    assert victim.name in first.output and (
        "changed while being uploaded" in first.output or "not sent" in first.output
    )
    wait_until(lambda: not xnat.prearchive_sessions(include_direct_archive=True), 30, what="the session archived")
    for experiment in xnat.archived_experiments(PROJECT):
        for stored in xnat.archived_files(experiment["ID"]).values():
            data = pydicom.dcmread(stored)
            if data.SOPInstanceUID == manifest.files[-1].sop_instance_uid:
                assert str(data.get("ImageComments", "")).startswith("corrected")  # never a torn mix

    monkeypatch.setattr(scan, "scan_directory", real_scan)
    rerun = CliRunner().invoke(app, command)
    assert rerun.exit_code == 0, rerun.output
    wait_until(lambda: _archived(xnat, label) == 12, 60, interval=0.05, what="12 archived files")


# -- the C-STORE journal is checked against XNAT ------------------------------------------------


def test_a_cstore_rerun_after_the_session_was_deleted_sends_everything_again(
    xnat: XnatEmulator, tmp_path: Path
) -> None:
    manifest = write_studies(tmp_path / "export", series=2, instances=30, instance_kb=4, seed=44)
    total = len(manifest.files)
    command = _command(xnat, "c-store", tmp_path / "export", "DEL")
    first = CliRunner().invoke(app, command)
    assert first.exit_code == 0, first.output
    wait_until(lambda: _archived(xnat, "DEL") == total, 60, interval=0.05, what="the first delivery archived")
    (experiment,) = xnat.archived_experiments(PROJECT)
    xnat_delete(xnat, experiment["ID"])
    assert not xnat.archived_experiments(PROJECT)

    rerun = CliRunner().invoke(app, command)

    assert rerun.exit_code == 0, rerun.output
    assert (
        f"{total} instances an earlier run delivered were sent again: XNAT no longer holds their study" in rerun.output
    )
    assert f"{total} sent, 0 failed" in rerun.output
    wait_until(lambda: _archived(xnat, "DEL") == total, 60, interval=0.05, what="the study archived again")


def xnat_delete(xnat: XnatEmulator, experiment_id: str) -> None:
    import httpx

    response = httpx.delete(
        f"{xnat.url}/data/experiments/{experiment_id}", params={"removeFiles": "true"}, auth=("admin", PASSWORD)
    )
    assert response.status_code < 300, response.text


def test_a_cstore_rerun_against_a_fresh_xnat_at_the_same_address_sends_everything_again(
    tmp_path: Path, xnat_emulator_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_studies(tmp_path / "export", series=2, instances=20, instance_kb=4, seed=45)
    total = len(manifest.files)
    first_xnat = xnat_emulator_factory(
        tmp_path / "xnat1", projects=(PROJECT,), password=PASSWORD, scp_port=0, rebuild_idle_seconds=0.3
    )
    _log_in_by_environment(first_xnat, monkeypatch)
    command = _command(first_xnat, "c-store", tmp_path / "export", "FRESH")
    first = CliRunner().invoke(app, command)
    assert first.exit_code == 0, first.output
    wait_until(lambda: _archived(first_xnat, "FRESH") == total, 60, interval=0.05, what="the first delivery")
    http_port, scp_port = int(first_xnat.url.rsplit(":", 1)[1]), first_xnat.scp_port
    first_xnat.stop()

    fresh = xnat_emulator_factory(
        tmp_path / "xnat2",
        projects=(PROJECT,),
        password=PASSWORD,
        port=http_port,
        scp_port=scp_port,
        rebuild_idle_seconds=0.3,
    )
    rerun = CliRunner().invoke(app, command)

    assert rerun.exit_code == 0, rerun.output
    assert f"{total} sent, 0 failed" in rerun.output and "no longer holds their study" in rerun.output
    wait_until(lambda: _archived(fresh, "FRESH") == total, 60, interval=0.05, what="the study in the fresh XNAT")


def test_a_cstore_rerun_without_a_login_resends_and_does_not_claim_success(
    xnat: XnatEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write_studies(tmp_path / "export", series=1, instances=12, instance_kb=4, seed=46)
    total = len(manifest.files)
    send = ["session", "upload-dicom", str(tmp_path / "export"), "--host", "127.0.0.1", "--port", str(xnat.scp_port)]
    first = CliRunner().invoke(app, [*send, "-P", PROJECT, "-S", "NL", "-E", "NL"])
    assert first.exit_code == 0, first.output
    for name in ("XNAT_URL", "XNAT_USER", "XNAT_PASS"):
        monkeypatch.delenv(name)

    # routed (-P): the checks need XNAT's REST API; refused before anything is sent
    stores = xnat.dicom_receiver.stores_seen
    refused = CliRunner().invoke(app, [*send, "-P", PROJECT, "-S", "NL", "-E", "NL"])
    assert refused.exit_code == 3, refused.output
    assert "not logged in" in refused.output and "xnat-flows auth login" in refused.output
    assert "--no-xnat-check" in refused.output
    assert xnat.dicom_receiver.stores_seen == stores

    # the explicit opt-out: everything the journal lists is sent again, and the run is not a plain success
    unchecked = CliRunner().invoke(app, [*send, "-P", PROJECT, "-S", "NL", "-E", "NL", "--no-xnat-check"])
    assert unchecked.exit_code == 6, unchecked.output
    assert f"{total} sent, 0 failed" in unchecked.output
    assert f"{total} instance(s) an earlier run delivered could not be checked in XNAT" in unchecked.output
    assert xnat.dicom_receiver.stores_seen == stores + total
