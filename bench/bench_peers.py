"""Our CLI against a peer CLI, end to end, as users run them. Prints figures; asserts nothing.

    .venv/bin/python bench/bench_peers.py --xnatctl /path/to/venv/bin/xnatctl [--instances 2000]
        [--instance-kb 256] [--workers 4] [--rounds 3] [--modes tar,gradual]
    .venv/bin/python bench/bench_peers.py --formats tar,tgz [--latency-ms 20 --link-mbit 100]

The peer is xnatctl 0.6.0 (the seed guide's CLI; ``pip install "xnatctl[dicom]==0.6.0"`` into a
separate venv: a benchmark peer, never a dependency). Each run is a fresh process of the tool
(start-up, scan, upload; ours also verifies, as by default) against a fresh emulator
(``xnat-flows emulator serve`` in its own process), and is timed from the command's start until
every instance is in the archive (polled through the REST API, as any client would): *time to
archived*. Client CPU is the tool process's user+sys time (``os.wait4``).

Rounds are interleaved (ours, peer; the order alternates per round) and the ratio is taken
within each round, because other jobs share this machine.

``--formats`` compares our own DICOM-zip formats (e.g. tar against tgz) the same way; with
``--link-mbit`` (and ``--latency-ms``) the client reaches the emulator through a throttling TCP
proxy started here, which caps the bandwidth shared by all connections and delays each chunk
by the latency, in both directions.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import PASSWORD, PROJECT, REPO, Emulator, our_upload_command


class ThrottlingProxy:
    """A TCP proxy capping the bandwidth shared by all connections (each direction) and adding
    ``latency_ms`` to every chunk: a slow link between the client and the emulator."""

    def __init__(self, target_port: int, mbit: float, latency_ms: float) -> None:
        self.target_port = target_port
        self.bytes_per_second = mbit * 1e6 / 8
        self.latency = latency_ms / 1000
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = {"up": threading.Lock(), "down": threading.Lock()}
        self._next_free = {"up": 0.0, "down": 0.0}
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pump, args=(client, upstream, "up"), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, "down"), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, direction: str) -> None:
        """Read chunks, give each its arrival time on the shared link (serialisation + latency),
        and hand them to a writer that delivers them then: a pipelined delay line, so latency
        does not cut a connection's throughput."""
        line: queue.Queue[tuple[float, bytes] | None] = queue.Queue()

        def deliver() -> None:
            try:
                while (item := line.get()) is not None:
                    due, chunk = item
                    time.sleep(max(0.0, due - time.monotonic()))
                    sink.sendall(chunk)
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)

        writer = threading.Thread(target=deliver, daemon=True)
        writer.start()
        try:
            while chunk := source.recv(65536):
                with self._lock[direction]:  # one shared link per direction: reserve its time slot
                    start = max(time.monotonic(), self._next_free[direction])
                    self._next_free[direction] = start + len(chunk) / self.bytes_per_second
                    due = self._next_free[direction] + self.latency
                line.put((due, chunk))
        except OSError:
            pass
        finally:
            line.put(None)

    def close(self) -> None:
        self.server.close()


def run_tool(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int, str]:
    """Wall seconds, CPU seconds (user+sys) of the process, exit code, output tail."""
    started = time.perf_counter()
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = bytearray()
    reader = threading.Thread(target=lambda: output.extend(process.stdout.read()), daemon=True)
    reader.start()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    reader.join()
    return (
        time.perf_counter() - started,
        usage.ru_utime + usage.ru_stime,
        process.returncode,
        output.decode(errors="replace")[-1500:],
    )


def one_run(tool: str, mode: str, source: Path, count: int, work: Path, args: argparse.Namespace, label: str) -> dict:
    emulator = Emulator(work / f"xnat-{label}", idle_seconds=args.idle_seconds)
    proxy = ThrottlingProxy(emulator.port, args.link_mbit, args.latency_ms) if args.link_mbit else None
    url = proxy.url if proxy else emulator.url
    home = work / f"home-{label}"
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),
        "XNAT_FLOWS_HOME": str(home / "xnat-flows"),
        "XNAT_URL": url,
        "XNAT_USER": "admin",
        "XNAT_PASS": PASSWORD,
        "NO_COLOR": "1",
        "TERM": "dumb",
    }
    if tool == "ours":
        cmd = our_upload_command(source, label, url, mode, args.workers)
    else:
        cmd = [
            args.xnatctl,
            "session",
            "upload",
            str(source),
            "-P",
            PROJECT,
            "-S",
            "SUBJ",
            "-E",
            label,
            "--mode",
            mode,
            "-w",
            str(args.workers),
        ]
    try:
        started = time.perf_counter()
        wall, cpu, code, tail = run_tool(cmd, env)
        deadline = time.monotonic() + 600
        while (archived := emulator.archived_files(label)) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        to_archived = time.perf_counter() - started
    finally:
        if proxy:
            proxy.close()
        emulator.close()
        shutil.rmtree(home, ignore_errors=True)
    if code != 0 or archived < count:
        print(f"  ! {tool} {mode}: exit {code}, {archived}/{count} archived\n{tail}", flush=True)
    return {
        "tool": tool,
        "mode": mode,
        "seconds": to_archived,
        "process_seconds": wall,
        "cpu": cpu,
        "exit": code,
        "archived": archived,
    }


def compare(
    pairs: list[tuple[str, str]], names: tuple[str, str], source: Path, count: int, work: Path, args: argparse.Namespace
) -> None:
    """Interleaved rounds of (tool, mode) pairs; prints each run and the per-round ratios."""
    counter = iter(range(10**6))
    ratios: dict[str, list[tuple[float, float]]] = {}
    for round_index in range(args.rounds):
        for first, second in pairs:
            order = [first, second] if round_index % 2 == 0 else [second, first]
            results = {}
            for tool, mode in (spec.split(":") for spec in order):
                result = one_run(tool, mode, source, count, work, args, f"R{next(counter)}")
                results[f"{tool}:{mode}"] = result
                print(
                    f"round {round_index + 1} {tool:8} {mode:8} to archived {result['seconds']:7.2f} s "
                    f"(process {result['process_seconds']:6.2f} s)  client CPU {result['cpu']:6.2f} s  "
                    f"exit {result['exit']}  archived {result['archived']}",
                    flush=True,
                )
            a, b = results[first], results[second]
            key = f"{first} / {second}"
            ratios.setdefault(key, []).append((a["seconds"] / b["seconds"], a["cpu"] / b["cpu"]))
            print(
                f"round {round_index + 1} {key}: time {a['seconds'] / b['seconds']:.2f}x, CPU {a['cpu'] / b['cpu']:.2f}x",
                flush=True,
            )
    print(f"\nsummary ({names[0]} / {names[1]}), per-round ratios and their median:")
    for key, values in ratios.items():
        times = [t for t, _ in values]
        cpus = [c for _, c in values]
        print(
            f"  {key:28} time {', '.join(f'{t:.2f}' for t in times)} (median {statistics.median(times):.2f}x); "
            f"CPU {', '.join(f'{c:.2f}' for c in cpus)} (median {statistics.median(cpus):.2f}x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--xnatctl", default=shutil.which("xnatctl"), help="the peer's executable")
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--instance-kb", type=int, default=256)
    parser.add_argument("--pixels", choices=["phantom", "random"], default="phantom")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default="tar,gradual", help="peer comparison: tar, zip, gradual")
    parser.add_argument("--formats", help="compare our own formats instead, e.g. tar,tgz")
    parser.add_argument("--link-mbit", type=float, default=0.0, help="throttle through a proxy (0: loopback)")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=1.0,
        help="emulator's session idle time before a gradual upload is archived (same for both)",
    )
    parser.add_argument("--scratch", default=str(REPO / ".bench-data"))
    args = parser.parse_args()

    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-peers-", dir=scratch))
    try:
        from xnat_flows.testing.synth import write_studies

        source = work / "study"
        manifest = write_studies(
            source,
            studies=1,
            series=8,
            instances=args.instances,
            instance_kb=args.instance_kb,
            seed=42,
            pixels=args.pixels,
        )
        count = len(manifest.files)
        print(
            f"session: {count} instances x {args.instance_kb} KB ({manifest.total_bytes / 1e6:.0f} MB, {args.pixels} pixels); "
            f"{args.workers} workers; link: "
            + (
                f"{args.link_mbit:g} Mbit/s, {args.latency_ms:g} ms (throttling proxy)"
                if args.link_mbit
                else "loopback"
            )
            + f"; {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        if args.formats:
            first, second = args.formats.split(",")
            compare([(f"ours:{first}", f"ours:{second}")], (first, second), source, count, work, args)
        else:
            if not args.xnatctl:
                parser.error("give --xnatctl PATH (pip install 'xnatctl[dicom]==0.6.0' into a separate venv)")
            pairs = [(f"ours:{mode}", f"xnatctl:{mode}") for mode in args.modes.split(",")]
            compare(pairs, ("ours", "xnatctl"), source, count, work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
