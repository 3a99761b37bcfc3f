"""``--archive-format auto``: tgz over a slow link, tar on a fast one or an old server."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from xnat_flows.client.client import XnatClient
from xnat_flows.client.credentials import Credentials
from xnat_flows.testing import XnatEmulator
from xnat_flows.transfer.upload import choose_archive_format

pytestmark = pytest.mark.e2e


def _client(xnat: XnatEmulator) -> XnatClient:
    return XnatClient(Credentials(url=xnat.url, username=xnat.user, password=SecretStr("admin")), token_cache=None)


def test_loopback_is_fast_and_gets_tar(xnat_emulator: XnatEmulator) -> None:
    with _client(xnat_emulator) as client:
        client.login()
        fmt, why = choose_archive_format(client)
    assert fmt == "tar" and "local link" in why


def test_a_slow_link_gets_tgz(tmp_path: Path, xnat_emulator_factory) -> None:
    slow = xnat_emulator_factory(tmp_path / "x", latency_ms=20)
    with _client(slow) as client:
        client.login()
        started = time.perf_counter()
        fmt, why = choose_archive_format(client)
    assert fmt == "tgz" and "remote link" in why
    assert time.perf_counter() - started < 5  # three tiny round trips


def test_a_server_older_than_1_8_3_gets_tar_even_over_a_slow_link(tmp_path: Path, xnat_emulator_factory) -> None:
    old = xnat_emulator_factory(tmp_path / "x", latency_ms=20, version="1.8.2")
    with _client(old) as client:
        client.login()
        fmt, why = choose_archive_format(client)
    assert fmt == "tar" and "1.8.2" in why


def test_the_cli_picks_tgz_over_a_slow_link_and_the_session_lands(tmp_path: Path, xnat_emulator_factory) -> None:
    from typer.testing import CliRunner

    from xnat_flows.cli.main import app
    from xnat_flows.testing.synth import write_studies

    manifest = write_studies(tmp_path / "export", series=2, instances=8, instance_kb=16, seed=41)
    slow = xnat_emulator_factory(
        tmp_path / "x", latency_ms=20, projects=("P",), password="pw", rebuild_idle_seconds=0.3
    )
    result = CliRunner().invoke(
        app,
        [
            "session",
            "upload",
            str(tmp_path / "export"),
            "-P",
            "P",
            "-S",
            "S",
            "-E",
            "E",
            "--url",
            slow.url,
            "--username",
            "admin",
        ],
        env={"XNAT_PASS": "pw"},
    )
    assert result.exit_code == 0, result.output
    assert "archive format: tgz (round trip" in result.output
    (experiment,) = slow.archived_experiments("P")
    assert len(slow.archived_files(experiment["ID"])) == len(manifest.files)
