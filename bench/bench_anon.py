"""De-identification engine speed, side by side with pydicom-based anonymizers. Prints figures;
asserts nothing.

    .venv/bin/python bench/bench_anon.py [--files 2000] [--instance-kb 64] [--workers 2] [--rounds 3] [--peer-files 400]

Each contender turns the bytes of a DICOM file into the bytes of its de-identified copy, on files
already in memory (so the disk is not measured), in ``--workers`` processes sharing the files:

* ``xnat_flows`` with a 20-line DicomEdit 6 script, XNAT's 3-line default site script, and the
  DICOM Basic Profile (``xnat_flows.anon``: header rewritten from the original bytes);
* pydicom-based peers from PyPI on the same files: ``dicognito`` and ``dicom-anonymizer`` (read
  with ``dcmread``, anonymize the Dataset, write with ``save_as``), and pydicom's read + write
  alone, the floor for any tool built that way (on the first ``--peer-files`` files: they are
  20-60x slower, and per-file figures do not need more). dicognito is not a project dependency:
  ``pip install dicognito`` to include it.

Two corpora: the synthetic MR series of ``xnat_flows.testing.synth`` (~55 header elements) and
pydicom's ``CT_small.dcm`` repeated (a scanner header: 256 elements, private groups included).
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

SCRIPT_20_LINES = """version "6.1"
// site script: identifiers XNAT routes on, then what a PACS export carries
project != "Unassigned" ? (0008,1030) := project
(0010,0010) := subject
(0010,0020) := session
-(0010,0030)
-(0010,1000)
-(0010,1040)
-(0010,2154)
-(0008,0050)
-(0008,0080)
-(0008,0081)
-(0008,0090)
-(0008,1010)
-(0008,1048)
-(0008,1070)
(0020,000D) := hashUID[(0020,000D)]
(0020,000E) := hashUID[(0020,000E)]
(0008,0018) := hashUID[(0008,0018)]
(0008,103E) ~ ".*[Ll]ocalizer.*" ? (0008,103E) := "LOCALIZER"
(0012,0063) := format["XNAT {0} site script v1", project]
removeAllPrivateTags
"""
DEFAULT_SCRIPT = """version "6.1"
project != "Unassigned" ? (0008,1030) := project
(0010,0010) := subject
(0010,0020) := session
"""
VARIABLES = {"project": "BENCH", "subject": "SUBJ01", "session": "SUBJ01_MR1"}

_FILES: list[bytes] = []  # filled before the pool forks: the workers share it


def _contenders() -> dict[str, Callable[[bytes], bytes]]:
    import pydicom

    from xnat_flows.anon import basic_profile, compile_script

    script = compile_script(SCRIPT_20_LINES)
    default = compile_script(DEFAULT_SCRIPT)
    profile = basic_profile()

    def pydicom_round_trip(data: bytes) -> bytes:
        ds = pydicom.dcmread(io.BytesIO(data))
        out = io.BytesIO()
        ds.save_as(out)
        return out.getvalue()

    contenders: dict[str, Callable[[bytes], bytes]] = {
        "xnat_flows, 20-line DicomEdit script": lambda data: script.apply_bytes(data, VARIABLES),
        "xnat_flows, XNAT default site script": lambda data: default.apply_bytes(data, VARIABLES),
        "xnat_flows, Basic Profile": profile.apply_bytes,
        "pydicom dcmread + save_as only": pydicom_round_trip,
    }

    def via_pydicom(anonymize: Callable[[pydicom.Dataset], object]) -> Callable[[bytes], bytes]:
        def run(data: bytes) -> bytes:
            ds = pydicom.dcmread(io.BytesIO(data))
            anonymize(ds)
            out = io.BytesIO()
            ds.save_as(out)
            return out.getvalue()

        return run

    try:
        from dicomanonymizer import anonymize_dataset

        contenders["dicom-anonymizer (pydicom), Basic Profile"] = via_pydicom(anonymize_dataset)
    except ImportError:
        print("dicom-anonymizer not installed: skipped")
    try:
        import dicognito.anonymizer

        contenders["dicognito (pydicom)"] = via_pydicom(dicognito.anonymizer.Anonymizer(seed="bench").anonymize)
    except ImportError:
        print("dicognito not installed (pip install dicognito): skipped")
    return contenders


def _work(task: tuple[str, int, int, int]) -> tuple[float, int]:
    """Run one contender over a share of the first ``count`` files; (CPU seconds, files done)."""
    name, start, step, count = task
    warnings.simplefilter("ignore")
    function = _contenders_cache()[name]
    started = time.process_time()
    done = 0
    for data in _FILES[start:count:step]:
        function(data)
        done += 1
    return time.process_time() - started, done


_CACHE: dict[str, Callable[[bytes], bytes]] = {}


def _contenders_cache() -> dict[str, Callable[[bytes], bytes]]:
    if not _CACHE:
        _CACHE.update(_contenders())
    return _CACHE


def _measure(pool: multiprocessing.pool.Pool, name: str, workers: int, count: int) -> tuple[float, float]:
    """(files per second of wall time, CPU microseconds per file) with ``workers`` processes."""
    started = time.perf_counter()
    results = pool.map(_work, [(name, index, workers, count) for index in range(workers)])
    wall = time.perf_counter() - started
    cpu = sum(r[0] for r in results)
    files = sum(r[1] for r in results)
    return files / wall, cpu / files * 1e6


def _corpus(kind: str, files: int, instance_kb: int, work: Path) -> list[bytes]:
    if kind == "synthetic MR":
        from xnat_flows.testing.synth import write_studies

        manifest = write_studies(work, series=4, instances=files, instance_kb=instance_kb, seed=7)
        return [item.path.read_bytes() for item in manifest.files]
    from pydicom.data import get_testdata_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = Path(str(get_testdata_file("CT_small.dcm"))).read_bytes()
    return [data] * files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--instance-kb", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--peer-files",
        type=int,
        default=400,
        help="files the pydicom-based contenders process (they are 20-60x slower)",
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    print(f"cores: {os.cpu_count()}, workers: {args.workers}, load average before: {os.getloadavg()}")
    print("CPU us/file is the CPU the workers used per file; files/s is wall time, which a loaded machine lowers")
    work = Path(tempfile.mkdtemp(prefix="bench-anon-"))
    try:
        for kind in ("synthetic MR", "CT_small.dcm"):
            _FILES[:] = _corpus(kind, args.files, args.instance_kb, work / kind.split()[0])
            sample = _FILES[0]
            names = list(_contenders_cache())
            print(
                f"\n{kind}: {len(_FILES)} files of {len(sample) // 1024} KiB ({min(args.peer_files, len(_FILES))} for the "
                f"pydicom-based contenders), {args.rounds} interleaved rounds"
            )
            figures: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(args.workers) as pool:
                pool.map(_work, [(names[0], 0, len(_FILES), len(_FILES))] * args.workers)  # warm the imports
                for _ in range(args.rounds):
                    for name in names:
                        count = len(_FILES) if name.startswith("xnat_flows") else min(args.peer_files, len(_FILES))
                        figures[name].append(_measure(pool, name, args.workers, count))
            width = max(len(name) for name in names)
            print(f"  {'contender':<{width}}  {'files/s':>9}  {'CPU us/file':>11}")
            for name in names:
                rate = statistics.median(r for r, _ in figures[name])
                cpu = statistics.median(c for _, c in figures[name])
                print(f"  {name:<{width}}  {rate:9.0f}  {cpu:11.0f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
