"""The Blocks: register from the package, save with a secret, load back into client credentials."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_prefect_block_register_finds_both_blocks_in_the_package() -> None:
    from prefect.settings import get_current_settings

    api = get_current_settings().api.url
    assert api, "the harness provides an API"
    prefect = str(Path(sys.executable).parent / "prefect")
    env = {**os.environ, "PREFECT_API_URL": api}
    out = subprocess.run(
        [prefect, "block", "register", "-m", "xnat_flows"], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "XNAT Credentials" in out.stdout and "XNAT DICOM Receiver" in out.stdout


def test_credentials_block_round_trip_keeps_the_password_secret() -> None:
    from xnat_flows.blocks import XnatCredentials
    from xnat_flows.models import XnatConnection
    from xnat_flows.tasks.connection import credentials_for

    XnatCredentials(url="https://xnat.example.org/", username="svc", password="block-secret-42").save(
        "site-a", overwrite=True
    )
    loaded = XnatCredentials.load("site-a")
    assert "block-secret-42" not in repr(loaded)

    credentials = credentials_for(XnatConnection(credentials_block="site-a"))
    assert credentials.username == "svc"
    assert credentials.password.get_secret_value() == "block-secret-42"
    assert credentials.url == "https://xnat.example.org"


def test_block_is_a_credentials_block_with_a_cached_client() -> None:
    from prefect.blocks.abstract import CredentialsBlock

    from xnat_flows.blocks import XnatCredentials

    block = XnatCredentials(url="https://xnat.example.org", username="svc", password="block-secret-43")
    assert isinstance(block, CredentialsBlock)
    client = block.get_client()
    assert client is block.get_client()  # one client (one login, one pool) per process and credentials
    assert client is not XnatCredentials(url="https://xnat.example.org", username="other", password="x").get_client()


def test_a_blocks_password_goes_only_to_its_own_server() -> None:
    """An event-started run names the event's server; a Block must not send its password elsewhere."""
    from xnat_flows.blocks import XnatCredentials
    from xnat_flows.client.errors import InputError
    from xnat_flows.models import XnatConnection
    from xnat_flows.tasks.connection import credentials_for

    block = XnatCredentials(url="https://xnat.example.org/", username="svc", password="block-secret-44")
    assert credentials_for(XnatConnection(credentials=block, url="https://xnat.example.org")).username == "svc"
    with pytest.raises(InputError, match="only to its own server") as refused:
        credentials_for(XnatConnection(credentials=block, url="https://evil.example.net"))
    assert "block-secret-44" not in str(refused.value)


def test_deploy_step_requires_the_block_and_leaves_unset_inbox_values_out(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from xnat_flows import deploy_steps
    from xnat_flows.blocks import XnatCredentials

    monkeypatch.delenv("XNAT_CREDENTIALS_BLOCK", raising=False)
    with pytest.raises(deploy_steps.MissingSiteValue, match="XNAT_CREDENTIALS_BLOCK is not set"):
        deploy_steps.site_values()
    monkeypatch.setenv("XNAT_CREDENTIALS_BLOCK", "no-such-block-here")
    with pytest.raises(deploy_steps.MissingSiteValue, match="no xnat-credentials Block of that name"):
        deploy_steps.site_values()
    block_id = XnatCredentials(url="https://xnat.example.org", username="svc", password="p").save(
        "site-step", overwrite=True
    )
    monkeypatch.setenv("XNAT_CREDENTIALS_BLOCK", "site-step")
    monkeypatch.delenv("XNAT_INBOX_DIR", raising=False)
    monkeypatch.setenv("XNAT_INBOX_PROJECT", "STUDY1")
    assert deploy_steps.site_values() == {
        "credentials_block": "site-step",
        # Deployments reference the Block by id: the form the UI's Block picker shows as selected.
        "credentials_ref": {"$ref": {"block_document_id": str(block_id)}},
        "inbox_active": False,
        "inbox_project": "STUDY1",
    }
    (tmp_path / "inbox").mkdir()
    monkeypatch.setenv("XNAT_INBOX_DIR", str(tmp_path / "inbox"))
    assert deploy_steps.site_values()["inbox_active"] is True


def test_deploy_step_stops_at_an_inbox_that_does_not_exist_unless_asked_to_create_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from xnat_flows import deploy_steps
    from xnat_flows.blocks import XnatCredentials

    XnatCredentials(url="https://xnat.example.org", username="svc", password="p").save("site-inbox", overwrite=True)
    inbox = tmp_path / "srv" / "xnat-inbox"
    monkeypatch.setenv("XNAT_CREDENTIALS_BLOCK", "site-inbox")
    monkeypatch.setenv("XNAT_INBOX_PROJECT", "STUDY1")
    monkeypatch.setenv("XNAT_INBOX_DIR", str(inbox))
    monkeypatch.delenv("XNAT_INBOX_CREATE", raising=False)
    with pytest.raises(deploy_steps.MissingSiteValue, match="does not exist") as refused:
        deploy_steps.site_values()
    assert f"mkdir -p {inbox}" in str(refused.value) and "XNAT_INBOX_CREATE=1" in str(refused.value)
    assert not inbox.exists()

    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("XNAT_INBOX_DIR", str(tmp_path / "a-file"))
    with pytest.raises(deploy_steps.MissingSiteValue, match="is not a folder"):
        deploy_steps.site_values()

    monkeypatch.setenv("XNAT_INBOX_DIR", str(inbox))
    monkeypatch.setenv("XNAT_INBOX_CREATE", "1")
    assert deploy_steps.site_values()["inbox_dir"] == str(inbox)
    assert inbox.is_dir() and "created the inbox folder" in capsys.readouterr().err
