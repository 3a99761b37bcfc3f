"""``xnat-flows session download`` as users run it: a fresh HOME, Ctrl-C then a re-run, --json, exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from xnat_flows.client.client import XnatClient
from xnat_flows.client.credentials import resolve_credentials
from xnat_flows.testing import XnatEmulator
from xnat_flows.testing.pytest_plugin import wait_until
from xnat_flows.testing.synth import write_studies
from xnat_flows.transfer.scan import scan_directory
from xnat_flows.transfer.session import upload_session
from xnat_flows.transfer.target import UploadTarget

pytestmark = pytest.mark.e2e
PASSWORD = "dl-cli-password-8c1f"
# Ctrl-C handled as in a process started from a terminal (a suite started in the background
# ignores SIGINT, and children inherit that).
CLI = [
    sys.executable,
    "-c",
    "import signal, sys\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
    "from xnat_flows.cli.main import main\nsys.argv = ['xnat-flows', *sys.argv[1:]]\nmain()",
]


@pytest.fixture
def xnat(tmp_path: Path, xnat_emulator_factory) -> XnatEmulator:
    xnat = xnat_emulator_factory(tmp_path / "xnat", projects=("CLI",), password=PASSWORD, rebuild_idle_seconds=0.3)
    write_studies(tmp_path / "export", series=2, instances=30, instance_kb=32, seed=51)
    credentials = resolve_credentials(url=xnat.url, username="admin", password=PASSWORD, prompt=False)
    with XnatClient(credentials, token_cache=None) as client:
        assert upload_session(client, scan_directory(tmp_path / "export"), UploadTarget("CLI", "S1", "S1_MR")).ok
    return xnat


def _env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("XNAT_")}
    return env | {"HOME": str(home), "XNAT_PASS": PASSWORD, "NO_COLOR": "1"}


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_ctrl_c_then_the_same_command_completes(xnat: XnatEmulator, tmp_path: Path) -> None:
    dest = tmp_path / "dl"
    args = ["session", "download", "CLI/S1/S1_MR", str(dest), "--url", xnat.url, "-u", "admin", "--workers", "2"]
    xnat.faults.add(method="GET", path="/files/", bytes_per_second=400_000, times=None)  # 32 KB files: ~0.1 s each
    process = subprocess.Popen(
        CLI + args, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    wait_until(lambda: len(_files(dest)) >= 6 or process.poll() is not None, 60, what="a few files to arrive")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted: run the same command again to fetch the rest" in stderr and "Traceback" not in stderr
    kept = _files(dest)
    assert not [p for p in kept if p.name.endswith(".part")]  # no half file, under any name
    assert 0 < len(kept) < 30
    xnat.faults.clear()
    done = subprocess.run(CLI + args + ["--json"], env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["files"] == 30 and result["already_present"] == len(kept) and result["downloaded"] == 30 - len(kept)
    assert result["digests_checked"] == 30
    assert len(_files(dest)) == 30


def test_text_report_and_exit_codes(xnat: XnatEmulator, tmp_path: Path) -> None:
    base = ["--url", xnat.url, "-u", "admin"]
    env = _env(tmp_path)

    def download(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            CLI + ["session", "download", *args, *base], env=env, capture_output=True, text=True, timeout=120
        )

    ok = download("CLI/S1/S1_MR", str(tmp_path / "a"), "--scans", "1", "--layout", "flat")
    assert ok.returncode == 0, ok.stderr
    assert "CLI/S1_MR (XNAT_E00001): 1 scan(s), 15 file(s)" in ok.stdout
    assert "MD5 checked against XNAT's catalog: 15" in ok.stdout
    assert len(_files(tmp_path / "a" / "S1_MR" / "1")) == 15
    missing = download("CLI/S1/NOPE", str(tmp_path / "b"))
    assert missing.returncode == 4 and "No archived session 'NOPE' in CLI/S1" in missing.stderr
    no_scan = download("XNAT_E00001", str(tmp_path / "c"), "--scans", "T2w")
    assert no_scan.returncode == 2 and "No scan with ID or type 'T2w'" in no_scan.stderr
    no_nifti = download("XNAT_E00001", str(tmp_path / "d"), "--resources", "NIFTI")
    assert no_nifti.returncode == 0 and "scan(s) without NIFTI files: 1, 2" in no_nifti.stderr
