"""Twenty concurrent flow runs, one XNAT, a global concurrency limit of 4 on a real Prefect server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xnat_flows.testing.synth import write_studies

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.prefect_server]

RUNS, LIMIT = 20, 4
PASSWORD = "load-test-pw-2b9e"


def test_twenty_flow_runs_share_four_upload_slots_and_all_land(
    private_prefect_server_url: str, tmp_path: Path, xnat_emulator_factory
) -> None:
    manifests = [
        write_studies(tmp_path / "sources" / f"s{i:02d}", series=2, instances=6, instance_kb=8, seed=100 + i)
        for i in range(RUNS)
    ]
    xnat = xnat_emulator_factory(tmp_path / "xnat", projects=("LOAD",), password=PASSWORD, rebuild_idle_seconds=0.5)
    # Slow imports a little so uploads overlap: without the limit 40 batches would run at once.
    xnat.faults.add(method="POST", path=r"/data/services/import", delay_ms=150, times=None)
    env = {
        **os.environ,
        "PREFECT_API_URL": private_prefect_server_url,
        "XNAT_PASS": PASSWORD,
        "XNAT_FLOWS_HOME": str(tmp_path / "profile"),
        "PREFECT_LOGGING_LEVEL": "WARNING",
        # Twenty runs created at once keep SQLite busy: the server answers 503, which clients retry.
        "PREFECT_CLIENT_MAX_RETRIES": "10",
    }
    child = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("load_runner.py")),
            xnat.url,
            str(tmp_path / "sources"),
            str(RUNS),
            str(LIMIT),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=270,  # under pytest-timeout's 300 s, with the private server's start
    )
    assert child.returncode == 0, child.stderr[-3000:]
    report = json.loads(child.stdout.strip().splitlines()[-1])

    assert report["failed"] == {}
    assert sorted(report["ok"]) == list(range(RUNS))
    peak = xnat.peak_concurrent_uploads
    assert 2 <= peak <= LIMIT, f"peak concurrent uploads {peak}, limit {LIMIT}"
    experiments = {e["label"]: e for e in xnat.archived_experiments("LOAD")}
    assert len(experiments) == RUNS
    for i, manifest in enumerate(manifests):
        files = xnat.archived_files(f"L{i:02d}")
        assert len(files) == len(manifest.files), f"L{i:02d}: {len(files)} of {len(manifest.files)}"
