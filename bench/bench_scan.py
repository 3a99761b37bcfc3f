"""Scanner speed, warm (files in the page cache). Prints figures; asserts nothing.

    .venv/bin/python bench/bench_scan.py [--files 10000] [--instance-kb 8] [--rounds 3]

Interleaved rounds of: ``scan_directory(headers="full")`` (the REST scan: UIDs by the Part-10
walker, pydicom for what it cannot confirm), ``headers="file-meta"`` (C-STORE), and the peer: the
same walk classifying every file with pydicom (``read_header``: ``dcmread`` with
``specific_tags`` and ``defer_size``, the REST scan before the walker).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10000)
    parser.add_argument("--instance-kb", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from xnat_flows.testing.synth import write_studies
    from xnat_flows.transfer import scan

    work = Path(tempfile.mkdtemp(prefix="bench-scan-"))
    try:
        write_studies(work, series=10, instances=args.files, instance_kb=args.instance_kb, seed=1)

        def pydicom_scan() -> int:
            found = 0
            for path, st in scan._walk(work, []):
                found += isinstance(scan.read_header(path, work, st), scan.DicomFile)
            return found

        cases = {
            "full (walker)": lambda: len(scan.scan_directory(work).files),
            "file-meta": lambda: len(scan.scan_directory(work, headers="file-meta").files),
            "pydicom per file": pydicom_scan,
        }
        for case in cases.values():  # warm the page cache and the imports
            case()
        rates: dict[str, list[float]] = {name: [] for name in cases}
        print(
            f"{args.files} files x {args.instance_kb} KB, warm; {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
        )
        for round_index in range(args.rounds):
            for name, case in cases.items():
                started = time.perf_counter()
                found = case()
                rates[name].append(found / (time.perf_counter() - started))
            print(
                f"round {round_index + 1}: "
                + ", ".join(f"{name} {rates[name][-1]:,.0f}/s" for name in cases)
                + f"; full / pydicom {rates['full (walker)'][-1] / rates['pydicom per file'][-1]:.1f}x",
                flush=True,
            )
        print("median files/s: " + ", ".join(f"{name} {statistics.median(r):,.0f}" for name, r in rates.items()))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
