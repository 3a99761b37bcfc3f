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
    out = subprocess.run([prefect, "block", "register", "-m", "xnat_flows"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "XNAT Credentials" in out.stdout and "XNAT DICOM Receiver" in out.stdout


def test_credentials_block_round_trip_keeps_the_password_secret() -> None:
    from xnat_flows.blocks import XnatCredentials
    from xnat_flows.models import XnatConnection
    from xnat_flows.tasks.connection import credentials_for

    XnatCredentials(url="https://xnat.example.org/", username="svc", password="block-secret-42").save("site-a", overwrite=True)
    loaded = XnatCredentials.load("site-a")
    assert "block-secret-42" not in repr(loaded)

    credentials = credentials_for(XnatConnection(credentials_block="site-a"))
    assert credentials.username == "svc"
    assert credentials.password.get_secret_value() == "block-secret-42"
    assert credentials.url == "https://xnat.example.org"
