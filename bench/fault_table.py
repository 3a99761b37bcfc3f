"""Run the reliability fault catalogue and print its table (Markdown) for docs/reliability.md.

    .venv/bin/python bench/fault_table.py [--only dicom-zip|gradual-dicom|c-store] [--case ID]

Each fault is tried on each transport: run 1 with the fault injected into the emulator (or its
DICOM receiver), then, if run 1 stopped, a clean re-run with the same resume journal. The
columns count what is in XNAT's archive afterwards, read back file by file. The same catalogue
is asserted by tests/reliability/test_faults.py.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "reliability"))

from reliability_catalogue import CATALOGUE, ensure_private_profile, format_table, run_case


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["dicom-zip", "gradual-dicom", "c-store"])
    parser.add_argument("--case", help="run only cases with this id (e.g. drop, evict8)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    cases = [c for c in CATALOGUE if (args.only in (None, c.transport)) and (args.case in (None, c.id))]
    rows = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fault-table-") as tmp:
        for n, case in enumerate(cases):
            ensure_private_profile(Path(tmp) / f"profile-{n}")
            result = run_case(case, Path(tmp) / f"case-{n}")
            row = result.row()
            if case.known_bug:
                row["verdict"] += " (known bug)"
            rows.append(row)
            print(f"{case.transport:14} {case.id:14} {row['verdict']}", file=sys.stderr)
    print(format_table(rows))
    print(
        f"\n{len(rows)} cases in {time.monotonic() - started:.0f} s; {sum(r['verdict'] == 'ok' for r in rows)} ok",
        file=sys.stderr,
    )
    return 0 if all(r["verdict"].startswith("ok") or "known bug" in r["verdict"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
