"""Synthetic-study writer: speed and how its pixel data compresses. Prints figures; asserts nothing.

    .venv/bin/python bench/bench_synth.py [--instances 2000] [--instance-kb 256] [--rounds 3]

Per round and pixel kind: ``write_studies`` wall and CPU time (files written to a temp dir, so
the page cache absorbs them), and zlib level 1's ratio over the pixel data of every tenth
instance (what ``--archive-format tgz`` would gain on such data).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import zlib
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--instance-kb", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import pydicom

    from xnat_flows.testing.synth import write_studies

    walls: dict[str, list[float]] = {"phantom": [], "random": []}
    for round_number in range(1, args.rounds + 1):
        for kind in walls:
            work = Path(tempfile.mkdtemp(prefix="bench-synth-"))
            try:
                wall, cpu = time.perf_counter(), time.process_time()
                manifest = write_studies(
                    work,
                    series=4,
                    instances=args.instances,
                    instance_kb=args.instance_kb,
                    seed=round_number,
                    pixels=kind,
                )
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                pixels = b"".join(pydicom.dcmread(f.path).PixelData for f in manifest.files[::10])
                ratio = len(pixels) / len(zlib.compress(pixels, 1))
            finally:
                shutil.rmtree(work, ignore_errors=True)
            walls[kind].append(wall)
            print(
                f"round {round_number} {kind}: {args.instances} x {args.instance_kb} KB in {wall:.2f} s "
                f"({cpu:.2f} s CPU, {manifest.total_bytes / wall / 1e6:.0f} MB/s), zlib-1 ratio {ratio:.2f}x"
            )
    for kind, values in walls.items():
        print(f"{kind}: median {statistics.median(values):.2f} s")


if __name__ == "__main__":
    main()
