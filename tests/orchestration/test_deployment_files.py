"""prefect.yaml's deployments as a site deploys them, without running a flow: the Blocks register and
keep their secret, the docker and kubernetes flavours deploy, and a deploy that lacks a site value
says which.

On a Prefect server of this module's own (``module_prefect_server_url``): the flavours deployed here
carry the processing automation too, which must not react to the events of the flow runs that
test_deployments_e2e.py runs on the shared server meanwhile.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
import yaml
from orchestration_helpers import BLOCK, POOL, REPO_ROOT, PrefectApi, block_id_ref, cli_environment, run_cli, save_block

pytestmark = [pytest.mark.prefect_server, pytest.mark.slow]


@pytest.fixture(scope="module")
def cli_env(module_prefect_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment of every subprocess: this module's server, a private PREFECT_HOME, no XNAT_* of the caller."""
    return cli_environment(module_prefect_server_url, tmp_path_factory)


@pytest.fixture(scope="module")
def api(module_prefect_server_url: str) -> Iterator[PrefectApi]:
    client = PrefectApi(module_prefect_server_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def site(cli_env: dict[str, str]) -> None:
    """What a site has before it deploys: the Block types registered, its credentials Block saved
    (the deploy checks the name; no flow runs here, so no XNAT behind it) and the process pool."""
    registered = run_cli(["block", "register", "-m", "xnat_flows.blocks"], cli_env)
    assert registered.returncode == 0, registered.stdout + registered.stderr
    save_block(cli_env, BLOCK, "https://xnat.example.org")
    created = run_cli(["work-pool", "create", POOL, "--type", "process", "--overwrite"], cli_env)
    assert created.returncode == 0, created.stdout + created.stderr


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
    [
        ("docker", "docker", "xnat-docker", "docker", "volumes"),
        ("kubernetes", "kubernetes", "xnat-k8s", "k8s", "namespace"),
    ],
)
def test_docker_and_kubernetes_files_deploy(
    flavour: str,
    pool_type: str,
    pool: str,
    suffix: str,
    variable: str,
    site: None,
    cli_env: dict[str, str],
    api: PrefectApi,
) -> None:
    """The container flavours deploy as they are (running them needs Docker or a cluster, not tested here)."""
    created = run_cli(["work-pool", "create", pool, "--type", pool_type, "--overwrite"], cli_env)
    assert created.returncode == 0, created.stdout + created.stderr
    prefect_file = REPO_ROOT / "deployments" / flavour / "prefect.yaml"
    entries = yaml.safe_load(prefect_file.read_text())["deployments"]
    names = [e["name"] for e in entries if (REPO_ROOT / e["entrypoint"].split(":")[0]).is_file()]
    # The Block named, the inbox values not: the inbox schedule is created inactive.
    result = run_cli(
        ["--no-prompt", "deploy", "--prefect-file", str(prefect_file), *[a for n in names for a in ("-n", n)]],
        {**cli_env, "XNAT_CREDENTIALS_BLOCK": BLOCK},
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    upload = api.deployment("upload-dicom-session", f"upload-session-{suffix}")
    inbox = api.deployment("ingest-inbox", f"inbox-ingest-{suffix}")
    assert upload["work_pool_name"] == pool and variable in upload["job_variables"]
    assert upload["parameters"]["connection"] == block_id_ref(api)
    assert upload["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "/opt/xnat-flows"}}
    ]
    assert inbox["parameters"]["connection"] == block_id_ref(api)
    assert [s["active"] for s in inbox["schedules"]] == [False] and "inbox_dir" not in inbox["parameters"]


def test_deploy_without_site_values_says_what_is_missing(site: None, api: PrefectApi, cli_env: dict[str, str]) -> None:
    no_block = run_cli(["--no-prompt", "deploy", "-n", "inbox-ingest"], cli_env)
    assert no_block.returncode != 0 and "XNAT_CREDENTIALS_BLOCK is not set" in no_block.stdout + no_block.stderr
    unknown = run_cli(
        ["--no-prompt", "deploy", "-n", "inbox-ingest"], {**cli_env, "XNAT_CREDENTIALS_BLOCK": "no-such-block"}
    )
    assert unknown.returncode != 0 and "no xnat-credentials Block of that name" in unknown.stdout + unknown.stderr

    # Block named, inbox values not: deployed, with the schedule inactive (it would fail every 5 minutes).
    without_inbox = run_cli(
        ["--no-prompt", "deploy", "-n", "inbox-ingest"], {**cli_env, "XNAT_CREDENTIALS_BLOCK": BLOCK}
    )
    assert without_inbox.returncode == 0, (without_inbox.stdout + without_inbox.stderr)[-3000:]
    assert "schedule is created INACTIVE" in without_inbox.stdout + without_inbox.stderr
    inbox = api.deployment("ingest-inbox", "inbox-ingest")
    assert [s["active"] for s in inbox["schedules"]] == [False]
    assert not api.flow_runs(inbox["id"]) or all(r["state_type"] != "SCHEDULED" for r in api.flow_runs(inbox["id"]))
