"""`xnat-flows emulator serve` prints its URL once listening and stops on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx


def test_serve_prints_url_and_stops_on_sigterm(tmp_path):
    command = [
        sys.executable,
        "-m",
        "xnat_flows.cli.main",
        "emulator",
        "serve",
        "--port",
        "0",
        "--data-dir",
        str(tmp_path / "d"),
        "--user",
        "u",
        "--password",
        "p",
        "--project",
        "A",
        "--project",
        "B",
        "--prearchive-code",
        "A=0",
        "--scp-port",
        "0",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("XNAT emulator ready at http://127.0.0.1:"), process.stderr.read()
        url = line.split(" at ", 1)[1].strip()
        assert process.stdout.readline().startswith("DICOM receiver XNAT listening on 127.0.0.1:")
        projects = httpx.get(f"{url}/data/projects", auth=("u", "p")).json()["ResultSet"]["Result"]
        assert {p["ID"] for p in projects} == {"A", "B"}
        assert httpx.get(f"{url}/data/projects/A/prearchive_code", auth=("u", "p")).text == "0"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_serve_passes_the_bandwidth_cap_to_the_emulator(monkeypatch):
    from typer.testing import CliRunner

    import xnat_flows.testing.emulator as emulator_module
    from xnat_flows.cli.main import app

    seen: dict = {}

    class Recorder:
        def __init__(self, *args, **kwargs):
            seen.update(kwargs)

        def start(self):
            raise RuntimeError("recorded, not started")

        def stop(self):
            seen["stopped"] = True

    monkeypatch.setattr(emulator_module, "XnatEmulator", Recorder)
    result = CliRunner().invoke(
        app, ["emulator", "serve", "--port", "0", "--bandwidth-mbit", "2.5", "--latency-ms", "7"]
    )
    assert isinstance(result.exception, RuntimeError)
    assert seen["bandwidth_mbit"] == 2.5 and seen["latency_ms"] == 7
