"""C-STORE throughput: xnat_flows' sender (1, 2, 4 associations) next to dcmtk's storescu, into storescp.

    .venv/bin/python bench/bench_cstore.py [--instances 2000] [--instance-kb 64] [--workers 1 2 4] [--repeat 7]

Every sender runs as its own child process, so its wall time includes start-up and scanning the
directory, as a user would see it. Peak RSS is the child's ``VmHWM`` polled from /proc while it
runs: ``wait4``'s ``ru_maxrss`` would report at least this script's own RSS, which Linux carries
across the child's exec. TCP_NODELAY=1
is set for dcmtk on both ends (without it dcmtk waits ~40 ms per object); our
sender sets it on its sockets. Each run gets a fresh storescp output directory, and the number
of files storescp wrote is checked against the number sent. Each CLI run gets a fresh profile
directory (``XNAT_FLOWS_HOME``): its upload journal would otherwise remember the instances as
delivered and a later round would send nothing. dcmtk is called by its full path: pynetdicom
installs its own ``storescp``/``storescu`` scripts into the virtual environment.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SENDER = """
import json, sys, time
from xnat_flows.transfer.cstore.inputs import RoutingOverride
from xnat_flows.transfer.cstore.send import store_instances
from xnat_flows.transfer.scan import scan_directory
if __name__ == "__main__":
    scan = scan_directory(sys.argv[1], headers="file-meta")
    routing = RoutingOverride("BENCH", "S01", "S01_MR1") if sys.argv[4:] == ["routing"] else None
    result = store_instances(scan, host="127.0.0.1", port=int(sys.argv[2]), called_aet="XNAT",
                        workers=int(sys.argv[3]), routing=routing)
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"sent": len(result.sent), "failed": len(result.failed), "send_rate": result.instances_per_second,
                      "peak_kb": hwm}))
"""


@dataclass
class Run:
    label: str
    instances: int
    wall: float
    peak_rss_mb: float
    received: int
    cpu: float = 0.0  # user + system seconds of the sender process
    send_rate: float | None = None

    def line(self) -> str:
        send = f"{self.send_rate:8.0f}" if self.send_rate is not None else "       -"
        return (
            f"{self.label:<28} {self.instances / self.wall:10.0f} {send} {self.wall:8.2f} {self.cpu:6.2f} "
            f"{self.peak_rss_mb:9.1f} {self.received:9d}"
        )


def dcmtk(tool: str) -> str:
    """dcmtk's ``tool`` (not pynetdicom's script of the same name), or exit saying what to install."""
    for candidate in (f"/usr/bin/{tool}", shutil.which(tool)):
        if candidate and os.path.exists(candidate):
            version = subprocess.run([candidate, "--version"], capture_output=True, text=True).stdout
            if "dcmtk" in version.lower() or "OFFIS" in version:
                return candidate
    sys.exit(f"dcmtk's {tool} not found: install dcmtk (Debian: apt-get install dcmtk)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _high_water_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None  # gone, or a zombie (no memory lines)


def run_child(argv: list[str], env: dict[str, str]) -> tuple[float, float, float, str]:
    """Wall seconds, CPU seconds (user + system), peak RSS in MB and stdout of one child process."""
    peak_kb = 0
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        child = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.DEVNULL)
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            peak_kb = max(peak_kb, _high_water_kb(child.pid) or 0)
            time.sleep(0.002)
        wall = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode()
    if child.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited with {child.returncode}")
    return wall, usage.ru_utime + usage.ru_stime, peak_kb / 1024, text


class StoreScp:
    def __init__(self, out_dir: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.out_dir = out_dir
        self.process = subprocess.Popen(
            [
                dcmtk("storescp"),
                "--fork",
                "-od",
                str(out_dir),
                "+xa",
                "-pm",
                "-aet",
                "XNAT",
                "-pdu",
                "131072",
                str(self.port),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("storescp did not start")

    def count(self, expected: int) -> int:
        for _ in range(100):  # forked children may still be writing their last file
            found = sum(1 for _ in self.out_dir.iterdir())
            if found >= expected:
                break
            time.sleep(0.05)
        return found

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def measure(label: str, template: list[str], work: Path, env: dict[str, str], count: int) -> Run:
    out_dir = work / "received"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir()
    scp = StoreScp(out_dir, env)
    try:
        argv = [part.replace("{port}", str(scp.port)) for part in template]
        home = work / "profile"
        shutil.rmtree(home, ignore_errors=True)
        wall, cpu, peak, text = run_child(argv, {**env, "XNAT_FLOWS_HOME": str(home)})
        received = scp.count(count)
    finally:
        scp.stop()
    send_rate = None
    if label.startswith("xnat"):  # our sender also reports its own high-water mark, read as it ends
        report = json.loads(text.strip().splitlines()[-1])
        send_rate, peak = report["send_rate"], max(peak, report["peak_kb"] / 1024)
    return Run(label, count, wall, peak, received, cpu, send_rate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--instance-kb", type=int, default=64)
    parser.add_argument("--series", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds over all senders (interleaved); every run printed"
    )
    parser.add_argument(
        "--routing",
        action="store_true",
        help="also run our sender with a routing override (PatientComments set on a copy of each instance)",
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()
    for tool in ("storescp", "storescu"):
        dcmtk(tool)

    sys.path.insert(0, str(ROOT))
    from xnat_flows.testing.synth import write_studies

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-cstore-"))
    env = {**os.environ, "TCP_NODELAY": "1", "PYTHONPATH": str(ROOT)}
    try:
        study = work / "study"
        started = time.perf_counter()
        manifest = write_studies(study, series=args.series, instances=args.instances, instance_kb=args.instance_kb)
        count = len(manifest.files)
        print(
            f"study: {count} instances, {manifest.total_bytes / 1e6:.0f} MB "
            f"(written in {time.perf_counter() - started:.1f} s); {os.cpu_count()} CPUs\n"
        )
        plans: list[tuple[str, list[str]]] = [
            (
                "dcmtk storescu +sd +r -nh",
                [dcmtk("storescu"), "+sd", "+r", "-nh", "-aec", "XNAT", "127.0.0.1", "{port}", str(study)],
            ),
        ]
        for workers in args.workers:
            plans.append(
                (
                    f"xnat_flows, {workers} assoc (threads)",
                    [sys.executable, "-c", SENDER, str(study), "{port}", str(workers)],
                )
            )
            if workers == max(args.workers):  # what a user types: the CLI, with its progress bar
                plans.append(
                    (
                        f"CLI send-dicom, {workers} assoc",
                        [
                            str(Path(sys.executable).with_name("xnat-flows")),
                            "session",
                            "send-dicom",
                            str(study),
                            "--host",
                            "127.0.0.1",
                            "--port",
                            "{port}",
                            "--called-aet",
                            "XNAT",
                            "--workers",
                            str(workers),
                        ],
                    )
                )
            if args.routing:
                plans.append(
                    (
                        f"xnat_flows, {workers} assoc +routing",
                        [sys.executable, "-c", SENDER, str(study), "{port}", str(workers), "routing"],
                    )
                )
        print(f"{'sender':<28} {'inst/s':>10} {'send/s':>8} {'wall s':>8} {'cpu s':>6} {'peak MB':>9} {'received':>9}")
        runs: dict[str, list[Run]] = {label: [] for label, _ in plans}
        for _ in range(args.repeat):  # interleaved rounds: load from other processes hits every sender alike
            for label, template in plans:
                run = measure(label, template, work, env, count)
                print(run.line(), flush=True)
                runs[label].append(run)
        if args.repeat > 1:
            for title, pick in (
                ("median", lambda rs: sorted(rs, key=lambda r: r.wall)[(len(rs) - 1) // 2]),
                ("best", lambda rs: min(rs, key=lambda r: r.wall)),
            ):
                print(f"\n{title} of each ({args.repeat} runs):")
                for label_runs in runs.values():
                    print(pick(label_runs).line())
            # the machine's speed drifts between rounds (shared host): compare within a round
            reference = runs[plans[0][0]]
            print(
                f"\nspeed relative to storescu in the same round (storescu wall / sender wall), {args.repeat} rounds:"
            )
            for label, label_runs in list(runs.items())[1:]:
                ratios = sorted(ref.wall / run.wall for ref, run in zip(reference, label_runs, strict=False))
                print(
                    f"{label:<28} median {statistics.median(ratios):.2f}x  min {ratios[0]:.2f}x  max {ratios[-1]:.2f}x"
                )
            print(f"\nCPU relative to storescu in the same round (sender CPU / storescu CPU), {args.repeat} rounds:")
            for label, label_runs in list(runs.items())[1:]:
                ratios = sorted(run.cpu / ref.cpu for ref, run in zip(reference, label_runs, strict=True))
                print(
                    f"{label:<28} median {statistics.median(ratios):.2f}x  min {ratios[0]:.2f}x  max {ratios[-1]:.2f}x"
                )
        print(
            "\ninst/s: instances / child wall time (start-up + scan + send); "
            "send/s: our sender's own rate after scanning; cpu s: the sender process's user + system CPU; "
            "peak MB: the sender process's max RSS "
            ""
        )
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
