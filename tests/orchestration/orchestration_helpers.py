"""Helpers of the orchestration tests: small DICOM sessions with chosen routing fields, and a few
Prefect REST calls plus subprocess handling for the end-to-end tests.

Prefect is reached over plain HTTP rather than through its client: the test process may also
hold the session's test harness, whose settings must not be switched to the real server in the
middle of a run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

REPO_ROOT = Path(__file__).resolve().parents[2]
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def prefect_cli() -> str:
    return shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"


class _RetryWhileBusyTransport(httpx.HTTPTransport):
    """A Prefect server on SQLite answers 503 while its database is busy (the whole suite shares one
    server in CI); that is load, not a failure of what is being tested. Prefect's own client retries
    such answers too (`PREFECT_CLIENT_MAX_RETRIES`); every call here does, with a bounded backoff."""

    ATTEMPTS = 6

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(self.ATTEMPTS):
            response = super().handle_request(request)
            if response.status_code != 503 or attempt == self.ATTEMPTS - 1:
                return response
            response.read()
            response.close()
            time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")


class PrefectApi:
    def __init__(self, api_url: str) -> None:
        # No keep-alive: the server drops idle connections after a few seconds, and the tests pause
        # longer than that (deploys, flow runs) between calls.
        limits = httpx.Limits(max_keepalive_connections=0)
        self.http = httpx.Client(
            base_url=api_url.rstrip("/") + "/",
            timeout=30,
            transport=_RetryWhileBusyTransport(limits=limits),
        )

    def close(self) -> None:
        self.http.close()

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None

    def deployment(self, flow_name: str, deployment_name: str) -> dict[str, Any]:
        return self._json("GET", f"deployments/name/{flow_name}/{deployment_name}")

    def delete_deployments(self, names: list[str]) -> None:
        """Delete deployments by name, and the automations their triggers created (not deleted with them)."""
        for deployment in self._json("POST", "deployments/filter", json={"deployments": {"name": {"any_": names}}}):
            self.http.delete(f"automations/owned-by/prefect.deployment.{deployment['id']}")
            self.http.delete(f"deployments/{deployment['id']}")

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
        return self._json(
            "POST", "flow_runs/filter", json={"deployments": {"id": {"any_": [deployment_id]}}, "limit": 200}
        )

    def events(self, name_prefix: str, resource_id_prefix: str) -> list[dict[str, Any]]:
        body = {
            "filter": {"event": {"prefix": [name_prefix]}, "resource": {"id_prefix": [resource_id_prefix]}},
            "limit": 50,
        }
        return self._json("POST", "events/filter", json=body)["events"]

    def automations(self) -> list[dict[str, Any]]:
        return self._json("POST", "automations/filter", json={})

    def wait_for(self, run_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.flow_run(run_id)
            if run["state_type"] in TERMINAL:
                return run
            time.sleep(1)
        raise TimeoutError(
            f"flow run {run_id} not finished after {timeout:.0f} s: {self.flow_run(run_id)['state_type']}"
        )


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
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


def run_cli(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [prefect_cli(), *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


def cli_environment(server_url: str, tmp_path_factory: Any) -> dict[str, str]:
    """Environment of a test's subprocesses: the Prefect server at ``server_url``, a private
    PREFECT_HOME and xnat-flows home, no XNAT_* or PREFECT_* of the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XNAT_", "PREFECT_"))}
    env.update(
        PREFECT_API_URL=server_url,
        PREFECT_HOME=str(tmp_path_factory.mktemp("prefect-cli-home")),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        XNAT_FLOWS_HOME=str(tmp_path_factory.mktemp("xnat-flows-home")),
    )
    return env


# The site's names in prefect.yaml's deployments: the process work pool and the credentials Block
# the deploying shell names in XNAT_CREDENTIALS_BLOCK.
POOL = "xnat-process"
BLOCK = "e2e-site-xnat"


def block_ref(name: str = BLOCK) -> dict[str, Any]:
    """A flow run's ``connection`` parameter naming an ``xnat-credentials`` Block by its slug."""
    return {"credentials": {"$ref": {"block_document_slug": f"xnat-credentials/{name}"}}}


def block_id_ref(api: PrefectApi, name: str = BLOCK) -> dict[str, Any]:
    """How a deployment references the site's Block: by document id (what the UI's picker shows)."""
    document = api.http.get(f"block_types/slug/xnat-credentials/block_documents/name/{name}")
    document.raise_for_status()
    return {"credentials": {"$ref": {"block_document_id": document.json()["id"]}}}


def save_block(cli_env: dict[str, str], name: str, url: str) -> None:
    """Save an ``xnat-credentials`` Block (user admin) in a child process, as a site's admin would."""
    save = (
        "import sys; from pydantic import SecretStr; from xnat_flows.blocks import XnatCredentials;"
        "XnatCredentials(url=sys.argv[1], username='admin', password=SecretStr('admin')).save(sys.argv[2], overwrite=True)"
    )
    saved = subprocess.run(
        [sys.executable, "-c", save, url, name], env=cli_env, capture_output=True, text=True, timeout=120, check=False
    )
    assert saved.returncode == 0, saved.stderr[-3000:]


def write_session(
    folder: Path, *, patient_id: str = "P001", study_date: str = "20240115", series: int = 2, instances: int = 2
) -> list[Path]:
    """One study (``series`` x ``instances`` extensionless files) under ``folder``, from pydicom's CT_small.

    Not ``xnat_flows.testing.synth``: the routing tests need a chosen StudyDate and PatientIDs synth
    does not write (empty, or with ``^`` and spaces), since the session label is built from them.
    """
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    study_uid = generate_uid()
    paths = []
    for s in range(1, series + 1):
        series_uid = generate_uid()
        for i in range(1, instances + 1):
            ds = template.copy()
            ds.PatientID = patient_id
            ds.StudyDate = study_date
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = s
            ds.InstanceNumber = i
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            path = folder / f"series{s}" / f"IM{i:04d}"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths
