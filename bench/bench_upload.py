"""Benchmark of the REST upload (issue: REST ingestion). Prints figures; asserts nothing.

    .venv/bin/python bench/bench_upload.py [--gb 1.0] [--instances 2000] [--grow] [--flow-overhead]

One run, on a synthetic session (default ~1 GB, 2,000 instances) against the XNAT emulator
running in its own process on loopback:

* DICOM-zip wall time for tar and zip with 1, 4 and 8 workers, next to the floor: the same
  batches pre-built as archives and sent as raw streaming POSTs with the same concurrency;
* gradual-DICOM files/s with 1, 4 and 8 workers next to a bare httpx keep-alive POST loop over
  the same files, and with the emulator's per-response latency at 25 ms, 8 workers vs 1;
* the client's peak RSS for each case (each case runs in its own process);
* with --grow: peak RSS as the session grows from 1 to 4 GB (tar, 4 workers);
* with --flow-overhead: the Prefect flow's overhead over calling the library directly, measured
  against a real ``prefect server start`` on loopback.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import PASSWORD, PROJECT, PYTHON, REPO, Emulator, free_port

# -- helpers shared by the parent and the per-case child processes --------------------------------


def run_case(case: dict) -> dict:
    """Run one case in a fresh interpreter; returns its figures plus its peak RSS."""
    out = subprocess.run([PYTHON, __file__, "--case", json.dumps(case)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"case {case} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- the cases (run inside the child process) ------------------------------------------------------


def _client(url: str):
    from pydantic import SecretStr

    from xnat_flows.client import Credentials, XnatClient

    return XnatClient(Credentials(url=url, username="admin", password=SecretStr(PASSWORD)), token_cache=None)


def _scan(source: str):
    from xnat_flows.transfer.scan import scan_directory

    return scan_directory(Path(source))


def case_dicom_zip(case: dict) -> dict:
    from xnat_flows.transfer.session import upload_batches
    from xnat_flows.transfer.target import UploadTarget

    files = _scan(case["source"]).files
    target = UploadTarget(PROJECT, "SUBJ", case["label"], direct_archive=True)
    with _client(case["url"]) as client:
        client.login()
        started = time.perf_counter()
        results = upload_batches(client, files, target, workers=case["workers"], fmt=case["fmt"])
        seconds = time.perf_counter() - started
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    return {"seconds": seconds, "bytes": sum(f.size for f in files), "files": len(files)}


def case_dicom_zip_floor(case: dict) -> dict:
    """The same batches, archived beforehand, POSTed as raw streams with the same concurrency."""
    import httpx

    from xnat_flows.transfer.archive_stream import content_type_for, iter_archive
    from xnat_flows.transfer.partition import partition_by_bytes
    from xnat_flows.transfer.target import UploadTarget

    files = _scan(case["source"]).files
    batches = partition_by_bytes(files, case["workers"])
    tmp = Path(tempfile.mkdtemp(prefix="floor-", dir=case["scratch"]))
    archives = []
    for index, batch in enumerate(batches):
        path = tmp / f"batch{index}.{case['fmt']}"
        with open(path, "wb") as out:
            for chunk in iter_archive(batch, case["fmt"]):
                out.write(chunk)
        archives.append(path)
    params = UploadTarget(PROJECT, "SUBJ", case["label"], direct_archive=True).dicom_zip_params()
    headers = {"Content-Type": content_type_for(case["fmt"])}

    def post(path: Path) -> None:
        with httpx.Client(timeout=None, auth=("admin", PASSWORD)) as http, open(path, "rb") as body:
            response = http.post(
                f"{case['url']}/data/services/import", params=params, content=_stream(body), headers=headers
            )
            response.raise_for_status()

    started = time.perf_counter()
    with ThreadPoolExecutor(len(archives)) as pool:
        list(pool.map(post, archives))
    seconds = time.perf_counter() - started
    shutil.rmtree(tmp)
    return {"seconds": seconds, "bytes": sum(f.size for f in files), "files": len(files)}


def _stream(body, chunk: int = 1 << 20):
    while data := body.read(chunk):
        yield data


def case_gradual(case: dict) -> dict:
    from xnat_flows.transfer.target import UploadTarget
    from xnat_flows.transfer.upload import upload_gradual

    files = _scan(case["source"]).files[: case["limit"]]
    target = UploadTarget(PROJECT, "SUBJ", case["label"], direct_archive=True)
    with _client(case["url"]) as client:
        client.login()
        started = time.perf_counter()
        result = upload_gradual(client, files, target, workers=case["workers"])
        seconds = time.perf_counter() - started
    assert result.ok, result.failures[:3]
    return {"seconds": seconds, "files": len(files), "bytes": sum(f.size for f in files)}


def case_gradual_floor(case: dict) -> dict:
    """A bare httpx keep-alive POST loop: one client per thread, files split round-robin."""
    import httpx

    from xnat_flows.transfer.target import UploadTarget

    files = _scan(case["source"]).files[: case["limit"]]
    params = UploadTarget(PROJECT, "SUBJ", case["label"], direct_archive=True).gradual_params()
    token = httpx.post(f"{case['url']}/data/JSESSION", auth=("admin", PASSWORD)).text.strip()
    workers = case["workers"]

    def loop(worker: int) -> None:
        with httpx.Client(
            timeout=None, headers={"Cookie": f"JSESSIONID={token}", "Content-Type": "application/dicom"}
        ) as http:
            for item in files[worker::workers]:
                http.post(
                    f"{case['url']}/data/services/import", params=params, content=item.path.read_bytes()
                ).raise_for_status()

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(loop, range(workers)))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "files": len(files), "bytes": sum(f.size for f in files)}


CASES = {
    "dicom_zip": case_dicom_zip,
    "dicom_zip_floor": case_dicom_zip_floor,
    "gradual": case_gradual,
    "gradual_floor": case_gradual_floor,
}


# -- the parent: data, emulator, table --------------------------------------------------------------


def make_study(directory: Path, gb: float, instances: int) -> tuple[int, int]:
    from xnat_flows.testing.synth import write_studies

    instance_kb = max(1, int(gb * 1024 * 1024 / instances))
    manifest = write_studies(directory, studies=1, series=8, instances=instances, instance_kb=instance_kb, seed=42)
    return len(manifest.files), manifest.total_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--gradual-limit", type=int, default=2000, help="instances per gradual case")
    parser.add_argument("--latency-limit", type=int, default=400, help="instances per 25 ms-latency case")
    parser.add_argument("--workers", default="1,4,8")
    parser.add_argument("--grow", action="store_true", help="also measure RSS at 1, 2 and 4 GB")
    parser.add_argument("--flow-overhead", action="store_true", help="also measure the Prefect flow overhead")
    parser.add_argument("--flow-overhead-only", action="store_true", help="measure only the Prefect flow overhead")
    parser.add_argument("--scratch", default=str(REPO / ".bench-data"))
    args = parser.parse_args()

    if args.case:
        case = json.loads(args.case)
        figures = CASES[case["kind"]](case)
        figures["peak_rss_mb"] = round(peak_rss_mb(), 1)
        print(json.dumps(figures))
        return

    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-upload-", dir=scratch))
    workers_list = [int(w) for w in args.workers.split(",")]
    if args.flow_overhead_only:
        try:
            flow_overhead(work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    try:
        source = work / "study"
        started = time.perf_counter()
        count, total = make_study(source, args.gb, args.instances)
        print(
            f"synthetic session: {count} instances, {total / 1e6:.0f} MB (written in {time.perf_counter() - started:.1f} s)"
        )
        print(f"machine: {os.cpu_count()} cores; client and emulator in separate processes on loopback\n")

        label_counter = iter(range(10**6))

        def run(kind: str, url: str, **extra) -> dict:
            case = {
                "kind": kind,
                "url": url,
                "source": str(source),
                "scratch": str(work),
                "label": f"S{next(label_counter)}",
                **extra,
            }
            return run_case(case)

        emulator = Emulator(work / "xnat")
        try:
            print("DICOM-zip (Direct-Archive), wall time")
            print(
                f"{'format':6} {'workers':>7} {'ours s':>8} {'floor s':>8} {'ratio':>6} {'MB/s':>7} {'peak RSS MB':>12}"
            )
            for fmt in ("tar", "zip"):
                for workers in workers_list:
                    ours = run("dicom_zip", emulator.url, fmt=fmt, workers=workers)
                    floor = run("dicom_zip_floor", emulator.url, fmt=fmt, workers=workers)
                    print(
                        f"{fmt:6} {workers:7d} {ours['seconds']:8.2f} {floor['seconds']:8.2f} "
                        f"{ours['seconds'] / floor['seconds']:6.2f} {ours['bytes'] / 1e6 / ours['seconds']:7.0f} "
                        f"{ours['peak_rss_mb']:12.0f}"
                    )

            print("\ngradual-DICOM, files/s")
            print(f"{'workers':>7} {'ours':>8} {'bare loop':>10} {'ratio':>6} {'peak RSS MB':>12}")
            for workers in workers_list:
                ours = run("gradual", emulator.url, workers=workers, limit=args.gradual_limit)
                floor = run("gradual_floor", emulator.url, workers=workers, limit=args.gradual_limit)
                print(
                    f"{workers:7d} {ours['files'] / ours['seconds']:8.0f} {floor['files'] / floor['seconds']:10.0f} "
                    f"{(ours['files'] / ours['seconds']) / (floor['files'] / floor['seconds']):6.2f} {ours['peak_rss_mb']:12.0f}"
                )
        finally:
            emulator.close()

        slow = Emulator(work / "xnat-latency", latency_ms=25)
        try:
            print("\ngradual-DICOM with 25 ms per response")
            rates = {}
            for workers in (1, 8):
                ours = run("gradual", slow.url, workers=workers, limit=args.latency_limit)
                rates[workers] = ours["files"] / ours["seconds"]
                print(f"{workers:7d} workers: {rates[workers]:7.1f} files/s")
            print(f"speed-up 8 vs 1: {rates[8] / rates[1]:.1f}x")
        finally:
            slow.close()

        if args.grow:
            print("\npeak client RSS as the session grows (DICOM-zip tar, 4 workers)")
            for gb in (1, 2, 4):
                grown = work / f"grow{gb}"
                make_study(grown, gb, args.instances * gb)
                emulator = Emulator(work / f"xnat-grow{gb}")
                try:
                    ours = run_case(
                        {
                            "kind": "dicom_zip",
                            "url": emulator.url,
                            "source": str(grown),
                            "fmt": "tar",
                            "workers": 4,
                            "label": f"G{gb}",
                            "scratch": str(work),
                        }
                    )
                finally:
                    emulator.close()
                shutil.rmtree(grown)
                shutil.rmtree(work / f"xnat-grow{gb}", ignore_errors=True)
                print(f"{gb} GB: {ours['seconds']:.1f} s, peak RSS {ours['peak_rss_mb']:.0f} MB")

        if args.flow_overhead:
            flow_overhead(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def flow_overhead(work: Path) -> None:
    """Median wall time of the flow minus the library, on the same small session, over a real server."""
    import httpx

    port = free_port()
    home = work / "prefect-home"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    server = subprocess.Popen(
        [str(Path(PYTHON).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{port}/api"
    try:
        for _ in range(240):
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        small = work / "small"
        from xnat_flows.testing.synth import write_studies

        write_studies(small, studies=1, series=4, instances=200, instance_kb=64, seed=9)
        emulator = Emulator(work / "xnat-flow")
        try:
            script = (
                "import sys, time, os\n"
                "from xnat_flows.flows.upload import upload_dicom_session\n"
                "from xnat_flows.models import UploadRequest, XnatConnection\n"
                "from xnat_flows.transfer.session import upload_session\n"
                "from xnat_flows.transfer.target import UploadTarget\n"
                "from xnat_flows.client import XnatClient\n"
                "from xnat_flows.tasks.connection import credentials_for\n"
                "url, source = sys.argv[1], sys.argv[2]\n"
                "conn = XnatConnection(url=url, username='admin')\n"
                "flow_times, lib_times = [], []\n"
                "upload_dicom_session(UploadRequest(source_dir=source, project='BENCH', subject='W', session='WARM', verify=False), conn)\n"
                "for n in range(3):\n"
                "    t = time.perf_counter(); upload_dicom_session(UploadRequest(source_dir=source, project='BENCH', subject='F', session=f'F{n}', verify=False), conn); flow_times.append(time.perf_counter() - t)\n"
                "    t = time.perf_counter()\n"
                "    with XnatClient(credentials_for(conn)) as c: upload_session(c, source, UploadTarget('BENCH', 'L', f'L{n}'), verify=False)\n"
                "    lib_times.append(time.perf_counter() - t)\n"
                "print(flow_times, lib_times)\n"
            )
            env_flow = {**env, "PREFECT_API_URL": api, "XNAT_PASS": PASSWORD, "XNAT_FLOWS_HOME": str(work / "profile")}
            out = subprocess.run(
                [PYTHON, "-c", script, emulator.url, str(small)],
                env=env_flow,
                capture_output=True,
                text=True,
                check=True,
            )
            flow_times, lib_times = json.loads("[" + out.stdout.strip().splitlines()[-1].replace("] [", "],[") + "]")
            overhead = statistics.median(flow_times) - statistics.median(lib_times)
            print("\nPrefect flow overhead (200 instances, 4 workers, real Prefect server, warm process)")
            print(f"flow runs   (s): {', '.join(f'{t:.2f}' for t in flow_times)}")
            print(f"library     (s): {', '.join(f'{t:.2f}' for t in lib_times)}")
            print(f"overhead per run: {overhead:.2f} s (median flow - median library)")
        finally:
            emulator.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
