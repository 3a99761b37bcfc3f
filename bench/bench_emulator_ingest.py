"""Benchmark: how fast the XNAT emulator ingests DICOM-zip, against extracting the same tar to disk.

Writes one synthetic session (2,000 x 256 KB by default), packs it as one tar and as four tars
(round-robin, as a 4-worker upload splits it), then per round, interleaved:

* extract: the one tar to disk with the standard library (``tarfile.extractall``), the floor;
* one upload: the one tar POSTed to a fresh emulator process (``/data/services/import``,
  DICOM-zip, Direct-Archive, as ``xnat-flows session upload`` sends it), timed to the answer;
* four uploads: the four tars POSTed at once into the same session of a fresh emulator;
* dest=/archive: the one tar with ``dest=/archive/projects/P`` (the answer waits for archiving).

The client is curl in processes of its own (``-T``: the body streamed from the file), so the
figures are the emulator's, not the client's. Every upload is checked: the session is archived
with every instance. Not a test; run it by hand:

    .venv/bin/python bench/bench_emulator_ingest.py [--instances 2000] [--instance-kb 256] [--rounds 3]
        [--work-dir /dev/shm]

Targets (issue 25): one upload at most 2x the extract; four uploads at least 1.5x one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request
from base64 import b64encode
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def extract_seconds(tar_path: Path, work: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of extracting the tar to disk."""
    out = Path(tempfile.mkdtemp(prefix="extract-", dir=work))
    try:
        started, cpu = time.perf_counter(), time.process_time()
        with tarfile.open(tar_path) as archive:
            archive.extractall(out, filter="data")
        return time.perf_counter() - started, time.process_time() - cpu
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


def upload_seconds(emulator: Emulator, tars: list[Path], params: dict[str, str]) -> tuple[float, list[str]]:
    started = time.perf_counter()
    running = [curl_post(emulator.url, tar, params) for tar in tars]
    answers = [process.communicate(timeout=600)[0] for process in running]
    seconds = time.perf_counter() - started
    for answer in answers:
        body, _, status = answer.rpartition("\n")
        if status != "200":
            raise RuntimeError(f"upload failed: HTTP {status}: {body[:300]}")
    return seconds, sorted({a.rpartition("\n")[0].strip() for a in answers})


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


def one_run(work: Path, tars: list[Path], expected: int, dest_archive: bool = False) -> tuple[float, float]:
    """(wall, emulator CPU) seconds of the uploads, to the last answer; then checks the archive."""
    emulator = Emulator(Path(tempfile.mkdtemp(prefix="xnat-", dir=work)))
    try:
        params = {"import-handler": "DICOM-zip", "project": PROJECT, "subject": "SUBJ", "session": LABEL}
        params |= {"dest": f"/archive/projects/{PROJECT}"} if dest_archive else {"Direct-Archive": "true"}
        cpu = cpu_seconds(emulator.process.pid)
        seconds, uris = upload_seconds(emulator, tars, params)
        cpu = cpu_seconds(emulator.process.pid) - cpu
        if not dest_archive:
            [uri] = uris
            archive_now(emulator, uri)
        wait_archived(emulator, expected)
        return seconds, cpu
    finally:
        emulator.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--instance-kb", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
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
        print(f"session: {len(paths)} instances, {total / 1e6:.0f} MB; {args.rounds} interleaved rounds")
        figures: dict[str, list[float]] = {}
        for round_number in range(1, args.rounds + 1):
            runs = {
                "extract": extract_seconds(one, work),
                "one": one_run(work, [one], len(paths)),
                "four": one_run(work, parts, len(paths)),
                "archive": one_run(work, [one], len(paths), dest_archive=True),
            }
            for name, (wall, cpu) in runs.items():
                figures.setdefault(name, []).append(wall)
                figures.setdefault(f"{name}_cpu", []).append(cpu)
            print(
                f"round {round_number} (wall / CPU s): extract {runs['extract'][0]:.2f} / {runs['extract'][1]:.2f}, "
                f"one upload {runs['one'][0]:.2f} / {runs['one'][1]:.2f}, "
                f"four uploads {runs['four'][0]:.2f} / {runs['four'][1]:.2f}, "
                f"dest=/archive {runs['archive'][0]:.2f} / {runs['archive'][1]:.2f}",
                flush=True,
            )
        median = {name: statistics.median(values) for name, values in figures.items()}
        ratios = [o / e for o, e in zip(figures["one"], figures["extract"], strict=True)]
        cpu_ratios = [o / e for o, e in zip(figures["one_cpu"], figures["extract_cpu"], strict=True)]
        scaling = [o / f for o, f in zip(figures["one"], figures["four"], strict=True)]
        print(
            json.dumps(
                {
                    "median_seconds": {k: round(v, 2) for k, v in median.items()},
                    "one_upload_MB_per_s": round(total / 1e6 / median["one"]),
                    "one_upload_over_extract_wall": [round(r, 2) for r in ratios],
                    "one_upload_over_extract_cpu": [round(r, 2) for r in cpu_ratios],
                    "target_one_over_extract_at_most": 2.0,
                    "four_uploads_speedup_over_one_wall": [round(s, 2) for s in scaling],
                    "target_four_speedup_at_least": 1.5,
                },
                indent=1,
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
