"""Benchmark of de-identification on upload (issue 23). Prints figures; asserts nothing.

    .venv/bin/python bench/bench_anon_upload.py [--instances 2000] [--kb 256] [--repeats 3] [--workers 4]

The same synthetic session (default 2,000 instances x 256 KB) is uploaded to the XNAT emulator
(its own process, loopback) with and without a 20-line DicomEdit script (``SCRIPT``), for
DICOM-zip (tar), gradual-DICOM and C-STORE, alternating plain and de-identified runs, each in a
fresh client process. The time is the library call a CLI upload makes (``upload_session`` with
the scan, without the read-back; ``store_instances`` for C-STORE): with the script it includes the
dry run over every file before sending and the rewrite of every file as it streams. Medians of
``--repeats`` runs and the ratio de-identified / plain are printed, with the dry run alone (timed
again after each de-identified run) and the load average (the machine is shared).
"""

from __future__ import annotations

import argparse
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
from bench_common import PASSWORD, PROJECT, PYTHON, REPO, Emulator, free_port

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
    out = subprocess.run([PYTHON, __file__, "--case", json.dumps(case)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"case {case['kind']} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _anonymizer(case: dict):
    if not case["anon"]:
        return None
    from xnat_flows.anon import compile_script

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
        started = time.perf_counter()
        result = upload_session(
            client,
            case["source"],
            target,
            workers=case["workers"],
            gradual=case["kind"] == "gradual",
            verify=False,
            anonymizer=anonymizer,
        )
        seconds = time.perf_counter() - started
    assert result.ok and not result.not_deidentified, result
    return {"seconds": seconds, "files": result.files_sent, "bytes": result.bytes_sent, **_dry_run(case, anonymizer)}


def _dry_run(case: dict, anonymizer) -> dict:
    """The de-identified run's share that is the dry run over every file, timed again on its own."""
    if anonymizer is None:
        return {}
    from xnat_flows.transfer.deidentify import deidentify_files
    from xnat_flows.transfer.scan import scan_directory

    files = scan_directory(case["source"]).files
    started = time.perf_counter()
    deidentify_files(files, anonymizer, {"project": PROJECT, "subject": "SUBJ", "session": case["label"]})
    return {"dry_run_seconds": time.perf_counter() - started}


def case_cstore(case: dict) -> dict:
    from xnat_flows.transfer.dicom_send import RoutingOverride, store_instances

    anonymizer = _anonymizer(case)
    started = time.perf_counter()
    result = store_instances(
        case["source"],
        host="127.0.0.1",
        port=case["scp_port"],
        workers=case["workers"],
        routing=RoutingOverride(PROJECT, "SUBJ", case["label"]),
        anonymizer=anonymizer,
    )
    seconds = time.perf_counter() - started
    assert result.ok, result.summary()
    return {"seconds": seconds, "files": len(result.sent), "bytes": result.bytes_sent, **_dry_run(case, anonymizer)}


CASES = {"dicom-zip": case_rest, "gradual": case_rest, "cstore": case_cstore}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--kb", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--modes", default="dicom-zip,gradual,cstore")
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
        emulator = Emulator(work / "xnat", scp_port=scp_port)
        labels = iter(range(10**6))
        try:
            print(f"\n{'mode':10} {'plain s':>8} {'anon s':>8} {'ratio':>6} {'dry run s':>9}   runs (plain / anon)")
            for mode in args.modes.split(","):
                times: dict[bool, list[float]] = {False: [], True: []}
                dry: list[float] = []
                for _ in range(args.repeats):
                    for anon in (False, True):
                        figures = run_case(
                            {
                                "kind": mode,
                                "url": emulator.url,
                                "scp_port": scp_port,
                                "source": str(work / "study"),
                                "label": f"B{next(labels)}",
                                "workers": args.workers,
                                "anon": anon,
                            }
                        )
                        times[anon].append(figures["seconds"])
                        if anon:
                            dry.append(figures["dry_run_seconds"])
                plain, anon_s = statistics.median(times[False]), statistics.median(times[True])
                runs = " ".join(f"{p:.2f}/{a:.2f}" for p, a in zip(times[False], times[True], strict=True))
                print(
                    f"{mode:10} {plain:8.2f} {anon_s:8.2f} {anon_s / plain:6.2f} {statistics.median(dry):9.2f}   {runs}"
                )
        finally:
            emulator.close()
        print(f"\nload average after: {os.getloadavg()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
