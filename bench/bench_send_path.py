"""Client CPU per gradual-DICOM request, the figure the lean send path exists for. Prints figures; asserts nothing.

    .venv/bin/python bench/bench_send_path.py [--requests 400] [--instances 1000] [--workers 4] [--rounds 3]

Against the XNAT emulator in a process of its own (so the CPU measured is the client's alone):

* ``sequential``: ``--requests`` gradual-DICOM POSTs of one 256 KB instance, one after another,
  through ``XnatClient.request(..., lean=True)``; client CPU (user + sys) per request;
* ``gradual``: ``upload_gradual`` of ``--instances`` instances with ``--workers`` workers; files/s
  and client CPU per instance.

Each round runs in a fresh interpreter. To compare two trees on the same machine load, run this
script alternately with ``PYTHONPATH=<other tree>`` (the interpreter imports xnat_flows from there).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import PASSWORD, PROJECT, PYTHON, REPO, Emulator


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_case(case: dict) -> dict:
    from pydantic import SecretStr

    from xnat_flows.client import Credentials, XnatClient
    from xnat_flows.transfer.scan import read_exactly, scan_directory
    from xnat_flows.transfer.target import UploadTarget
    from xnat_flows.transfer.upload import upload_gradual

    files = scan_directory(Path(case["source"])).files
    target = UploadTarget(PROJECT, "SUBJ", case["label"], direct_archive=True)
    creds = Credentials(url=case["url"], username="admin", password=SecretStr(PASSWORD))
    with XnatClient(creds, token_cache=None) as client:
        client.login()
        if case["kind"] == "sequential":
            item = files[0]
            body = b"".join(read_exactly(item))
            params = target.gradual_params()
            headers = {"Content-Type": "application/dicom", "Content-Length": str(len(body))}
            cpu, started = _cpu(), time.perf_counter()
            for _ in range(case["requests"]):
                client.request("POST", "/data/services/import", params=params, content=body, headers=headers, lean=True)
            return {"cpu": _cpu() - cpu, "seconds": time.perf_counter() - started, "count": case["requests"]}
        cpu, started = _cpu(), time.perf_counter()
        result = upload_gradual(client, files, target, workers=case["workers"])
        assert result.ok, result.failures[:3]
        return {"cpu": _cpu() - cpu, "seconds": time.perf_counter() - started, "count": len(files)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scratch", default=str(REPO / ".bench-data"))
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return

    from xnat_flows.testing.synth import write_studies

    Path(args.scratch).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        source = Path(tmp) / "study"
        write_studies(source, studies=1, series=4, instances=args.instances, instance_kb=256, seed=7)
        figures: dict[str, list[dict]] = {"sequential": [], "gradual": []}
        for round_ in range(args.rounds):
            emulator = Emulator(Path(tmp) / f"xnat{round_}")
            try:
                for kind in figures:
                    case = {
                        "kind": kind,
                        "source": str(source),
                        "url": emulator.url,
                        "label": f"{kind.upper()}_{round_}",
                        "requests": args.requests,
                        "workers": args.workers,
                    }
                    out = subprocess.run(
                        [PYTHON, __file__, "--case", json.dumps(case)], capture_output=True, text=True, check=False
                    )
                    if out.returncode != 0:
                        raise RuntimeError(f"case {case} failed:\n{out.stderr[-3000:]}")
                    figures[kind].append(json.loads(out.stdout.strip().splitlines()[-1]))
            finally:
                emulator.close()
    import xnat_flows

    print(f"xnat_flows from {Path(xnat_flows.__file__).parent}")
    for kind, runs in figures.items():
        per = [1000 * r["cpu"] / r["count"] for r in runs]
        rate = [r["count"] / r["seconds"] for r in runs]
        print(
            f"{kind:10s} client CPU per request {', '.join(f'{p:.3f}' for p in per)} ms "
            f"(median {statistics.median(per):.3f}); requests/s {', '.join(f'{r:.0f}' for r in rate)}"
        )


if __name__ == "__main__":
    main()
