"""What the REST benchmarks share: the interpreter, the emulator's credentials, a free port, and
``xnat-flows emulator serve`` in a process of its own (so client and server each get a core)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from base64 import b64encode
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
PASSWORD = "bench-password"
PROJECT = "BENCH"


def our_upload_command(source: Path, label: str, url: str, mode: str, workers: int) -> list[str]:
    """``xnat-flows session upload`` as a user runs it: ``mode`` gradual, or an archive format."""
    cmd = [
        str(Path(PYTHON).parent / "xnat-flows"),
        "session",
        "upload",
        str(source),
        "-P",
        PROJECT,
        "-S",
        "SUBJ",
        "-E",
        label,
        "--url",
        url,
        "--username",
        "admin",
        "--workers",
        str(workers),
    ]
    return cmd + (["--gradual"] if mode == "gradual" else ["--archive-format", mode])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prefault_free_memory(megabytes: int) -> None:
    """Touch ``megabytes`` of fresh memory and give it back, just before a timed run.

    These VMs (Firecracker, free page reporting at order 11: see ``/proc/cmdline``) hand memory that
    stays free for a few seconds back to the host; writing into it again faults it in, a cost that
    falls on whichever process writes first (in an upload bench, the emulator writing the archive).
    Touching memory just before a run leaves it backed when the run needs it. docs/performance.md
    (2026-12-04 afternoon) has what it changed: nothing the spread between readings does not cover.
    """
    if megabytes <= 0:
        return
    import mmap

    block = bytes(1 << 20)
    with mmap.mmap(-1, megabytes << 20) as memory:
        for _ in range(megabytes):
            memory.write(block)


class Emulator:
    """A fresh emulator process on its own data directory, removed when it is closed."""

    def __init__(
        self,
        data_dir: Path,
        *,
        idle_seconds: float = 3600.0,
        latency_ms: int = 0,
        scp_port: int | None = None,
        switch_interval: float | None = None,
        cpus: set[int] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # switch_interval: the emulator interpreter's sys.setswitchinterval (how long a thread that
        # wants the GIL waits before asking the holder for it; CPython's default is 5 ms)
        start = ["-m", "xnat_flows.cli.main"]
        if switch_interval is not None:
            start = [
                "-c",
                f"import sys; sys.setswitchinterval({switch_interval}); from xnat_flows.cli.main import main; main()",
            ]
        cmd = [
            PYTHON,
            *start,
            "emulator",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(data_dir),
            "--user",
            "admin",
            "--password",
            PASSWORD,
            "--project",
            PROJECT,
            "--latency-ms",
            str(latency_ms),
            "--rebuild-idle-seconds",
            str(idle_seconds),
        ] + (["--scp-port", str(scp_port)] if scp_port is not None else [])
        # cpus: the cores the emulator may run on (all of its threads), as a server of its own would
        self.process = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if "ready" not in line:
            raise RuntimeError(f"emulator did not start: {line}{self.process.stdout.read()}")
        threading.Thread(target=self.process.stdout.read, daemon=True).start()

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU time (user, system) the emulator process has used so far, from /proc (Linux)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) / os.sysconf("SC_CLK_TCK"), int(fields[12]) / os.sysconf("SC_CLK_TCK")

    def _get(self, path: str) -> dict:
        request = urllib.request.Request(
            self.url + path, headers={"Authorization": "Basic " + b64encode(f"admin:{PASSWORD}".encode()).decode()}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def archived_files(self, label: str) -> int:
        """Files in the archived session ``label`` of PROJECT, read through the REST API."""
        experiments = self._get(f"/data/projects/{PROJECT}/experiments?format=json")["ResultSet"]["Result"]
        found = [e["ID"] for e in experiments if e["label"] == label]
        if not found:
            return 0
        scans = self._get(f"/data/experiments/{found[0]}/scans?format=json")["ResultSet"]["Result"]
        return sum(
            int(
                self._get(f"/data/experiments/{found[0]}/scans/{s['ID']}/files?format=json")["ResultSet"][
                    "totalRecords"
                ]
            )
            for s in scans
        )

    def close(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)
