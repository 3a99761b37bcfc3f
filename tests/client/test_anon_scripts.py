"""XNAT's anonymization scripts read from its configuration service (client.anon_scripts), against
the emulator's copy of those endpoints over a real socket."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from xnat_flows.client.anon_scripts import enabled_scripts, project_script, scripts_to_apply, site_script
from xnat_flows.client.client import XnatClient
from xnat_flows.client.credentials import Credentials, TokenCache
from xnat_flows.client.errors import InputError

SCRIPT = 'version "6.1"\n(0010,0010) := subject\n'


@pytest.fixture
def xnat(tmp_path: Path, xnat_emulator_factory):
    emulator = xnat_emulator_factory(tmp_path / "xnat")
    creds = Credentials(url=emulator.url, username="admin", password=SecretStr("admin"))
    with (
        XnatClient(creds, token_cache=TokenCache(tmp_path / "profile")) as client,
        httpx.Client(base_url=emulator.url, auth=("admin", "admin")) as admin,
    ):
        yield client, admin


def test_no_script_anywhere_is_none_and_asking_to_apply_them_stops(xnat) -> None:
    client, _ = xnat
    assert site_script(client) is None and project_script(client, "TEST") is None
    assert enabled_scripts(client, "TEST") == []
    with pytest.raises(InputError, match="no enabled anonymization script"):
        scripts_to_apply(client, "TEST")


def test_site_then_project_in_xnats_order_and_only_enabled_ones(xnat) -> None:
    client, admin = xnat
    admin.put("/data/config/anon/script", content=SCRIPT)
    admin.put("/data/projects/TEST/config/anon/projects/TEST", content=SCRIPT + "(0010,0020) := session\n")
    found = enabled_scripts(client, "TEST")
    assert [(s.scope, s.project, s.version) for s in found] == [("site", None, "1"), ("project", "TEST", "1")]
    assert found[1].contents.endswith("(0010,0020) := session\n") and found[1].name == "project TEST script v1"
    admin.put("/data/config/anon/script", params={"status": "disabled"})
    disabled = site_script(client)
    assert disabled is not None and not disabled.enabled and disabled.contents == SCRIPT
    assert [s.scope for s in enabled_scripts(client, "TEST")] == ["project"]
    assert [name for name, _ in scripts_to_apply(client, "TEST")] == ["project TEST script v1"]
    assert enabled_scripts(client, None) == []  # no project: the site script only, and it is off
