"""Scale-out is configuration: the unchanged upload flow runs its batch tasks on a local Dask cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from orchestration_helpers import write_session

pytestmark = [pytest.mark.prefect_server, pytest.mark.slow]
# Skip at collection, before the session's Prefect server is started for nothing.
pytest.importorskip("prefect_dask", reason="prefect-dask not installed (pip install 'xnat-flows[dask]')")

# Run in a fresh interpreter: Dask's worker processes re-import the main module (hence the
# __main__ guard), and PREFECT_API_URL must name the real server before Prefect is imported,
# or every Dask worker would start its own temporary server.
SCRIPT = textwrap.dedent(
    """
    import json, sys
    from distributed import Client, LocalCluster
    from prefect_dask import DaskTaskRunner
    from xnat_flows.flows.upload import upload_dicom_session
    from xnat_flows.models import UploadRequest, XnatConnection

    def batch_keys(dask_worker):  # Dask keys are named after the task function (upload_batch_task)
        return sorted({str(entry[0]) for entry in dask_worker.state.log if str(entry[0]).startswith("upload_batch_task-")})

    if __name__ == "__main__":
        source, url = sys.argv[1], sys.argv[2]
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            # The only change from a plain run: which task runner the flow uses.
            runner = DaskTaskRunner(address=cluster.scheduler_address)
            request = UploadRequest(source_dir=source, project="TEST", subject="DASK01", session="DASK01_MR", workers=4)
            result = upload_dicom_session.with_options(task_runner=runner)(request=request, connection=XnatConnection(url=url))
            with Client(cluster) as client:
                ran = client.run(batch_keys)
        print("RESULT " + json.dumps(result.model_dump(mode="json")))
        print("DASK " + json.dumps(ran))
    """
)


def test_upload_flow_runs_on_a_local_dask_cluster(
    prefect_server_url: str, tmp_path: Path, xnat_emulator_factory
) -> None:
    source = tmp_path / "export"
    write_session(source, patient_id="DASK01", series=4, instances=3)
    script = tmp_path / "dask_upload.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XNAT_", "PREFECT_"))}
    env.update(
        PREFECT_API_URL=prefect_server_url,
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        XNAT_FLOWS_HOME=str(tmp_path / "xnat-flows-home"),
        XNAT_USER="admin",
        XNAT_PASS="admin",
    )
    xnat = xnat_emulator_factory(projects=("TEST",))
    done = subprocess.run(
        [sys.executable, str(script), str(source), xnat.url],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    rows = httpx.get(
        f"{xnat.url}/data/projects/TEST/experiments", params={"format": "json"}, auth=("admin", "admin")
    ).json()
    assert result["files_sent"] == 12
    session = result["sessions"][0]
    assert session["verified"] is True and len(session["batches"]) == 4 and all(b["ok"] for b in session["batches"])
    assert [r["label"] for r in rows["ResultSet"]["Result"]] == ["DASK01_MR"]
    dask = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("DASK ")).removeprefix("DASK "))
    assert (
        len(dask) == 2 and sum(len(keys) for keys in dask.values()) == 4
    )  # the 4 batches ran in Dask's worker processes
