"""`xnat-flows emulator serve` prints its URL once listening and stops on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx


def test_serve_prints_url_and_stops_on_sigterm(tmp_path):
    command = [sys.executable, "-m", "xnat_flows.cli.main", "emulator", "serve", "--port", "0",
               "--data-dir", str(tmp_path / "d"), "--user", "u", "--password", "p", "--project", "A",
               "--project", "B", "--prearchive-code", "A=0", "--scp-port", "0"]
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
