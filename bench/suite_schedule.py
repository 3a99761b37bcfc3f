"""The test suite's module schedule under ``--dist loadfile``, replayed from a ``--durations=0`` log.

    .venv/bin/python -m pytest -n 4 --dist loadfile --durations=0 -q > run.log
    .venv/bin/python bench/suite_schedule.py run.log [--workers 4] [--top 15]

Prints the longest modules (the sum of their tests' setup, call and teardown; the candidates for
``RUN_FIRST`` in tests/conftest.py) and the suite's wall time as pytest-xdist's loadfile scheduler
would reach it with those durations: in xdist's default order (modules with most tests first) and
in the order tests/conftest.py gives (longest first). The replay follows xdist's LoadScopeScheduling:
one module per worker to start, another once a worker has two tests or fewer left.
"""

from __future__ import annotations

import argparse
import collections
import heapq
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DURATION = re.compile(r"([\d.]+)s (?:setup|call|teardown)\s+(\S+)")


def durations(log: Path) -> dict[str, float]:
    """Seconds per test id (setup + call + teardown) from pytest's ``--durations=0`` lines."""
    found: dict[str, float] = collections.defaultdict(float)
    for line in log.read_text(errors="replace").splitlines():
        match = DURATION.match(line)
        if match:
            found[match.group(2)] += float(match.group(1))
    return found


def collected_modules() -> dict[str, list[str]]:
    """Test ids by module, in the order this checkout's conftest collects them."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    modules: dict[str, list[str]] = {}
    for line in out.splitlines():
        if "::" in line:
            modules.setdefault(line.split("::", 1)[0], []).append(line.strip())
    return modules


def replay(order: list[str], modules: dict[str, list[str]], seconds: dict[str, float], workers: int) -> list[float]:
    """Each worker's end time when modules are handed out in ``order``."""
    queue = list(order)
    pending: list[list[str]] = [[] for _ in range(workers)]

    def hand_out(worker: int) -> None:
        if queue:
            pending[worker].extend(modules[queue.pop(0)])

    for worker in range(workers):
        hand_out(worker)
    for worker in range(workers):
        if len(pending[worker]) <= 2:
            hand_out(worker)
    ends = [0.0] * workers
    running = [(seconds.get(pending[w][0], 0.0), w) for w in range(workers) if pending[w]]
    heapq.heapify(running)
    while running:
        now, worker = heapq.heappop(running)
        pending[worker].pop(0)
        if len(pending[worker]) <= 2:
            hand_out(worker)
        ends[worker] = now
        if pending[worker]:
            heapq.heappush(running, (now + seconds.get(pending[worker][0], 0.0), worker))
    return ends


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log", type=Path, help="output of a pytest run with --durations=0")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    seconds = durations(args.log)
    modules = collected_modules()
    per_module = {name: sum(seconds.get(test, 0.0) for test in tests) for name, tests in modules.items()}
    print(f"sum of test durations: {sum(seconds.values()):.0f} s over {len(seconds)} tests")
    for name, total in sorted(per_module.items(), key=lambda item: -item[1])[: args.top]:
        print(f"{total:8.1f} s  {name}")
    default = sorted(modules, key=lambda name: -len(modules[name]))  # xdist's loadscope reorder (stable)
    for label, order in (("xdist's default order", default), ("tests/conftest.py's order", list(modules))):
        ends = replay(order, modules, seconds, args.workers)
        print(f"{label}: wall {max(ends):.0f} s (workers end at {', '.join(f'{e:.0f}' for e in ends)})")


if __name__ == "__main__":
    main()
