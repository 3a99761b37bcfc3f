"""Benchmark of de-identification on upload (issue 23). Prints figures; asserts nothing.

    .venv/bin/python bench/bench_anon_upload.py [--instances 2000] [--kb 256] [--repeats 3] [--workers 4]

The same synthetic session (default 2,000 instances x 256 KB) is uploaded to the XNAT emulator
(its own process, loopback) with and without a 20-line DicomEdit script (``SCRIPT``), for
DICOM-zip (tar), gradual-DICOM and C-STORE, alternating plain and de-identified runs, each in a
fresh client process. The time is the library call a CLI upload makes (``upload_session`` with
the scan, without the read-back; ``store_instances`` for C-STORE): with the script it includes the
dry run over every file before sending and the rewrite of every file as it streams. Medians of
``--repeats`` runs and the ratio de-identified / plain are printed (``ratio``: of the medians;
``paired``: the median of each round's ratio, a round being one run of each kind in turn, which
cancels the machine's drift between rounds), with the client process's CPU
time (what de-identifying adds, less sensitive than wall time to a shared machine's load), the dry
run alone (timed again after each de-identified run) and the load average. ``--whole`` adds
a third run of each kind whose dry run reads and rewrites every file whole, as before
``Anonymizer.rewrite_head`` (the same load for before and after). ``--upfront`` adds a run of each
kind whose DICOM-zip makes the whole dry run before the first request, as before
``transfer.deidentify.StreamedDeidentification`` (for DICOM-zip with the bench's script, whose
StudyInstanceUID follows the original, the "anon" run rewrites batch by batch as it sends; its
"dry run s" column is then the whole dry run timed on its own, not a wait before the first request).
The emulator's CPU time per run is printed beside the client's (``--each``: every run as it ends,
the emulator's user and system time apart). ``--prefault-mb N`` touches and frees N MB of memory
just before each timed run (``bench_common.prefault_free_memory``). ``--pin`` runs the emulator on
core 1 and each client on core 0 (each side a core of its own, as with a server on another machine).
``--untimed`` adds a run of each kind whose dry run is made before the clock starts (a diagnostic:
the upload as if de-identifying cost the client's interpreter nothing, each file's rewritten header
still streamed before its original tail). ``--cli`` adds, for DICOM-zip, the command a user runs (``xnat-flows session upload --archive-format
tar``, with ``--anon-script`` for the de-identified run) timed whole in a fresh HOME: interpreter
start, login, scan, dry run, send and the read-back that checks the archive holds every file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import PASSWORD, PROJECT, PYTHON, REPO, Emulator, free_port, our_upload_command, prefault_free_memory

# A site de-identification script of the usual shape: labels, dates, UIDs, deletions, a condition.
SCRIPT = """version "6.1"
// 20 statements, as a site's de-identification script might hold them
(0010,0010) := subject
(0010,0020) := session
project != "Unassigned" ? (0008,1030) := project
(0020,000D) := hashUID[(0020,000D)]
(0020,000E) := hashUID[(0020,000E)]
(0008,0018) := hashUID[(0008,0018)]
(0020,0052) := hashUID[(0020,0052)]
(0008,0080) := "SITE"
(0008,0090) := ""
(0008,1050) := ""
(0010,1010) := format["{0}Y", "0"]
- (0010,0030)
- (0010,1000)
- (0010,1001)
- (0010,2160)
- (0010,4000)
- (0008,0081)
- (0008,1040)
- (0032,1032)
(0008,103E) := uppercase[(0008,103E)]
"""


def run_case(case: dict) -> dict:
    cpus = case.get("client_cpus")
    out = subprocess.run(
        [PYTHON, __file__, "--case", json.dumps(case)],
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, set(cpus)),
    )
    if out.returncode != 0:
        raise RuntimeError(f"case {case['kind']} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cpu_seconds() -> float:
    """CPU time of this client process and of the worker processes it waited for (C-STORE)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _anonymizer(case: dict):
    if not case["anon"]:
        return None
    from xnat_flows.anon import compile_script

    if case.get("whole"):
        # the dry run as it was before rewrite_head: every file read and rewritten whole
        from xnat_flows.transfer import deidentify

        deidentify.HEAD_BYTES = 1 << 62
    if case.get("upfront"):
        # DICOM-zip as before the streamed dry run: the whole session rewritten before the first request
        from xnat_flows.anon.engine import Anonymizer

        Anonymizer.study_uid_follows_original = property(lambda self: False)  # type: ignore[method-assign,assignment]

    return compile_script(SCRIPT, source="bench.das")


def case_rest(case: dict) -> dict:
    from pydantic import SecretStr

    from xnat_flows.client import Credentials, XnatClient
    from xnat_flows.transfer.session import upload_session
    from xnat_flows.transfer.target import UploadTarget

    anonymizer = _anonymizer(case)
    credentials = Credentials(url=case["url"], username="admin", password=SecretStr(PASSWORD))
    target = UploadTarget(PROJECT, "SUBJ", case["label"], archive_when_complete=False)
    with XnatClient(credentials, token_cache=None) as client:
        client.login()
        if case.get("untimed"):
            _dry_run_before_the_clock(case, anonymizer)
        prefault_free_memory(case["prefault_mb"])
        started, cpu = time.perf_counter(), _cpu_seconds()
        result = upload_session(
            client,
            case["source"],
            target,
            workers=case["workers"],
            gradual=case["kind"] == "gradual",
            verify=False,
            anonymizer=anonymizer,
        )
        seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    assert result.ok and not result.not_deidentified, result
    figures = {"seconds": seconds, "cpu": cpu, "files": result.files_sent, "bytes": result.bytes_sent}
    return {**figures, **_dry_run(case, anonymizer)}


def _dry_run_before_the_clock(case: dict, anonymizer) -> None:
    """Make the session's dry run now, and have the timed upload take its results as they are.

    A diagnostic (``--untimed``), not a mode of the product: what the upload would take were
    de-identifying free on the client's interpreter (as if made by another process on a core with
    time to spare), the rewrite of every file as it streams still timed.
    """
    from xnat_flows.transfer import deidentify
    from xnat_flows.transfer.scan import scan_directory

    variables = {"project": PROJECT, "subject": "SUBJ", "session": case["label"]}
    before = deidentify._DryRun(anonymizer, variables, deidentify.HEAD_CACHE_BYTES)
    done = {original.path: before.rewrite(original) for original in scan_directory(case["source"]).files}
    deidentify._DryRun.rewrite = lambda self, original: done[original.path]  # type: ignore[method-assign]


def _dry_run(case: dict, anonymizer) -> dict:
    """The de-identified run's share that is the dry run over every file, timed again on its own."""
    if anonymizer is None or case.get("untimed"):
        return {}  # (--untimed: the dry run of this process answers from what it made before the clock)
    from xnat_flows.transfer.deidentify import deidentify_files
    from xnat_flows.transfer.scan import scan_directory

    files = scan_directory(case["source"]).files
    started = time.perf_counter()
    deidentify_files(files, anonymizer, {"project": PROJECT, "subject": "SUBJ", "session": case["label"]})
    return {"dry_run_seconds": time.perf_counter() - started}


def case_cstore(case: dict) -> dict:
    from xnat_flows.transfer.cstore.inputs import RoutingOverride
    from xnat_flows.transfer.cstore.send import store_instances

    anonymizer = _anonymizer(case)
    prefault_free_memory(case["prefault_mb"])
    started, cpu = time.perf_counter(), _cpu_seconds()
    result = store_instances(
        case["source"],
        host="127.0.0.1",
        port=case["scp_port"],
        workers=case["workers"],
        routing=RoutingOverride(PROJECT, "SUBJ", case["label"]),
        anonymizer=anonymizer,
    )
    seconds, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    assert result.ok, result.summary()
    figures = {"seconds": seconds, "cpu": cpu, "files": len(result.sent), "bytes": result.bytes_sent}
    return {**figures, **_dry_run(case, anonymizer)}


def case_cli(case: dict) -> dict:
    """``xnat-flows session upload`` as a user runs it, with its read-back; the process timed whole."""
    home = Path(tempfile.mkdtemp(prefix="bench-anon-home-"))
    try:
        cmd = our_upload_command(Path(case["source"]), case["label"], case["url"], "tar", case["workers"])
        if case["anon"]:
            script = home / "site.das"
            script.write_text(SCRIPT)
            cmd += ["--anon-script", str(script)]
        env = {**os.environ, "HOME": str(home), "XNAT_FLOWS_HOME": str(home / "xnat-flows"), "XNAT_PASS": PASSWORD}
        env |= {"NO_COLOR": "1", "TERM": "dumb"}
        prefault_free_memory(case["prefault_mb"])
        started, before = time.perf_counter(), os.times()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, timeout=600)
        seconds, after = time.perf_counter() - started, os.times()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {(done.stdout + done.stderr)[-2000:]}")
    cpu = after.children_user + after.children_system - before.children_user - before.children_system
    return {"seconds": seconds, "cpu": cpu}


CASES = {"dicom-zip": case_rest, "gradual": case_rest, "cstore": case_cstore, "cli": case_cli}


def _settle(source: Path) -> None:
    """Start each run from the same memory state: the earlier runs' archives out of the page cache,
    the source study in it.

    On these VMs a run writing into memory the VM has not touched yet (each run adds ~0.5 GB of
    archive to the page cache) grew 3-6x slower after the first few runs, plain and de-identified
    alike, while the client's CPU stayed the same; dropping the clean cache between runs (root only;
    skipped otherwise) and reading the source again keeps every run on the same footing.
    """
    os.sync()
    with contextlib.suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    for path in source.rglob("*"):
        if path.is_file():
            path.read_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--each", action="store_true", help="print every run's figures as it ends")
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--kb", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--modes", default="dicom-zip,gradual,cstore")
    parser.add_argument(
        "--whole", action="store_true", help="also time the dry run reading every file whole (before rewrite_head)"
    )
    parser.add_argument(
        "--upfront",
        action="store_true",
        help="also time DICOM-zip with the whole dry run before the first request (before the streamed dry run)",
    )
    parser.add_argument(
        "--untimed",
        action="store_true",
        help="also time DICOM-zip with the dry run made before the clock starts (what de-identifying costs"
        " the upload when its CPU is not on the client's interpreter)",
    )
    parser.add_argument(
        "--cli",
        action="store_true",
        help="also time DICOM-zip as the CLI command a user runs, read-back included (mode 'cli')",
    )
    parser.add_argument(
        "--prefault-mb",
        type=int,
        default=0,
        help="MB of memory touched and freed just before each timed run (bench_common.prefault_free_memory)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="the emulator on core 1 and the client on core 0, as if each had a machine (a core) of its own",
    )
    parser.add_argument("--scratch", default=str(REPO / ".bench-data"))
    args = parser.parse_args()
    if args.case:
        case = json.loads(args.case)
        print(json.dumps(CASES[case["kind"]](case)))
        return

    from xnat_flows.testing.synth import write_studies

    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-anon-", dir=scratch))
    try:
        manifest = write_studies(
            work / "study", series=8, instances=args.instances, instance_kb=args.kb, seed=23, pixels="random"
        )
        print(f"synthetic session: {len(manifest.files)} instances, {manifest.total_bytes / 1e6:.0f} MB")
        print(
            f"script: {sum(1 for line in SCRIPT.splitlines() if line and not line.startswith(('version', '//')))} statements"
        )
        print(f"machine: {os.cpu_count()} cores, load average before: {os.getloadavg()}")
        scp_port = free_port()
        emulator = Emulator(work / "xnat", scp_port=scp_port, cpus={1} if args.pin else None)
        labels = iter(range(10**6))
        try:
            kinds = [
                "plain",
                "anon",
                *(["whole"] if args.whole else []),
                *(["upfront"] if args.upfront else []),
                *(["untimed"] if args.untimed else []),
            ]
            print(
                f"\n{'mode':10} {'run':6} {'median s':>8} {'ratio':>6} {'paired':>6} {'client CPU s':>12} {'CPU ratio':>9}"
                f" {'dry run s':>9} {'server CPU s':>12}   runs   (load average)"
            )
            for mode in args.modes.split(",") + (["cli"] if args.cli else []):
                mode_kinds = kinds if mode != "cli" else ["plain", "anon"]
                times: dict[str, list[float]] = {kind: [] for kind in mode_kinds}
                cpu: dict[str, list[float]] = {kind: [] for kind in mode_kinds}
                dry: dict[str, list[float]] = {kind: [] for kind in mode_kinds}
                server: dict[str, list[float]] = {kind: [] for kind in mode_kinds}
                for _ in range(args.repeats):
                    for kind in mode_kinds:
                        _settle(work / "study")
                        server_cpu = emulator.cpu_seconds()
                        figures = run_case(
                            {
                                "kind": mode,
                                "url": emulator.url,
                                "scp_port": scp_port,
                                "source": str(work / "study"),
                                "label": f"B{next(labels)}",
                                "workers": args.workers,
                                "anon": kind != "plain",
                                "whole": kind == "whole",
                                "upfront": kind == "upfront",
                                "untimed": kind == "untimed",
                                "prefault_mb": args.prefault_mb,
                                "client_cpus": [0] if args.pin else None,
                            }
                        )
                        times[kind].append(figures["seconds"])
                        cpu[kind].append(figures["cpu"])
                        dry[kind].append(figures.get("dry_run_seconds", 0.0))
                        (user_before, system_before), (user_after, system_after) = server_cpu, emulator.cpu_seconds()
                        server_user, server_system = user_after - user_before, system_after - system_before
                        server[kind].append(server_user + server_system)
                        if args.each:
                            print(
                                f"  {mode} {kind}: {figures['seconds']:.2f} s,"
                                f" client CPU {figures['cpu']:.2f} s,"
                                f" server CPU {server_user:.2f} user + {server_system:.2f} system"
                            )
                plain, plain_cpu = statistics.median(times["plain"]), statistics.median(cpu["plain"])
                for kind in mode_kinds:
                    median, median_cpu = statistics.median(times[kind]), statistics.median(cpu[kind])
                    runs = " ".join(f"{t:.2f}" for t in times[kind])
                    # each run against the plain run of the same round: drift between rounds cancels
                    paired = statistics.median(t / p for t, p in zip(times[kind], times["plain"], strict=True))
                    print(
                        f"{mode:10} {kind:6} {median:8.2f} {median / plain:6.2f} {paired:6.2f} {median_cpu:12.2f}"
                        f" {median_cpu / plain_cpu:9.2f} {statistics.median(dry[kind]):9.2f}"
                        f" {statistics.median(server[kind]):12.2f}"
                        f"   {runs}   ({os.getloadavg()[0]:.1f})"
                    )
        finally:
            emulator.close()
        print(f"\nload average after: {os.getloadavg()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
