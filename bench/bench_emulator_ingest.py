"""Benchmark: DICOM-zip ingestion into the XNAT emulator vs. raw loopback HTTP throughput.

Writes a synthetic session (~1 GB by default), then POSTs the same bytes twice with httpx as a
tar streamed on the fly: once into a stdlib HTTP server that discards the body (the loopback
floor) and once into the emulator's ``/data/services/import`` (DICOM-zip, dest=/archive, so the
number includes parsing, placing and archiving every instance). Not a test; run it by hand:

    .venv/bin/python bench/bench_emulator_ingest.py [--mb 1024] [--instance-kb 512] [--keep DIR]
"""

from __future__ import annotations

import argparse
import copy
import shutil
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from xnat_flows.testing import XnatEmulator

CHUNK = 1024 * 1024


def write_session(out_dir: Path, total_mb: int, instance_kb: int) -> list[Path]:
    """Synthetic DICOM files: synth.write_studies when available, else CT_small padded to size."""
    instances = max(1, total_mb * 1024 // instance_kb)
    series = max(1, min(10, instances // 100))
    try:
        from xnat_flows.testing.synth import write_studies
    except ImportError:
        return _write_padded_ct(out_dir, instances, series, instance_kb)
    manifest = write_studies(out_dir, studies=1, series=series, instances=instances, instance_kb=instance_kb)
    return [Path(item.path) for item in manifest.files]


def _write_padded_ct(out_dir: Path, instances: int, series: int, instance_kb: int) -> list[Path]:
    import os

    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    study_uid = generate_uid()
    series_uids = [generate_uid() for _ in range(series)]
    pad = max(0, instance_kb * 1024 - 40 * 1024)
    paths = []
    for index in range(instances):
        ds = copy.deepcopy(template)
        ds.StudyInstanceUID = study_uid
        number = index % series
        ds.SeriesInstanceUID = series_uids[number]
        ds.SeriesNumber = number + 1
        ds.InstanceNumber = index // series + 1
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.add_new(0x00091010, "OB", os.urandom(pad))  # private padding to reach the target size
        path = out_dir / f"s{number + 1}" / f"{index:06d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def stream_tar(paths: list[Path], root: Path) -> Iterator[bytes]:
    """An uncompressed tar built on the fly, yielded in ~1 MB pieces (header + data + padding per file)."""
    pending: list[bytes] = []
    size = 0
    now = int(time.time())
    for path in paths:
        data = path.read_bytes()
        info = tarfile.TarInfo(str(path.relative_to(root)))
        info.size, info.mtime, info.mode = len(data), now, 0o644
        pending += [info.tobuf(tarfile.GNU_FORMAT), data, b"\0" * (-len(data) % tarfile.BLOCKSIZE)]
        size += len(data)
        if size >= CHUNK:
            yield b"".join(pending)
            pending, size = [], 0
    pending.append(b"\0" * (2 * tarfile.BLOCKSIZE))
    yield b"".join(pending)


class _Discard(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args) -> None:
        return

    def do_POST(self) -> None:
        from xnat_flows.testing.httpbody import RequestBody

        length = self.headers.get("Content-Length")
        chunked = "chunked" in (self.headers.get("Transfer-Encoding") or "")
        RequestBody(self.rfile, int(length) if length else 0, chunked).drain()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


def time_post(url: str, body: Iterator[bytes], **kwargs) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    with httpx.Client(timeout=None) as client:
        response = client.post(url, content=body, **kwargs)
    return time.perf_counter() - started, response


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1024, help="session size in MB")
    parser.add_argument("--instance-kb", type=int, default=512, help="size of one instance")
    parser.add_argument("--keep", type=Path, help="reuse/keep the synthetic data in this directory")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-emulator-"))
    data_dir = args.keep or work / "dicom"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        paths = sorted(p for p in data_dir.rglob("*") if p.is_file()) or write_session(
            data_dir, args.mb, args.instance_kb
        )
        total = sum(p.stat().st_size for p in paths)
        print(f"session: {len(paths)} instances, {total / 1e6:.0f} MB")

        server = ThreadingHTTPServer(("127.0.0.1", 0), _Discard)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        seconds, _ = time_post(f"http://127.0.0.1:{server.server_address[1]}/", stream_tar(paths, data_dir))
        server.shutdown()
        print(f"raw loopback (httpx tar stream -> stdlib discard): {total / 1e6 / seconds:7.0f} MB/s ({seconds:.1f} s)")

        with XnatEmulator(work / "xnat", rebuild_idle_seconds=3600) as xnat:
            params = {
                "import-handler": "DICOM-zip",
                "project": "TEST",
                "subject": "BENCH",
                "session": "BENCH",
                "dest": "/archive/projects/TEST",
                "overwrite": "delete",
                "inbody": "true",
            }
            seconds, response = time_post(
                f"{xnat.url}/data/services/import",
                stream_tar(paths, data_dir),
                params=params,
                auth=(xnat.user, xnat.password),
                headers={"Content-Type": "application/x-tar"},
            )
            assert response.status_code == 200, response.text
            archived = sum(xnat.archived_experiments("TEST")[0]["scans"].values())
            assert archived == len(paths), (archived, len(paths))
        print(
            f"emulator DICOM-zip (tar, dest=/archive):           {total / 1e6 / seconds:7.0f} MB/s "
            f"({seconds:.1f} s, {len(paths) / seconds:.0f} instances/s)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
