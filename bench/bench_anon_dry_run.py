"""The de-identified upload's dry run, and the engine alone, in one process. Prints figures; asserts nothing.

    .venv/bin/python bench/bench_anon_dry_run.py [--instances 2000] [--kb 256] [--rounds 7]

On the synthetic session of ``bench_anon_upload.py`` (same seed, same 20-line ``SCRIPT``), process
CPU time per file:

* ``engine``: ``Anonymizer.rewrite_head_reading`` over every file's first 16 KB, already in memory
  (parse the header to the script's last tag, run the statements, encode; the disk not measured);
* ``dry run``: ``transfer.deidentify.deidentify_files`` over the scanned files (what an upload does
  before its first request: read each file's first bytes, the engine, the rewritten UIDs, the
  entries to send).

* ``check`` (``--check``): ``anon.check.check_files`` over the session, what ``anon check`` and the
  gate of ``--anon-require-clean`` take (each file read whole and rewritten, both headers read by
  pydicom, compared); at most 3 rounds.

Minimum and median of ``--rounds`` rounds (the minimum is the least disturbed by a shared machine).
To compare with another revision, run it with ``PYTHONPATH`` naming that revision's tree, from a
directory outside this one (``git archive REV xnat_flows | tar -x -C DIR``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_anon_upload import SCRIPT
from bench_common import PROJECT, REPO


def _figures(label: str, per_file: list[float]) -> None:
    print(f"{label:10} min {min(per_file):7.1f} us/file   median {statistics.median(per_file):7.1f} us/file")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--kb", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--check",
        action="store_true",
        help="also time anon check over the session (what --anon-require-clean adds before sending)",
    )
    parser.add_argument("--scratch", default=str(REPO / ".bench-data"))
    args = parser.parse_args()

    import xnat_flows
    from xnat_flows.anon import compile_script
    from xnat_flows.testing.synth import write_studies
    from xnat_flows.transfer.deidentify import deidentify_files
    from xnat_flows.transfer.part10 import SERIES_KEY_TAGS
    from xnat_flows.transfer.scan import scan_directory

    print(f"xnat_flows from {Path(xnat_flows.__file__).parent}")
    print(f"machine: {os.cpu_count()} cores, load average before: {os.getloadavg()}")
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-anon-dry-", dir=scratch))
    try:
        write_studies(work / "study", series=8, instances=args.instances, instance_kb=args.kb, seed=23, pixels="random")
        files = scan_directory(work / "study").files
        anonymizer = compile_script(SCRIPT, source="bench.das")
        variables = {"project": PROJECT, "subject": "SUBJ", "session": "B0"}
        prefixes = []
        for item in files:
            with open(item.path, "rb") as handle:
                prefixes.append((handle.read(16384), item.size))
        engine: list[float] = []
        dry_run: list[float] = []
        for _ in range(args.rounds + 1):  # the first round of each warms up, and is left out
            started = time.process_time()
            for prefix, size in prefixes:
                anonymizer.rewrite_head_reading(prefix, size, variables, SERIES_KEY_TAGS)
            engine.append((time.process_time() - started) / len(prefixes) * 1e6)
            started = time.process_time()
            deidentify_files(files, anonymizer, variables)
            dry_run.append((time.process_time() - started) / len(files) * 1e6)
        check: list[float] = []
        if args.check:
            from xnat_flows.anon.check import check_files

            named = [(item.relpath, item.path) for item in files]
            for _ in range(min(args.rounds, 3) + 1):
                started = time.process_time()
                check_files(anonymizer, named, variables)
                check.append((time.process_time() - started) / len(files) * 1e6)
        print(f"{len(files)} files of {args.kb} KB, {args.rounds} rounds, process CPU:")
        _figures("engine", engine[1:])
        _figures("dry run", dry_run[1:])
        if check:
            _figures("check", check[1:])
        print(f"load average after: {os.getloadavg()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
