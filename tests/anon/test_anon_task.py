"""The ``anon-check`` Prefect task as a gate before an upload: it fails the flow when identifiers
survive (so the upload step never runs) and leaves a markdown artifact without original values."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from anon_helpers import make_dataset, to_part10
from prefect import flow

from xnat_flows.anon import ScriptError
from xnat_flows.blocks import XnatCredentials
from xnat_flows.models import Deidentification, XnatConnection
from xnat_flows.tasks.anon import AnonCheckSummary, IdentifiersSurvive, anon_check

pytestmark = [pytest.mark.usefixtures("prefect_harness")]

DEFAULT = (Path(__file__).parent / "fixtures" / "xnat_default_id.das").read_text()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for number in range(2):
        ds = make_dataset()
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.1.1.{number + 10}"
        (tmp_path / f"IM{number}").write_bytes(to_part10(ds))
    return tmp_path


def _artifact_markdown(key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    assert artifacts, f"no artifact {key}"
    return str(artifacts[0].data)


def test_gate_stops_the_upload_when_identifiers_survive(folder: Path) -> None:
    uploaded: list[str] = []

    @flow
    def deidentify_then_upload(script: str) -> None:
        anon_check(
            str(folder),
            script=script,
            variables={"project": "P", "subject": "S", "session": "S_MR1"},
            artifact_key="gate-check",
        )
        uploaded.append("sent")

    with pytest.raises(IdentifiersSurvive, match="PatientBirthDate"):
        deidentify_then_upload(DEFAULT)
    assert uploaded == []
    markdown = _artifact_markdown("gate-check")
    assert "PatientBirthDate" in markdown and "NOT OK" in markdown
    assert "Doe^Jane" not in markdown and "MRN0001" not in markdown


def test_gate_passes_with_the_profile(folder: Path) -> None:
    @flow
    def check_profile() -> AnonCheckSummary:
        return anon_check(str(folder), profile="basic", artifact_key="profile-check")

    summary = check_profile()
    assert summary.ok and summary.files == 2 and summary.surviving == []
    assert "OK" in _artifact_markdown("profile-check")


def test_a_broken_script_fails_at_once(folder: Path) -> None:
    @flow
    def check_broken() -> None:
        anon_check(str(folder), script='version "6.1"\n(0010,0010) := nosuch[]')

    with pytest.raises(ScriptError, match="2:16"):
        check_broken()


def test_gate_checks_what_an_upload_flow_given_the_same_deidentify_applies(folder: Path, xnat_emulator) -> None:
    """``deidentify`` + ``connection``: XNAT's enabled site script, then the request's profile,
    fetched and chained as ``prepare_anonymizer`` does for the upload flow."""
    with httpx.Client(base_url=xnat_emulator.url, auth=("admin", xnat_emulator.password)) as admin:
        admin.put("/data/config/anon/script", params={"status": "enabled"}, content=DEFAULT)
    connection = XnatConnection(
        credentials=XnatCredentials(url=xnat_emulator.url, username="admin", password=xnat_emulator.password)
    )

    @flow
    def check_request(deidentify: Deidentification) -> AnonCheckSummary:
        return anon_check(
            str(folder),
            deidentify=deidentify,
            connection=connection,
            project="TEST",
            variables={"subject": "S", "session": "S_MR1"},
            fail_on_survivors=False,
            artifact_key="request-check",
        )

    site_only = check_request(Deidentification(from_server=True))
    assert site_only.program == "site script v1" and not site_only.ok
    assert "PatientBirthDate" in site_only.surviving  # XNAT's default script keeps it
    both = check_request(Deidentification(from_server=True, profile="basic"))
    assert both.program == "site script v1, then basic profile" and both.ok and both.surviving == []
    assert both.digest != site_only.digest
    with pytest.raises(ValueError, match="not both"):
        anon_check.fn(str(folder), profile="basic", deidentify=Deidentification(profile="basic"))
