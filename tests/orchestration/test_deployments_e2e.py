"""Deploy prefect.yaml to a real Prefect server, run flows through a process worker, follow the events.

Real pieces only: ``prefect server start`` (the ``prefect_server_url`` fixture, or the one
.ci/run starts), ``prefect deploy`` from the repository root, ``prefect worker start`` pulling
from the ``xnat-process`` pool, and the XNAT emulator over HTTP. Credentials reach the worker
through XNAT_USER/XNAT_PASS in its environment, never through parameters.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from orchestration_helpers import (
    REPO_ROOT,
    PrefectApi,
    prefect_cli,
    run_cli,
    start_group,
    stop_group,
    write_session,
)

from xnat_flows.testing import XnatEmulator

pytestmark = [pytest.mark.prefect_server, pytest.mark.slow]

POOL = "xnat-process"
PRESENT_FLOWS = {  # deployment name -> entry point file
    entry["name"]: entry["entrypoint"].split(":")[0]
    for entry in yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())["deployments"]
}


def _secret_fields(schema: object) -> list[str]:
    """Names of any form field, at any depth, that would take a secret."""
    found: list[str] = []
    if isinstance(schema, dict):
        for name in schema.get("properties", {}):
            if any(word in name.lower() for word in ("password", "secret", "token")):
                found.append(name)
        for value in schema.values():
            found += _secret_fields(value)
    elif isinstance(schema, list):
        for value in schema:
            found += _secret_fields(value)
    return found


def _missing_entry_points() -> list[str]:
    return sorted(path for path in PRESENT_FLOWS.values() if not (REPO_ROOT / path).is_file())


@pytest.fixture(scope="module")
def cli_env(prefect_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment of every subprocess: the real server, a private PREFECT_HOME, no XNAT_* of the caller."""
    home = tmp_path_factory.mktemp("prefect-cli-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XNAT_", "PREFECT_"))}
    env.update(
        PREFECT_API_URL=prefect_server_url,
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        XNAT_FLOWS_HOME=str(tmp_path_factory.mktemp("xnat-flows-home")),
    )
    return env


@pytest.fixture(scope="module")
def api(prefect_server_url: str) -> Iterator[PrefectApi]:
    client = PrefectApi(prefect_server_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def deployed(cli_env: dict[str, str], api: PrefectApi) -> dict[str, dict]:
    """The pool and every deployment whose flow exists, from prefect.yaml at the repository root."""
    if not api.work_pool_exists(POOL):
        created = run_cli(["work-pool", "create", POOL, "--type", "process"], cli_env)
        assert created.returncode == 0, created.stdout + created.stderr
    missing = _missing_entry_points()
    if missing:  # flows other sessions have not written yet; deploy the rest by name
        names = [name for name, path in PRESENT_FLOWS.items() if path not in missing]
        args = ["--no-prompt", "deploy", *[arg for name in names for arg in ("-n", name)]]
    else:
        args = ["--no-prompt", "deploy", "--all"]
    result = run_cli(args, cli_env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    flows = {
        "upload-session": "upload-dicom-session",
        "inbox-ingest": "ingest-inbox",
        "process-session": "process-xnat-session",
    }
    found = {name: api.deployment(flow, name) for name, flow in flows.items()}
    # The schedule would start inbox runs on /srv/xnat-inbox during the test: off, and its queued runs gone.
    api.deactivate_schedules(found["inbox-ingest"])
    return found


def test_deploy_all_from_the_repository_root(deployed: dict[str, dict], api: PrefectApi) -> None:
    missing = _missing_entry_points()
    inbox = deployed["inbox-ingest"]
    assert inbox["work_pool_name"] == POOL
    assert inbox["parameters"]["inbox_dir"] == "/srv/xnat-inbox"
    assert inbox["schedules"][0]["schedule"]["interval"] == 300
    form = inbox["parameter_openapi_schema"]["properties"]
    assert {"inbox_dir", "project", "subject_template", "quiet_seconds", "transport", "connection"} <= set(form)
    assert not _secret_fields(inbox["parameter_openapi_schema"])
    upload_form = deployed["upload-session"]["parameter_openapi_schema"]
    assert "UploadRequest" in json.dumps(upload_form)  # the request renders as a form, not a JSON blob
    for deployment in deployed.values():
        assert not _secret_fields(deployment["parameter_openapi_schema"]), deployment["name"]
    triggers = [a for a in api.automations() if a["name"] == "process-archived-xnat-sessions"]
    assert triggers and triggers[0]["trigger"]["expect"] == ["xnat.session.archived"]
    assert triggers[0]["actions"][0]["parameters"]["project"] == "{{ event.resource['xnat.project'] }}"
    if missing:
        pytest.skip(f"deployed all but the flows not written yet: {', '.join(missing)} (prefect deploy --all needs them)")


@pytest.fixture(scope="module")
def xnat() -> Iterator[XnatEmulator]:
    with XnatEmulator(projects=("TEST",), rebuild_idle_seconds=0.5) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def worker(deployed: dict[str, dict], cli_env: dict[str, str], xnat: XnatEmulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    env = {**cli_env, "XNAT_USER": "admin", "XNAT_PASS": "admin", "PREFECT_WORKER_QUERY_SECONDS": "2"}
    process = start_group([prefect_cli(), "worker", "start", "--pool", POOL, "--limit", "4"], env, log)
    try:
        yield log
    finally:
        stop_group(process)


def _wait_completed(api: PrefectApi, run_id: str, log: Path, timeout: float = 240) -> dict:
    run = api.wait_for(run_id, timeout)
    assert run["state_type"] == "COMPLETED", f"{run['state_type']}: {run['state']}\n--- worker log ---\n{log.read_text()[-6000:]}"
    return run


def _experiments(xnat: XnatEmulator) -> dict[str, dict]:
    rows = httpx.get(f"{xnat.url}/data/projects/TEST/experiments", params={"format": "json"}, auth=("admin", "admin"), timeout=30)
    rows.raise_for_status()
    return {row["label"]: row for row in rows.json()["ResultSet"]["Result"]}


def _wait_for_events(api: PrefectApi, name: str, xnat: XnatEmulator, count: int, timeout: float) -> list[dict]:
    """Events of this emulator's sessions (the resource id names its host:port), once ``count`` arrived."""
    host = xnat.url.split("://", 1)[1].rstrip("/")
    deadline = time.monotonic() + timeout
    while True:
        found = api.events(name, f"xnat.session.{host}.")
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(1)


def _processing_runs(api: PrefectApi, deployment: dict, xnat: XnatEmulator, experiment_id: str, timeout: float) -> list[dict]:
    """Runs of the processing deployment that the trigger started for this experiment on this emulator
    (a shared server keeps runs of earlier emulators, whose experiment IDs repeat)."""
    deadline = time.monotonic() + timeout
    while True:
        runs = [
            r for r in api.flow_runs(deployment["id"])
            if r["parameters"].get("experiment_id") == experiment_id
            and r["parameters"].get("connection", {}).get("url") == xnat.url
        ]
        if any(r["state_type"] == "COMPLETED" for r in runs) or time.monotonic() > deadline:
            return runs
        time.sleep(2)


def test_upload_and_inbox_deployments_land_sessions_and_chain_processing(
    deployed: dict[str, dict], api: PrefectApi, worker: Path, xnat: XnatEmulator, tmp_path: Path
) -> None:
    connection = {"url": xnat.url}  # the URL is no secret; user and password come from the worker's env

    source = tmp_path / "export"
    write_session(source, patient_id="P001", study_date="20240115")
    upload_run = api.run_deployment(
        deployed["upload-session"]["id"],
        {"request": {"source_dir": str(source), "project": "TEST", "subject": "P001", "session": "P001_MR1", "workers": 2},
         "connection": connection},
    )

    inbox = tmp_path / "inbox"
    write_session(inbox / "scan-0002", patient_id="P002", study_date="20240301")
    (inbox / "scan-0002" / "xnat.json").write_text(json.dumps({"subject": "SUBJ002"}))
    inbox_parameters = {"inbox_dir": str(inbox), "project": "TEST", "quiet_seconds": 0, "workers": 2, "connection": connection}
    inbox_run = api.run_deployment(deployed["inbox-ingest"]["id"], inbox_parameters)

    _wait_completed(api, upload_run, worker)
    _wait_completed(api, inbox_run, worker)

    experiments = _experiments(xnat)
    assert experiments["P001_MR1"]["subject_label"] == "P001"
    assert experiments["P002_20240301"]["subject_label"] == "SUBJ002"  # sidecar over template
    assert (inbox / "done" / "scan-0002" / "series1" / "IM0001").is_file()
    report = json.loads((inbox / "done" / "scan-0002.report.json").read_text())
    assert report["status"] == "done" and report["sessions"][0]["experiment_id"] == experiments["P002_20240301"]["ID"]
    assert "admin" not in json.dumps(report)

    # A second run over the same inbox sends nothing.
    imports_before = xnat.stats()["imports"]
    _wait_completed(api, api.run_deployment(deployed["inbox-ingest"]["id"], inbox_parameters), worker)
    assert xnat.stats()["imports"] == imports_before
    assert sorted(p.name for p in (inbox / "done").iterdir()) == ["scan-0002", "scan-0002.report.json"]

    # The upload flow announces each session; without those events there is nothing to chain on.
    archived = _wait_for_events(api, "xnat.session.archived", xnat, count=2, timeout=30)
    assert {e["resource"]["xnat.session_label"] for e in archived} == {"P001_MR1", "P002_20240301"}
    uploaded = _wait_for_events(api, "xnat.session.uploaded", xnat, count=2, timeout=10)
    assert all(e["payload"]["verified"] is True for e in uploaded)

    # Each archived session started the processing deployment through the event trigger.
    deadline = time.monotonic() + 120
    for label in ("P001_MR1", "P002_20240301"):
        experiment_id = experiments[label]["ID"]
        runs = _processing_runs(api, deployed["process-session"], xnat, experiment_id, timeout=deadline - time.monotonic())
        assert any(r["state_type"] == "COMPLETED" for r in runs), (
            f"no completed process-session run for {label} ({experiment_id}); runs: {[(r['parameters'], r['state_type']) for r in runs]}"
        )
        assert runs[0]["parameters"]["project"] == "TEST"


def test_archived_event_alone_triggers_processing(
    deployed: dict[str, dict], api: PrefectApi, worker: Path, xnat: XnatEmulator, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """Any ``xnat.session.archived`` event (here: what the prearchive flow emits) starts processing
    with the ids from its resource, and the processing flow reads the session back from XNAT."""
    from xnat_flows.client.client import XnatClient
    from xnat_flows.client.credentials import resolve_credentials
    from xnat_flows.transfer.scan import scan_directory
    from xnat_flows.transfer.session import upload_session
    from xnat_flows.transfer.upload import UploadTarget

    source = tmp_path / "export"
    write_session(source, patient_id="P003", series=1, instances=2)
    credentials = resolve_credentials(url=xnat.url, username="admin", password="admin", prompt=False)
    with XnatClient(credentials) as client:
        assert upload_session(client, scan_directory(source), UploadTarget("TEST", "P003", "P003_PRE")).ok
    experiment_id = _experiments(xnat)["P003_PRE"]["ID"]

    emit = (
        "import sys; from xnat_flows.events import emit_session_archived;"
        "from prefect.events.worker import EventsWorker;"
        "assert emit_session_archived(sys.argv[1], 'TEST', 'P003', 'P003_PRE', experiment_id=sys.argv[2]) is not None;"
        "EventsWorker.drain_all()"
    )
    result = subprocess.run(
        [sys.executable, "-c", emit, xnat.url, experiment_id], env=cli_env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]

    runs = _processing_runs(api, deployed["process-session"], xnat, experiment_id, timeout=120)
    assert [r["state_type"] for r in runs] == ["COMPLETED"], (
        f"{[(r['parameters'], r['state']) for r in runs]}\n--- worker log ---\n{worker.read_text()[-4000:]}"
    )
    assert runs[0]["parameters"] == {
        "project": "TEST", "subject": "P003", "experiment_id": experiment_id, "connection": {"url": xnat.url}
    }


def test_blocks_register_and_keep_the_password_secret(cli_env: dict[str, str], api: PrefectApi) -> None:
    registered = run_cli(["block", "register", "-m", "xnat_flows.blocks"], cli_env)
    assert registered.returncode == 0, registered.stdout + registered.stderr
    save = (
        "from pydantic import SecretStr; from xnat_flows.blocks import XnatCredentials;"
        "XnatCredentials(url='https://xnat.example.org', username='svc', password=SecretStr('s3cret-e2e'))"
        ".save('e2e-xnat', overwrite=True);"
        "assert XnatCredentials.load('e2e-xnat').to_credentials().password.get_secret_value() == 's3cret-e2e'"
    )
    saved = subprocess.run(
        [sys.executable, "-c", save], env=cli_env, capture_output=True, text=True, timeout=120, check=False
    )
    assert saved.returncode == 0, saved.stderr[-3000:]
    document = api.http.get("block_types/slug/xnat-credentials/block_documents/name/e2e-xnat")
    document.raise_for_status()
    assert document.json()["data"]["username"] == "svc"
    assert "s3cret-e2e" not in document.text  # the API shows the secret obfuscated


@pytest.mark.parametrize(
    ("flavour", "pool_type", "pool", "suffix", "variable"),
    [("docker", "docker", "xnat-docker", "docker", "volumes"), ("kubernetes", "kubernetes", "xnat-k8s", "k8s", "namespace")],
)
def test_docker_and_kubernetes_files_deploy(
    flavour: str, pool_type: str, pool: str, suffix: str, variable: str, cli_env: dict[str, str], api: PrefectApi
) -> None:
    """The container flavours deploy as they are (running them needs Docker or a cluster, not tested here)."""
    if not api.work_pool_exists(pool):
        created = run_cli(["work-pool", "create", pool, "--type", pool_type], cli_env)
        assert created.returncode == 0, created.stdout + created.stderr
    prefect_file = REPO_ROOT / "deployments" / flavour / "prefect.yaml"
    entries = yaml.safe_load(prefect_file.read_text())["deployments"]
    names = [e["name"] for e in entries if (REPO_ROOT / e["entrypoint"].split(":")[0]).is_file()]
    result = run_cli(["--no-prompt", "deploy", "--prefect-file", str(prefect_file), *[a for n in names for a in ("-n", n)]], cli_env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    upload = api.deployment("upload-dicom-session", f"upload-session-{suffix}")
    inbox = api.deployment("ingest-inbox", f"inbox-ingest-{suffix}")
    try:
        assert upload["work_pool_name"] == pool and variable in upload["job_variables"]
        assert upload["parameters"]["connection"] == {"credentials_block": "xnat"}
        assert upload["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/xnat-flows"}}]
        assert inbox["schedules"] and inbox["parameters"]["connection"] == {"credentials_block": "xnat"}
    finally:
        # Leave only the process flavour on the server, so its trigger is the one that reacts to events.
        api.delete_deployments(names)


def test_global_limit_caps_uploads_to_one_server_across_runs_and_workers(
    deployed: dict[str, dict], api: PrefectApi, worker: Path, cli_env: dict[str, str], tmp_path: Path,
    xnat_emulator_factory,
) -> None:
    """Two workers, three upload runs of two batches each, and `xnat-uploads:<host:port>` at 1:
    the server never sees two imports at once."""
    second_worker = start_group(
        [prefect_cli(), "worker", "start", "--pool", POOL, "--limit", "4"],
        {**cli_env, "XNAT_USER": "admin", "XNAT_PASS": "admin", "PREFECT_WORKER_QUERY_SECONDS": "2"},
        tmp_path / "second-worker.log",
    )
    try:
        xnat = xnat_emulator_factory(projects=("TEST",), rebuild_idle_seconds=0.5)
        xnat.faults.add(path="/data/services/import", delay_ms=1000, times=None)  # imports take a second
        limit = "xnat-uploads:" + xnat.url.split("://", 1)[1]
        created = run_cli(["gcl", "create", limit, "--limit", "1"], cli_env)
        assert created.returncode == 0, created.stdout + created.stderr
        try:
            runs = []
            for n in range(3):
                source = tmp_path / f"export{n}"
                write_session(source, patient_id=f"GCL{n}", series=2, instances=1)
                request = {"source_dir": str(source), "project": "TEST", "subject": f"GCL{n}", "session": f"GCL{n}_MR", "workers": 2}
                runs.append(api.run_deployment(deployed["upload-session"]["id"], {"request": request, "connection": {"url": xnat.url}}))
            for run_id in runs:
                _wait_completed(api, run_id, worker)
            assert xnat.stats()["imports"] == 6
            assert xnat.peak_concurrent_uploads == 1
        finally:
            api.http.delete(f"v2/concurrency_limits/{limit}")
    finally:
        stop_group(second_worker)
