"""A few Prefect REST calls for the end-to-end tests.

Plain HTTP rather than Prefect's client: the test process may also hold the session's test
harness, whose settings must not be switched to the real server in the middle of a run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def prefect_cli() -> str:
    return shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"


class PrefectApi:
    def __init__(self, api_url: str) -> None:
        self.http = httpx.Client(base_url=api_url.rstrip("/") + "/", timeout=30)

    def close(self) -> None:
        self.http.close()

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None

    def deployment(self, flow_name: str, deployment_name: str) -> dict[str, Any]:
        return self._json("GET", f"deployments/name/{flow_name}/{deployment_name}")

    def work_pool_exists(self, name: str) -> bool:
        return self.http.get(f"work_pools/{name}").status_code == 200

    def deactivate_schedules(self, deployment: dict[str, Any]) -> None:
        """Turn a deployment's schedules off and drop the runs they already queued."""
        for schedule in deployment.get("schedules", []):
            self._json("PATCH", f"deployments/{deployment['id']}/schedules/{schedule['id']}", json={"active": False})
        for run in self.flow_runs(deployment["id"]):
            if run["state_type"] == "SCHEDULED" and run.get("auto_scheduled"):
                self.http.delete(f"flow_runs/{run['id']}")

    def run_deployment(self, deployment_id: str, parameters: dict[str, Any]) -> str:
        run = self._json("POST", f"deployments/{deployment_id}/create_flow_run", json={"parameters": parameters})
        return run["id"]

    def flow_run(self, run_id: str) -> dict[str, Any]:
        return self._json("GET", f"flow_runs/{run_id}")

    def flow_runs(self, deployment_id: str) -> list[dict[str, Any]]:
        return self._json("POST", "flow_runs/filter", json={"deployments": {"id": {"any_": [deployment_id]}}, "limit": 200})

    def automations(self) -> list[dict[str, Any]]:
        return self._json("POST", "automations/filter", json={})

    def wait_for(self, run_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.flow_run(run_id)
            if run["state_type"] in TERMINAL:
                return run
            time.sleep(1)
        raise TimeoutError(f"flow run {run_id} not finished after {timeout:.0f} s: {self.flow_run(run_id)['state_type']}")


def start_group(cmd: list[str], env: dict[str, str], log: Path, cwd: Path = REPO_ROOT) -> subprocess.Popen[bytes]:
    """Start a process in its own process group (so its flow-run children can be stopped with it)."""
    handle = open(log, "ab")  # noqa: SIM115 - owned by the child; closed when this test process exits
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def stop_group(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """SIGTERM the group this test started, then SIGKILL what is left."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def run_cli(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [prefect_cli(), *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )
