"""Deploy prefect.yaml to a real Prefect server, run flows through a process worker, follow the events.

Real pieces only: ``prefect server start`` (the ``prefect_server_url`` fixture, or the one
.ci/run starts), ``prefect block register`` and a saved ``xnat-credentials`` Block, ``prefect deploy
--all`` from the repository root with the site values in the environment (XNAT_CREDENTIALS_BLOCK,
XNAT_INBOX_DIR, XNAT_INBOX_PROJECT), ``prefect worker start`` pulling from the ``xnat-process``
pool with no XNAT_* variable in its environment, and the XNAT emulator over HTTP. Credentials
reach the flows only through the Block, never through parameters or the worker's environment.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from orchestration_helpers import (
    BLOCK,
    POOL,
    REPO_ROOT,
    PrefectApi,
    block_id_ref,
    block_ref,
    cli_environment,
    prefect_cli,
    run_cli,
    save_block,
    start_group,
    stop_group,
    write_session,
)

from xnat_flows.testing import XnatEmulator

pytestmark = [pytest.mark.prefect_server, pytest.mark.slow]

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
    return cli_environment(prefect_server_url, tmp_path_factory)


@pytest.fixture(scope="module")
def api(prefect_server_url: str) -> Iterator[PrefectApi]:
    client = PrefectApi(prefect_server_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def xnat(tmp_path_factory: pytest.TempPathFactory, free_tcp_port_factory: Callable[[], int]) -> Iterator[XnatEmulator]:
    """The site's XNAT: its REST API and its DICOM receiver."""
    emulator = XnatEmulator(
        tmp_path_factory.mktemp("xnat-data"),
        projects=("TEST",),
        rebuild_idle_seconds=0.5,
        port=free_tcp_port_factory(),
        scp_port=free_tcp_port_factory(),
    )
    with emulator:
        yield emulator


@pytest.fixture(scope="module")
def site_inbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    inbox = tmp_path_factory.mktemp("site") / "inbox"
    inbox.mkdir()  # the deploy refuses an inbox that does not exist
    return inbox


@pytest.fixture(scope="module")
def deployed(cli_env: dict[str, str], api: PrefectApi, xnat: XnatEmulator, site_inbox: Path) -> dict[str, dict]:
    """Blocks registered, the site's credentials Block saved, the pool, and every deployment of
    prefect.yaml deployed with the three site values from the deploying shell's environment."""
    registered = run_cli(["block", "register", "-m", "xnat_flows.blocks"], cli_env)
    assert registered.returncode == 0, registered.stdout + registered.stderr
    save_block(cli_env, BLOCK, xnat.url)
    created = run_cli(["work-pool", "create", POOL, "--type", "process", "--overwrite"], cli_env)
    assert created.returncode == 0, created.stdout + created.stderr
    missing = _missing_entry_points()
    if missing:  # flows other sessions have not written yet; deploy the rest by name
        names = [name for name, path in PRESENT_FLOWS.items() if path not in missing]
        args = ["--no-prompt", "deploy", *[arg for name in names for arg in ("-n", name)]]
    else:
        args = ["--no-prompt", "deploy", "--all"]
    site = {"XNAT_CREDENTIALS_BLOCK": BLOCK, "XNAT_INBOX_DIR": str(site_inbox), "XNAT_INBOX_PROJECT": "TEST"}
    result = run_cli(args, {**cli_env, **site})
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    flows = {
        "upload-session": "upload-dicom-session",
        "inbox-ingest": "ingest-inbox",
        "process-session": "process-xnat-session",
        "send-dicom": "send-dicom",
    }
    found = {name: api.deployment(flow, name) for name, flow in flows.items()}
    assert found["inbox-ingest"]["schedules"][0]["active"] is True  # all three values given
    # The test starts inbox runs itself: the schedule off, and its queued runs gone.
    api.deactivate_schedules(found["inbox-ingest"])
    return found


def _form_fields_without_description(schema: dict) -> list[str]:
    """Parameters, and fields of the parameter models, that the UI form would show without a description."""
    found = [f"{name}" for name, field in schema.get("properties", {}).items() if not field.get("description")]
    for model, definition in schema.get("definitions", {}).items():
        if "block_type_slug" in definition:
            continue
        found += [
            f"{model}.{name}"
            for name, field in definition.get("properties", {}).items()
            if not field.get("description")
        ]
    return found


def test_deploy_all_from_the_repository_root(
    deployed: dict[str, dict], api: PrefectApi, cli_env: dict[str, str], site_inbox: Path
) -> None:
    missing = _missing_entry_points()
    inbox = deployed["inbox-ingest"]
    assert inbox["work_pool_name"] == POOL
    assert inbox["parameters"]["inbox_dir"] == str(site_inbox)
    assert inbox["schedules"][0]["schedule"]["interval"] == 300
    form = inbox["parameter_openapi_schema"]["properties"]
    assert {"inbox_dir", "project", "subject_template", "quiet_seconds", "transport", "connection"} <= set(form)
    assert form["transport"]["enum"] == ["dicom-zip", "gradual-dicom"]  # a dropdown
    assert form["project"]["pattern"]  # validated when the run is created
    upload_form = deployed["upload-session"]["parameter_openapi_schema"]
    assert "UploadRequest" in json.dumps(upload_form)  # the request renders as a form, not a JSON blob
    for deployment in deployed.values():
        schema = deployment["parameter_openapi_schema"]
        # Only a Block's own form has a password field; no run parameter does.
        models = {k: v for k, v in schema.get("definitions", {}).items() if "block_type_slug" not in v}
        assert not _secret_fields({**schema, "definitions": models}), deployment["name"]
        assert not _form_fields_without_description(schema), deployment["name"]
        # The credentials field is a Block picker (a $ref to a definition with block_type_slug, as
        # Prefect's integrations produce), and the deployment references the site's Block by its
        # document id: the form the picker shows as selected (a slug reference shows an empty picker).
        credentials = schema["definitions"]["XnatConnection"]["properties"]["credentials"]
        assert {"$ref": "#/definitions/XnatCredentials"} in credentials["anyOf"]
        assert schema["definitions"]["XnatCredentials"]["block_type_slug"] == "xnat-credentials"
        assert deployment["parameters"]["connection"] == block_id_ref(api), deployment["name"]
    receiver = deployed["send-dicom"]["parameter_openapi_schema"]["definitions"]
    assert {"$ref": "#/definitions/DicomReceiver"} in receiver["DicomReceiverTarget"]["properties"]["block"]["anyOf"]
    assert receiver["DicomReceiver"]["block_type_slug"] == "xnat-dicom-receiver"
    triggers = [a for a in api.automations() if a["name"] == "process-archived-xnat-sessions"]
    assert triggers and triggers[0]["trigger"]["expect"] == ["xnat.session.archived"]
    assert triggers[0]["actions"][0]["parameters"]["project"] == "{{ event.resource['xnat.project'] }}"
    assert json.dumps(block_ref()["credentials"]) in json.dumps(triggers[0]["actions"][0]["parameters"])
    if missing:
        pytest.skip(
            f"deployed all but the flows not written yet: {', '.join(missing)} (prefect deploy --all needs them)"
        )


@pytest.fixture(scope="module")
def worker(
    deployed: dict[str, dict], cli_env: dict[str, str], xnat: XnatEmulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """A process worker whose environment holds no XNAT_* credentials: the Block is all it has."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    env = {**cli_env, "PREFECT_WORKER_QUERY_SECONDS": "1"}
    assert not [name for name in env if name.startswith("XNAT_") and name != "XNAT_FLOWS_HOME"]
    process = start_group([prefect_cli(), "worker", "start", "--pool", POOL, "--limit", "4"], env, log)
    try:
        yield log
    finally:
        stop_group(process)


def _wait_completed(api: PrefectApi, run_id: str, log: Path, timeout: float = 240) -> dict:
    run = api.wait_for(run_id, timeout)
    assert run["state_type"] == "COMPLETED", (
        f"{run['state_type']}: {run['state']}\n--- worker log ---\n{log.read_text()[-6000:]}"
    )
    return run


def _experiments(xnat: XnatEmulator) -> dict[str, dict]:
    rows = httpx.get(
        f"{xnat.url}/data/projects/TEST/experiments", params={"format": "json"}, auth=("admin", "admin"), timeout=30
    )
    rows.raise_for_status()
    return {row["label"]: row for row in rows.json()["ResultSet"]["Result"]}


def _wait_for_events(api: PrefectApi, name: str, xnat: XnatEmulator | str, count: int, timeout: float) -> list[dict]:
    """Events of this emulator's sessions (the resource id names its host:port), once ``count`` arrived."""
    host = (xnat if isinstance(xnat, str) else xnat.url).split("://", 1)[1].rstrip("/")
    deadline = time.monotonic() + timeout
    while True:
        found = api.events(name, f"xnat.session.{host}.")
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(1)


def _processing_runs(
    api: PrefectApi, deployment: dict, xnat: XnatEmulator, experiment_id: str, timeout: float
) -> list[dict]:
    """Runs of the processing deployment that the trigger started for this experiment on this emulator
    (a shared server keeps runs of earlier emulators, whose experiment IDs repeat)."""
    deadline = time.monotonic() + timeout
    while True:
        runs = [
            r
            for r in api.flow_runs(deployment["id"])
            if r["parameters"].get("experiment_id") == experiment_id
            and r["parameters"].get("connection", {}).get("url") == xnat.url
        ]
        if any(r["state_type"] == "COMPLETED" for r in runs) or time.monotonic() > deadline:
            return runs
        time.sleep(2)


def _wait_state(api: PrefectApi, run_id: str, state: str, log: Path, timeout: float = 240) -> dict:
    run = api.wait_for(run_id, timeout)
    assert run["state_type"] == state, (
        f"{run['state_type']}: {run['state']}\n--- worker log ---\n{log.read_text()[-6000:]}"
    )
    return run


def test_unattended_inbox_and_send_dicom_chain_processing_with_a_block_only_worker(
    deployed: dict[str, dict],
    api: PrefectApi,
    worker: Path,
    xnat: XnatEmulator,
    cli_env: dict[str, str],
    site_inbox: Path,
    tmp_path: Path,
    free_tcp_port_factory: Callable[[], int],
) -> None:
    """The unattended walk-through: the inbox deployment as deployed (its parameters from the deploy-time
    environment, credentials from the Block) and send-dicom with verify, side by side on the worker,
    each archived session starting the processing deployment by its event; then an inbox run whose
    XNAT is down -> the run Failed, the folder kept, xnat.upload.failed.

    Independent runs go to the worker together (its limit is 4), as a site's would: the test waits
    for the slowest chain, not for the sum of them."""
    inbox = deployed["inbox-ingest"]
    assert inbox["parameters"]["inbox_dir"] == str(site_inbox) and inbox["parameters"]["project"] == "TEST"
    assert inbox["parameters"]["connection"] == block_id_ref(api)

    write_session(site_inbox / "scan-0001", patient_id="P001", study_date="20240115")
    (site_inbox / "scan-0001" / "xnat.json").write_text(json.dumps({"subject": "SUBJ001"}))
    inbox_run = api.run_deployment(inbox["id"], {"quiet_seconds": 0})
    # C-STORE with wait-and-verify: the archived session is announced and processing chained.
    source = tmp_path / "cstore"
    write_session(source, patient_id="P003", study_date="20240401")
    request = {
        "source_dir": str(source),
        "workers": 1,
        "routing_project": "TEST",
        "routing_subject": "P003",
        "routing_session": "P003_CS",
        "verify": True,
        "verify_timeout_seconds": 90,
    }
    receiver = {"host": "127.0.0.1", "port": xnat.scp_port, "called_aet": "XNAT"}
    send_run = api.run_deployment(deployed["send-dicom"]["id"], {"request": request, "receiver": receiver})

    run = _wait_state(api, inbox_run, "COMPLETED", worker)
    assert run["name"] == f"inbox {site_inbox} -> TEST"
    experiments = _experiments(xnat)
    assert experiments["P001_20240115"]["subject_label"] == "SUBJ001"
    report = json.loads((site_inbox / "done" / "scan-0001.report.json").read_text())
    assert report["status"] == "done" and report["recovered_after_crash"] is False
    assert report["sessions"][0]["experiment_id"] == experiments["P001_20240115"]["ID"]

    # XNAT down for the next inbox run (the inbox deployment runs one at a time): a Block for a
    # server that does not answer, so the real one stays up for the processing runs meanwhile.
    down = f"http://127.0.0.1:{free_tcp_port_factory()}"
    save_block(cli_env, "e2e-down", down)
    write_session(site_inbox / "scan-0002", patient_id="P002", study_date="20240301")
    down_run = api.run_deployment(inbox["id"], {"quiet_seconds": 0, "connection": block_ref("e2e-down")})

    sent = _wait_state(api, send_run, "COMPLETED", worker)
    assert sent["name"] == f"send-dicom 127.0.0.1:{xnat.scp_port}"
    for label in ("P001_20240115", "P003_CS"):
        experiment_id = _experiments(xnat)[label]["ID"]
        runs = _processing_runs(api, deployed["process-session"], xnat, experiment_id, timeout=120)
        assert any(r["state_type"] == "COMPLETED" for r in runs), [(r["parameters"], r["state"]) for r in runs]
    archived = _wait_for_events(api, "xnat.session.archived", xnat, count=2, timeout=30)
    assert [e["resource"]["xnat.session_label"] for e in archived].count("P001_20240115") == 1  # exactly once

    # The run is Failed (an automation on failed runs fires), the folder waits, the event is out.
    _wait_state(api, down_run, "FAILED", worker)
    assert (site_inbox / "processing" / "scan-0002" / "series1" / "IM0001").is_file()
    assert not (site_inbox / "failed").exists() or not list((site_inbox / "failed").iterdir())
    failed = _wait_for_events(api, "xnat.upload.failed", down, count=1, timeout=30)
    assert failed and failed[0]["resource"]["xnat.project"] == "TEST"
    assert "admin" not in json.dumps(failed[0]["payload"])
    # (The next run uploads the kept folder and does not call it a crash: test_inbox_flow.py, in-process.)


def test_archived_event_alone_triggers_processing(
    deployed: dict[str, dict],
    api: PrefectApi,
    worker: Path,
    xnat: XnatEmulator,
    cli_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """Any ``xnat.session.archived`` event (here: what the prearchive flow emits) starts processing
    with the ids from its resource, and the processing flow reads the session back from XNAT."""
    from xnat_flows.client.client import XnatClient
    from xnat_flows.client.credentials import resolve_credentials
    from xnat_flows.transfer.scan import scan_directory
    from xnat_flows.transfer.session import upload_session
    from xnat_flows.transfer.target import UploadTarget

    source = tmp_path / "export"
    write_session(source, patient_id="P004", series=1, instances=2)
    credentials = resolve_credentials(url=xnat.url, username="admin", password="admin", prompt=False)
    with XnatClient(credentials) as client:
        assert upload_session(client, scan_directory(source), UploadTarget("TEST", "P003", "P004_PRE")).ok
    experiment_id = _experiments(xnat)["P004_PRE"]["ID"]

    emit = (
        "import sys; from xnat_flows.events import emit_session_archived;"
        "from prefect.events.worker import EventsWorker;"
        "assert emit_session_archived(sys.argv[1], 'TEST', 'P004', 'P004_PRE', experiment_id=sys.argv[2]) is not None;"
        "EventsWorker.drain_all()"
    )
    result = subprocess.run(
        [sys.executable, "-c", emit, xnat.url, experiment_id],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    runs = _processing_runs(api, deployed["process-session"], xnat, experiment_id, timeout=120)
    assert [r["state_type"] for r in runs] == ["COMPLETED"], (
        f"{[(r['parameters'], r['state']) for r in runs]}\n--- worker log ---\n{worker.read_text()[-4000:]}"
    )
    assert runs[0]["parameters"] == {
        "project": "TEST",
        "subject": "P004",
        "experiment_id": experiment_id,
        "connection": {"url": xnat.url, **block_ref()},
    }


def test_upload_to_nifti_in_xnat_read_back_through_xnatpy(
    deployed: dict[str, dict], api: PrefectApi, worker: Path, xnat: XnatEmulator, tmp_path: Path
) -> None:
    """docs/processing.md, end to end: the upload deployment on the Block-only worker -> xnat.session.archived
    -> the process-session deployment converts every scan with dcm2niix -> a NIFTI resource on each scan,
    read back through xnatpy's object API; xnat.session.processed names the files; a second
    processing run changes nothing and announces nothing."""
    import xnat as xnatpy

    from xnat_flows.testing.synth import write_studies

    write_studies(tmp_path / "export", series=2, instances=8, instance_kb=16, seed=61)
    request = {"source_dir": str(tmp_path / "export"), "project": "TEST", "subject": "NII01", "session": "NII01_MR"}
    _wait_completed(api, api.run_deployment(deployed["upload-session"]["id"], {"request": request}), worker)
    experiment_id = _experiments(xnat)["NII01_MR"]["ID"]
    runs = _processing_runs(api, deployed["process-session"], xnat, experiment_id, timeout=180)
    assert any(r["state_type"] == "COMPLETED" for r in runs), (
        f"{[(r['parameters'], r['state']) for r in runs]}\n--- worker log ---\n{worker.read_text()[-4000:]}"
    )
    with xnatpy.connect(xnat.url, user="admin", password="admin", loglevel="ERROR") as connection:
        scans = connection.experiments[experiment_id].scans
        assert sorted(scans.keys()) == ["1", "2"]
        for scan_id, scan in scans.items():
            names = sorted(scan.resources["NIFTI"].files.keys())
            stem = f"sub-NII01_ses-NII01MR_acq-T1MPRAGE{scan_id}_run-{scan_id}_T1w"
            assert names == [f"{stem}.json", f"{stem}.nii.gz"], names

    def processed() -> list[dict]:
        """This session's processed events, once the first is stored (Prefect stores events a moment
        after the run emitted them; other sessions' events of this module may already be there)."""
        deadline = time.monotonic() + 60
        while True:
            found = _wait_for_events(api, "xnat.session.processed", xnat, count=1, timeout=30)
            mine = [e for e in found if e["resource"].get("xnat.experiment_id") == experiment_id]
            if mine or time.monotonic() > deadline:
                return mine
            time.sleep(1)

    (event,) = processed()
    assert sorted(event["payload"]["produced"]) == ["1", "2"] and event["payload"]["resource"] == "NIFTI"
    again = {"project": "TEST", "experiment_id": experiment_id, "connection": {"url": xnat.url, **block_ref()}}
    rerun = _wait_completed(api, api.run_deployment(deployed["process-session"]["id"], again), worker)
    assert rerun["state_type"] == "COMPLETED"
    time.sleep(2)  # an event, were one emitted, would be stored by now
    assert len(processed()) == 1


def test_global_limit_caps_uploads_to_one_server_across_runs_and_workers(
    deployed: dict[str, dict],
    api: PrefectApi,
    worker: Path,
    cli_env: dict[str, str],
    tmp_path: Path,
    xnat_emulator_factory,
) -> None:
    """Two workers, three upload runs of two batches each, and `xnat-uploads:<host:port>` at 1:
    the server never sees two imports at once."""
    # Processing the three sessions is not what this test is about (it is the other tests'): the
    # trigger is paused meanwhile, so the workers run the uploads alone.
    (trigger,) = [a for a in api.automations() if a["name"] == "process-archived-xnat-sessions"]
    api.http.patch(f"automations/{trigger['id']}", json={"enabled": False}).raise_for_status()
    second_worker = start_group(
        [prefect_cli(), "worker", "start", "--pool", POOL, "--limit", "4"],
        {**cli_env, "PREFECT_WORKER_QUERY_SECONDS": "1"},
        tmp_path / "second-worker.log",
    )
    try:
        xnat = xnat_emulator_factory(projects=("TEST",), rebuild_idle_seconds=0.5)
        xnat.faults.add(path="/data/services/import", delay_ms=1000, times=None)  # imports take a second
        limit = "xnat-uploads:" + xnat.url.split("://", 1)[1]
        save_block(cli_env, "e2e-gcl", xnat.url)
        created = run_cli(["gcl", "create", limit, "--limit", "1"], cli_env)
        assert created.returncode == 0, created.stdout + created.stderr
        try:
            runs = []
            for n in range(3):
                source = tmp_path / f"export{n}"
                write_session(source, patient_id=f"GCL{n}", series=2, instances=1)
                request = {
                    "source_dir": str(source),
                    "project": "TEST",
                    "subject": f"GCL{n}",
                    "session": f"GCL{n}_MR",
                    "workers": 2,
                }
                runs.append(
                    api.run_deployment(
                        deployed["upload-session"]["id"], {"request": request, "connection": block_ref("e2e-gcl")}
                    )
                )
            for run_id in runs:
                _wait_completed(api, run_id, worker)
            assert xnat.stats()["imports"] == 6
            assert xnat.peak_concurrent_uploads == 1
        finally:
            api.http.delete(f"v2/concurrency_limits/{limit}")
    finally:
        stop_group(second_worker)
        api.http.patch(f"automations/{trigger['id']}", json={"enabled": True}).raise_for_status()
