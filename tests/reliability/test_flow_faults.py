"""Faults met by the Prefect flow itself (its tasks each open their own client)."""

from __future__ import annotations

from pathlib import Path

import pytest

from xnat_flows.testing.synth import write_studies

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness")]

PASSWORD = "flow-faults-pw-77d0"


def test_token_evicted_mid_flow_with_eight_batches_costs_one_relogin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, xnat_emulator_factory
) -> None:
    from xnat_flows.flows.upload import upload_dicom_session
    from xnat_flows.models import UploadRequest, XnatConnection

    manifest = write_studies(tmp_path / "export", series=2, instances=16, instance_kb=4, seed=51)
    monkeypatch.setenv("XNAT_PASS", PASSWORD)
    xnat = xnat_emulator_factory(tmp_path / "xnat", projects=("FF",), password=PASSWORD, rebuild_idle_seconds=0.5)
    logins: list[str] = []
    original = xnat.sessions.login
    monkeypatch.setattr(xnat.sessions, "login", lambda user: logins.append(user) or original(user))
    # Every batch is in flight when the token is evicted: all eight see a 401.
    xnat.faults.add(method="POST", path=r"/data/services/import", evict_token=True, delay_ms=200, times=1)
    xnat.faults.add(method="POST", path=r"/data/services/import", delay_ms=400, times=7)

    result = upload_dicom_session(
        UploadRequest(
            source_dir=str(tmp_path / "export"),
            project="FF",
            subject="S",
            session="E",
            workers=8,
            verify_timeout_seconds=30,
        ),
        XnatConnection(url=xnat.url, username="admin"),
    )

    assert result.sessions[0].verified and result.sessions[0].files_sent == len(manifest.files)
    assert len(logins) == 2, f"{len(logins)} logins: the check-server login and one shared re-login expected"
