"""Does the REST upload stay linear as a session grows? Prints figures; asserts nothing.

    .venv/bin/python bench/bench_scale.py [--sizes 1000,10000,100000] [--instance-kb 8] [--modes tar,gradual]

For each size, one synthetic session of small instances (8 KB by default, one study, 8 series)
goes through our CLI as users run it (``xnat-flows session upload``: start-up, scan, upload,
verify), in a fresh process against a fresh emulator process. Printed per run: files/s over the
whole command, the client's peak RSS and CPU (``os.wait4``), and the emulator's CPU and peak RSS
(``/proc``), so "the emulator keeps up" is a figure too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import PASSWORD, REPO, Emulator, our_upload_command


def _proc_figures(pid: int) -> tuple[float, float]:
    """CPU seconds and peak RSS (MB) of a running process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    peak = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmHWM:")
    )
    return cpu, peak / 1024


def one_run(source: Path, count: int, mode: str, work: Path, workers: int, label: str) -> dict:
    emulator = Emulator(work / f"xnat-{label}", idle_seconds=1.0)
    home = work / f"home-{label}"
    env = {**os.environ, "HOME": str(home), "XNAT_FLOWS_HOME": str(home), "XNAT_PASS": PASSWORD, "TERM": "dumb"}
    cmd = our_upload_command(source, label, emulator.url, mode, workers)
    try:
        server_cpu_before, _ = _proc_figures(emulator.process.pid)
        started = time.perf_counter()
        process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        server_cpu, server_rss = _proc_figures(emulator.process.pid)
        archived = emulator.archived_files(label)
    finally:
        emulator.close()
        shutil.rmtree(home, ignore_errors=True)
    code = os.waitstatus_to_exitcode(status)
    if code != 0 or archived != count:
        print(f"  ! exit {code}, {archived}/{count} archived\n{output.decode(errors='replace')[-1500:]}", flush=True)
    return {
        "seconds": seconds,
        "client_cpu": usage.ru_utime + usage.ru_stime,
        "client_rss": usage.ru_maxrss / 1024,
        "server_cpu": server_cpu - server_cpu_before,
        "server_rss": server_rss,
        "archived": archived,
        "exit": code,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--instance-kb", type=int, default=8)
    parser.add_argument("--modes", default="tar,gradual")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--scratch", default=str(REPO / ".bench-data"))
    args = parser.parse_args()
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    from xnat_flows.testing.synth import write_studies

    print(
        f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; {args.instance_kb} KB instances, {args.workers} workers"
    )
    print(
        f"{'files':>7} {'mode':8} {'seconds':>8} {'files/s':>8} {'client CPU s':>12} {'client RSS MB':>13} "
        f"{'server CPU s':>12} {'server RSS MB':>13} {'archived':>8}",
        flush=True,
    )
    for size in (int(s) for s in args.sizes.split(",")):
        work = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=scratch))
        try:
            source = work / "study"
            started = time.perf_counter()
            manifest = write_studies(source, series=8, instances=size, instance_kb=args.instance_kb, seed=7)
            written = time.perf_counter() - started
            for mode in args.modes.split(","):
                r = one_run(source, len(manifest.files), mode, work, args.workers, f"S{size}{mode}")
                print(
                    f"{size:7d} {mode:8} {r['seconds']:8.1f} {size / r['seconds']:8.0f} {r['client_cpu']:12.1f} "
                    f"{r['client_rss']:13.0f} {r['server_cpu']:12.1f} {r['server_rss']:13.0f} {r['archived']:8d}"
                    + (f"  exit {r['exit']}" if r["exit"] else ""),
                    flush=True,
                )
            print(f"        (session written in {written:.0f} s)", flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
