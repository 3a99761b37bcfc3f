"""Benchmark: how fast the XNAT emulator ingests DICOM-zip, against extracting the same tar to disk.

Writes one synthetic session (2,000 x 256 KB by default), packs it as one tar and as four tars
(round-robin, as a 4-worker upload splits it), then per round, interleaved:

* extract: the one tar to disk with the standard library (``tarfile.extractall``), the floor;
* one upload: the one tar POSTed to a fresh emulator process (``/data/services/import``,
  DICOM-zip, Direct-Archive, as ``xnat-flows session upload`` sends it), timed to the answer;
* four uploads: the four tars POSTed at once into the same session of a fresh emulator;
* dest=/archive: the one tar with ``dest=/archive/projects/P`` (the answer waits for archiving).

What is timed: wall time from starting the first client to the last answer (the emulator already
listening, its start-up not counted); CPU (user+sys) of the emulator process over the same span,
read from /proc; CPU of the clients (curl, in processes of their own: ``-T`` streams the body
from the file, so the figures are the emulator's, not a Python client's), from the rusage of the
reaped children; the whole machine's idle CPU over the run (/proc/stat: 0 means no core was
ever free, so more threads could only take a share from other processes). The 1-minute load
average is read before each run: on a shared machine a figure means little without it. Every upload is checked: the session is archived with every instance.
The summary gives, per figure, the median and the spread (min-max) over the rounds, and the
ratios per round. Not a test; run it by hand:

    .venv/bin/python bench/bench_emulator_ingest.py [--instances 2000] [--instance-kb 256] [--rounds 5]
        [--work-dir /dev/shm] [--cases extract,one,four,archive] [--switch-interval SECONDS]

Targets (issue 25): one upload at most 2x the extract; four uploads at least 1.5x one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request
from base64 import b64encode
from dataclasses import dataclass
from pathlib import Path

from bench_common import PASSWORD, PROJECT, Emulator

LABEL = "INGEST"


def write_session(out_dir: Path, instances: int, instance_kb: int) -> list[Path]:
    from xnat_flows.testing.synth import write_studies

    series = max(1, min(10, instances // 100))
    manifest = write_studies(out_dir, studies=1, series=series, instances=instances, instance_kb=instance_kb)
    return sorted(Path(item.path) for item in manifest.files)


def pack(paths: list[Path], root: Path, target: Path) -> Path:
    with tarfile.open(target, "w") as archive:
        for path in paths:
            archive.add(path, str(path.relative_to(root)))
    return target


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def machine_idle_seconds() -> float:
    """Idle (+ iowait) CPU-seconds of the whole machine so far, over all cores (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (fields[3] + fields[4]) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """User + system CPU of the reaped child processes so far (the curl clients)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Run:
    wall: float  # seconds, first client started -> last answer
    server_cpu: float  # the emulator's user+sys over that span (for extract: the extracting process)
    client_cpu: float  # the clients' user+sys (curl); 0 for extract
    load: float  # 1-minute load average when the run started
    server_user: float = 0.0  # of server_cpu, in user space: Python, under the GIL (one core at a time)
    machine_idle: float = 0.0  # CPU-seconds no process used over the run (all cores): 0 = no free core


def extract_run(tar_path: Path, work: Path) -> Run:
    """Extracting the tar to disk, in this process."""
    out = Path(tempfile.mkdtemp(prefix="extract-", dir=work))
    try:
        load = os.getloadavg()[0]
        idle = machine_idle_seconds()
        started, cpu, before = time.perf_counter(), time.process_time(), os.times()
        with tarfile.open(tar_path) as archive:
            archive.extractall(out, filter="data")
        times = os.times()
        user = times.user - before.user
        return Run(
            time.perf_counter() - started,
            time.process_time() - cpu,
            0.0,
            load,
            server_user=user,
            machine_idle=machine_idle_seconds() - idle,
        )
    finally:
        shutil.rmtree(out, ignore_errors=True)


def curl_post(url: str, tar_path: Path, params: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            "curl",
            "-sS",
            "-X",
            "POST",
            "-T",
            str(tar_path),
            "-u",
            f"admin:{PASSWORD}",
            "-H",
            "Content-Type: application/x-tar",
            "-H",
            "Expect:",
            "-w",
            "\n%{http_code}",
            f"{url}/data/services/import?{urllib.parse.urlencode(params)}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def upload(emulator: Emulator, tars: list[Path], params: dict[str, str]) -> tuple[Run, list[str]]:
    """POST the tars at once (one curl each); the run's figures and the answered session URIs."""
    load = os.getloadavg()[0]
    (user, system), client_cpu = cpu_seconds(emulator.process.pid), children_cpu_seconds()
    idle = machine_idle_seconds()
    started = time.perf_counter()
    running = [curl_post(emulator.url, tar, params) for tar in tars]
    answers = [process.communicate(timeout=600)[0] for process in running]
    wall = time.perf_counter() - started
    user_after, system_after = cpu_seconds(emulator.process.pid)
    run = Run(
        wall,
        user_after - user + system_after - system,
        children_cpu_seconds() - client_cpu,
        load,
        server_user=user_after - user,
        machine_idle=machine_idle_seconds() - idle,
    )
    for answer in answers:
        body, _, status = answer.rpartition("\n")
        if status != "200":
            raise RuntimeError(f"upload failed: HTTP {status}: {body[:300]}")
    return run, sorted({a.rpartition("\n")[0].strip() for a in answers})


def archive_now(emulator: Emulator, uri: str) -> None:
    request = urllib.request.Request(
        emulator.url + uri,
        method="POST",
        headers={"Authorization": "Basic " + b64encode(f"admin:{PASSWORD}".encode()).decode()},
    )
    urllib.request.urlopen(request, timeout=60).close()


def wait_archived(emulator: Emulator, expected: int, timeout: float = 300) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if emulator.archived_files(LABEL) == expected:
            return time.perf_counter() - started
        time.sleep(0.2)
    raise RuntimeError(f"session {LABEL} not archived with {expected} files within {timeout} s")


def upload_run(
    work: Path, tars: list[Path], expected: int, dest_archive: bool = False, switch_interval: float | None = None
) -> Run:
    """The uploads into a fresh emulator, to the last answer; then checks the archive."""
    emulator = Emulator(Path(tempfile.mkdtemp(prefix="xnat-", dir=work)), switch_interval=switch_interval)
    try:
        params = {"import-handler": "DICOM-zip", "project": PROJECT, "subject": "SUBJ", "session": LABEL}
        params |= {"dest": f"/archive/projects/{PROJECT}"} if dest_archive else {"Direct-Archive": "true"}
        run, uris = upload(emulator, tars, params)
        if not dest_archive:
            [uri] = uris
            archive_now(emulator, uri)
        wait_archived(emulator, expected)
        return run
    finally:
        emulator.close()


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--instance-kb", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cases", default="extract,one,four,archive", help="which runs, in this order per round")
    parser.add_argument("--switch-interval", type=float, help="the emulator's sys.setswitchinterval, seconds")
    parser.add_argument("--keep", type=Path, help="reuse/keep the synthetic data in this directory")
    parser.add_argument(
        "--work-dir", type=Path, help="where the tars, extracts and emulator data go (e.g. /dev/shm: no disk noise)"
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-ingest-", dir=args.work_dir))
    data_dir = args.keep or work / "dicom"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        paths = sorted(p for p in data_dir.rglob("*") if p.is_file()) or write_session(
            data_dir, args.instances, args.instance_kb
        )
        total = sum(p.stat().st_size for p in paths)
        one = pack(paths, data_dir, work / "one.tar")
        parts = [pack(paths[i::4], data_dir, work / f"part{i}.tar") for i in range(4)]
        print(
            f"session: {len(paths)} instances, {total / 1e6:.0f} MB; {args.rounds} interleaved rounds; "
            f"{os.cpu_count()} CPUs; emulator switch interval "
            f"{args.switch_interval if args.switch_interval is not None else 'default (0.005)'} s",
            flush=True,
        )
        cases = args.cases.split(",")
        uploads = {
            "one": lambda: upload_run(work, [one], len(paths), switch_interval=args.switch_interval),
            "four": lambda: upload_run(work, parts, len(paths), switch_interval=args.switch_interval),
            "archive": lambda: upload_run(
                work, [one], len(paths), dest_archive=True, switch_interval=args.switch_interval
            ),
        }
        runs: dict[str, list[Run]] = {case: [] for case in cases}
        for round_number in range(1, args.rounds + 1):
            for case in cases:
                run = extract_run(one, work) if case == "extract" else uploads[case]()
                runs[case].append(run)
                print(
                    f"round {round_number} {case:>7}: wall {run.wall:6.2f} s, server CPU {run.server_cpu:5.2f} s, "
                    f"(user {run.server_user:4.2f}), client CPU {run.client_cpu:5.2f} s, load {run.load:5.2f}, "
                    f"machine idle {run.machine_idle:4.2f} CPU-s",
                    flush=True,
                )
        summary: dict[str, object] = {
            case: {
                "wall_s": spread([r.wall for r in runs[case]]),
                "server_cpu_s": spread([r.server_cpu for r in runs[case]]),
                "server_user_s": spread([r.server_user for r in runs[case]]),
                "client_cpu_s": spread([r.client_cpu for r in runs[case]]),
                "load": spread([r.load for r in runs[case]]),
                "machine_idle_cpu_s": spread([r.machine_idle for r in runs[case]]),
            }
            for case in cases
        }
        if "one" in runs:
            summary["one_upload_MB_per_s"] = round(total / 1e6 / statistics.median(r.wall for r in runs["one"]))
        if "one" in runs and "extract" in runs:
            pairs = list(zip(runs["one"], runs["extract"], strict=True))
            summary["one_over_extract_wall"] = [round(o.wall / e.wall, 2) for o, e in pairs]
            summary["one_over_extract_cpu"] = [round(o.server_cpu / e.server_cpu, 2) for o, e in pairs]
            summary["target_one_over_extract_at_most"] = 2.0
        if "one" in runs and "four" in runs:
            speedups = [o.wall / f.wall for o, f in zip(runs["one"], runs["four"], strict=True)]
            summary["four_speedup_over_one_wall"] = [round(x, 2) for x in speedups]
            summary["four_speedup_median"] = round(statistics.median(speedups), 2)
            # What free cores would allow: one upload is one thread doing the emulator's work in
            # turn (the client overlaps on another core); four can go no faster than the emulator's
            # user time (under the GIL, one core at a time) nor than all CPU spread over the cores.
            cores = os.cpu_count() or 1
            summary["four_speedup_ceiling_on_free_cores"] = [
                round(o.server_cpu / max(f.server_user, (f.server_cpu + f.client_cpu) / cores), 2)
                for o, f in zip(runs["one"], runs["four"], strict=True)
            ]
            summary["target_four_speedup_at_least"] = 1.5
        print(json.dumps(summary, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
