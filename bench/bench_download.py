"""Downloading one archived session, side by side: ours, xnatctl, xnatpy. Prints figures; asserts nothing.

    .venv/bin/python bench/bench_download.py --xnatctl /path/to/venv/bin/xnatctl [--instances 2000]
        [--instance-kb 256] [--series 4] [--workers 4] [--rounds 3] [--tools ours,ours-zip,xnatctl,xnatpy]

One emulator (``xnat-flows emulator serve`` in its own process) holds one session of
``--instances`` synthetic files, uploaded once. Every round then runs each tool as a fresh
process into an empty directory, in an order that rotates per round, and times it from start to
exit; client CPU (user+sys) and peak RSS come from ``os.wait4``, the emulator's CPU for the run
from ``/proc`` (on a saturated machine the wall time follows the two CPU figures together). Afterwards the files on disk
are counted and compared with what was uploaded, so a tool that lost files shows.

* ``ours``: ``xnat-flows session download ID DEST --workers N`` (one request per file).
* ``ours-zip``: the same with ``--via zip`` (one zip per scan resource).
* ``xnatctl``: ``xnatctl session download -E ID --out DEST -w N --extract`` (0.6.0: a zip per
  scan in parallel, extracted; install it into a separate venv: a benchmark peer, never a dependency).
* ``xnatpy``: ``session.experiments[ID].download_dir(DEST)`` (xnat 0.8: the session's scans as one
  zip, saved to a temporary file and extracted).

Ratios are ours / the faster peer within each round (other jobs share this machine).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import PASSWORD, PROJECT, PYTHON, Emulator, our_upload_command

XNATPY = """
import sys, xnat
with xnat.connect(sys.argv[1], user="admin", password=sys.argv[2], loglevel="ERROR") as session:
    session.experiments[sys.argv[3]].download_dir(sys.argv[4], verbose=False)
"""


def run_tool(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float, int, str]:
    """Wall seconds, CPU seconds (user+sys), peak RSS in MB, exit code, output tail."""
    started = time.perf_counter()
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = bytearray()
    assert process.stdout is not None
    stdout = process.stdout
    reader = threading.Thread(target=lambda: output.extend(stdout.read()), daemon=True)
    reader.start()
    _, status, usage = os.wait4(process.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    reader.join()
    return (
        time.perf_counter() - started,
        usage.ru_utime + usage.ru_stime,
        usage.ru_maxrss / 1024,
        code,
        output.decode(errors="replace")[-1500:],
    )


def process_cpu(pid: int) -> float:
    """User+sys CPU seconds of a running process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def command(tool: str, experiment: str, dest: Path, url: str, workers: int, xnatctl: str | None) -> list[str]:
    ours = str(Path(PYTHON).parent / "xnat-flows")
    if tool == "ours":
        return [ours, "session", "download", experiment, str(dest), "--url", url, "--workers", str(workers)]
    if tool == "ours-zip":
        return [ours, "session", "download", experiment, str(dest), "--url", url, "--workers", str(workers)] + [
            "--via",
            "zip",
        ]
    if tool == "xnatctl":
        assert xnatctl, "give --xnatctl PATH"
        return [xnatctl, "session", "download", "-E", experiment, "--out", str(dest), "-w", str(workers), "--extract"]
    if tool == "xnatpy":
        return [PYTHON, "-c", XNATPY, url, PASSWORD, experiment, str(dest)]
    raise ValueError(tool)


def files_under(path: Path) -> tuple[int, int]:
    count = size = 0
    for root, _, names in os.walk(path):
        for name in names:
            if not name.endswith(".zip"):
                count += 1
                size += os.path.getsize(os.path.join(root, name))
    return count, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--instance-kb", type=int, default=256)
    parser.add_argument("--series", type=int, default=4)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tools", default="ours,ours-zip,xnatctl,xnatpy")
    parser.add_argument("--xnatctl", default=shutil.which("xnatctl"), help="the peer's executable")
    parser.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temporary one)")
    args = parser.parse_args()
    tools = args.tools.split(",")
    if "xnatctl" in tools and not args.xnatctl:
        parser.error(
            "give --xnatctl PATH (pip install xnatctl==0.6.0 into a separate venv), or leave it out of --tools"
        )

    from xnat_flows.testing.synth import write_studies

    work = Path(tempfile.mkdtemp(prefix="bench-download-", dir=args.work))
    emulator = None
    try:
        source = work / "source"
        manifest = write_studies(
            source,
            studies=1,
            series=args.series,
            instances=args.instances,
            instance_kb=args.instance_kb,
            seed=7,
        )
        count, total = len(manifest.files), manifest.total_bytes
        emulator = Emulator(work / "xnat", idle_seconds=1.0)
        home = work / "home"
        env = {
            **os.environ,
            "HOME": str(home),
            "XNAT_FLOWS_HOME": str(home / "xnat-flows"),
            "XNAT_URL": emulator.url,
            "XNAT_USER": "admin",
            "XNAT_PASS": PASSWORD,
            "NO_COLOR": "1",
            "TERM": "dumb",
        }
        upload = subprocess.run(
            our_upload_command(source, "DL1", emulator.url, "tar", 4), env=env, capture_output=True, text=True
        )
        assert upload.returncode == 0, upload.stdout + upload.stderr
        experiments = emulator._get(f"/data/projects/{PROJECT}/experiments?format=json")["ResultSet"]["Result"]
        experiment = next(e["ID"] for e in experiments if e["label"] == "DL1")
        shutil.rmtree(source)
        print(
            f"session {experiment}: {count} files, {total / 1e6:.0f} MB; workers {args.workers}; "
            f"load {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        ratios: list[float] = []
        for round_index in range(args.rounds):
            order = tools[round_index % len(tools) :] + tools[: round_index % len(tools)]
            seconds: dict[str, float] = {}
            for tool in order:
                dest = work / f"out-{tool}-{round_index}"
                dest.mkdir()
                server_before = process_cpu(emulator.process.pid)
                wall, cpu, rss, code, tail = run_tool(
                    command(tool, experiment, dest, emulator.url, args.workers, args.xnatctl), env
                )
                server = process_cpu(emulator.process.pid) - server_before
                got, size = files_under(dest)
                seconds[tool] = wall
                print(
                    f"round {round_index + 1} {tool:9} {wall:6.2f} s  {total / 1e6 / wall:6.1f} MB/s  "
                    f"CPU {cpu:6.2f} s (emulator {server:5.2f} s)  peak RSS {rss:6.0f} MB  files {got}/{count}  "
                    f"exit {code}  load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
                if code != 0 or got != count or size != total:
                    print(f"  ! {tool}: exit {code}, {got}/{count} files, {size}/{total} bytes\n{tail}", flush=True)
                shutil.rmtree(dest)
            peers = [seconds[t] for t in ("xnatctl", "xnatpy") if t in seconds]
            if "ours" in seconds and peers:
                ratios.append(seconds["ours"] / min(peers))
                print(f"round {round_index + 1} ours / faster peer: {ratios[-1]:.2f}", flush=True)
        if ratios:
            print(f"median ours / faster peer over {len(ratios)} rounds: {statistics.median(ratios):.2f}")
        print(f"load after: {os.getloadavg()}")
    finally:
        if emulator is not None:
            emulator.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
