"""The ``process-xnat-session`` flow (DICOM -> NIfTI with dcm2niix, attached as NIFTI) and the
``download-xnat-session`` flow, run for real on Prefect's test harness against the emulator."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from xnat_flows.client.client import XnatClient
from xnat_flows.client.credentials import resolve_credentials
from xnat_flows.events import SESSION_PROCESSED
from xnat_flows.flows.download import DownloadRequest, download_xnat_session
from xnat_flows.flows.processing import ConversionFailedError, ProcessingOptions, process_xnat_session
from xnat_flows.manage.resources import ResourceTarget, list_resource_files, upload_resource
from xnat_flows.models import XnatConnection
from xnat_flows.processing import nifti
from xnat_flows.testing import XnatEmulator
from xnat_flows.testing.synth import write_studies
from xnat_flows.transfer.scan import scan_directory
from xnat_flows.transfer.session import upload_session
from xnat_flows.transfer.target import UploadTarget

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness")]
PASSWORD = "proc-test-password-3b9e"


@pytest.fixture
def xnat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, xnat_emulator_factory) -> XnatEmulator:
    monkeypatch.setenv("XNAT_PASS", PASSWORD)
    return xnat_emulator_factory(tmp_path / "xnat", projects=("PROC",), password=PASSWORD, rebuild_idle_seconds=0.3)


@pytest.fixture
def client(xnat: XnatEmulator):
    credentials = resolve_credentials(url=xnat.url, username="admin", password=PASSWORD, prompt=False)
    with XnatClient(credentials, token_cache=None) as client:
        yield client


@pytest.fixture
def session(xnat: XnatEmulator, client: XnatClient, tmp_path: Path) -> str:
    """An archived session of 2 MR series (synthetic, with real geometry: dcm2niix converts them)."""
    write_studies(tmp_path / "export", series=2, instances=10, instance_kb=16, seed=11)
    result = upload_session(client, scan_directory(tmp_path / "export"), UploadTarget("PROC", "SUB01", "SUB01_MR1"))
    assert result.ok
    return result.sessions[0].verify.experiment_id  # type: ignore[union-attr]


def _connection(xnat: XnatEmulator) -> XnatConnection:
    return XnatConnection(url=xnat.url, username="admin")


def _processed(events_worker) -> list:
    events_worker.drain()
    return [e for e in events_worker._client.events if e.event == SESSION_PROCESSED]


def test_converts_every_dicom_scan_attaches_nifti_and_announces_it(
    xnat: XnatEmulator, client: XnatClient, session: str, tmp_path: Path, events_worker
) -> None:
    scratch = tmp_path / "scratch"
    result = process_xnat_session(
        "PROC", session, "SUB01", _connection(xnat), ProcessingOptions(scratch_dir=str(scratch))
    )
    assert [s.status for s in result.scans] == ["converted", "converted"]
    for outcome in result.scans:
        stored = list_resource_files(client, ResourceTarget(session=session, scan=outcome.scan), "NIFTI")
        names = sorted(f.name for f in stored)
        assert names == sorted(outcome.files)
        assert f"sub-SUB01_ses-SUB01MR1_acq-T1MPRAGE{outcome.scan}_run-{outcome.scan}_T1w.nii.gz" in names
        assert any(name.endswith("_T1w.json") for name in names)
        volume = next(f for f in stored if f.name.endswith(".nii.gz"))
        assert (
            volume.size > 1000 and httpx.get(xnat.url + volume.uri, auth=("admin", PASSWORD)).content[:2] == b"\x1f\x8b"
        )
    assert list(scratch.iterdir()) == []  # the scratch directory is gone
    (event,) = _processed(events_worker)
    assert event.resource["xnat.experiment_id"] == session
    assert event.payload["resource"] == "NIFTI" and set(event.payload["produced"]) == {"1", "2"}

    # A re-run finds NIFTI on every scan: nothing converted, nothing changed, nothing announced.
    again = process_xnat_session("PROC", session, None, _connection(xnat), ProcessingOptions(scratch_dir=str(scratch)))
    assert [s.status for s in again.scans] == ["skipped", "skipped"]
    assert len(_processed(events_worker)) == 1
    assert again.subject == "SUB01"  # read from XNAT when the event had none

    # replace: converted again, an older file of another name removed, NIFTI holds the new outputs only.
    stale = tmp_path / "old_T1w.nii.gz"
    stale.write_bytes(b"old")
    upload_resource(client, ResourceTarget(session=session, scan="1"), "NIFTI", stale)
    replaced = process_xnat_session(
        "PROC", session, "SUB01", _connection(xnat), ProcessingOptions(replace=True, scans=["1"])
    )
    assert [(s.scan, s.status) for s in replaced.scans] == [("1", "converted")]
    names = sorted(f.name for f in list_resource_files(client, ResourceTarget(session=session, scan="1"), "NIFTI"))
    assert names == sorted(replaced.scans[0].files)


def test_a_scan_dcm2niix_cannot_convert_is_named_and_the_run_fails(
    xnat: XnatEmulator, client: XnatClient, session: str, tmp_path: Path, events_worker
) -> None:
    client.request(
        "PUT", f"/data/experiments/{session}/scans/99", params={"xsiType": "xnat:mrScanData", "type": "junk"}
    )
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"this is not DICOM at all" * 50)
    upload_resource(client, ResourceTarget(session=session, scan="99"), "DICOM", junk)
    scratch = tmp_path / "scratch"
    state = process_xnat_session(
        "PROC", session, "SUB01", _connection(xnat), ProcessingOptions(scratch_dir=str(scratch)), return_state=True
    )
    assert state.is_failed()
    assert "1 of 3 scan(s) of SUB01_MR1 not converted: scan 99 (junk): dcm2niix (exit 2)" in state.message
    assert "Unable to find any DICOM images" in state.message  # dcm2niix's own words
    with pytest.raises(ConversionFailedError):
        state.result()
    for scan in ("1", "2"):  # the others were converted and attached all the same
        assert list_resource_files(client, ResourceTarget(session=session, scan=scan), "NIFTI")
    (event,) = _processed(events_worker)
    assert set(event.payload["produced"]) == {"1", "2"} and "99" in event.payload["failed"]
    assert list(scratch.iterdir()) == []


def test_a_session_without_dicom_is_said_not_failed(xnat: XnatEmulator, client: XnatClient, events_worker) -> None:
    client.request(
        "PUT", "/data/projects/PROC/subjects/S9/experiments/S9_EMPTY", params={"xsiType": "xnat:mrSessionData"}
    )
    state = process_xnat_session("PROC", "S9_EMPTY", "S9", _connection(xnat), return_state=True)
    assert state.is_completed()
    result = state.result()
    assert result.scans == [] and result.label == "S9_EMPTY"
    assert _processed(events_worker) == []


def test_missing_dcm2niix_says_which_extra_to_install(
    xnat: XnatEmulator, session: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "dcm2niix", None)  # the wheel is not installed
    monkeypatch.setenv("PATH", "/nonexistent")  # nor Debian's dcm2niix
    with pytest.raises(nifti.ToolNotInstalledError, match="dcm2niix is not installed") as caught:
        nifti.find_dcm2niix()
    assert "pip install 'xnat-flows[processing]'" in str(caught.value)
    state = process_xnat_session("PROC", session, "SUB01", _connection(xnat), return_state=True)
    assert state.is_failed() and "xnat-flows[processing]" in state.message


def test_download_flow_fetches_the_session(xnat: XnatEmulator, session: str, tmp_path: Path) -> None:
    result = download_xnat_session(
        DownloadRequest(session="PROC/SUB01/SUB01_MR1", dest=str(tmp_path / "dl"), scans=["2"], layout="flat"),
        _connection(xnat),
    )
    assert result.ok and result.files == 5 and result.digests_checked == 5
    assert len(list((tmp_path / "dl" / "SUB01_MR1" / "2").iterdir())) == 5


def test_each_scan_holds_a_slot_of_the_servers_processing_limit(
    xnat: XnatEmulator, client: XnatClient, session: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from xnat_flows.tasks import policies

    name = "xnat-processing:" + xnat.url.split("://", 1)[1]
    held: list[tuple[str, int]] = []
    real = policies.concurrency

    def recording(names, occupy, strict):
        held.append((names, occupy))
        return real(names, occupy=occupy, strict=strict)

    monkeypatch.setattr(policies, "concurrency", recording)
    # An empty NIFTI resource (a run stopped between creating it and uploading) is no result: converted.
    client.request("PUT", f"/data/experiments/{session}/scans/1/resources/NIFTI")
    first = process_xnat_session("PROC", session, "SUB01", _connection(xnat), ProcessingOptions(scans=["1"]))
    assert [(s.scan, s.status) for s in first.scans] == [("1", "converted")]
    assert held == []  # no limit created by the site: processing is not capped
    with get_client(sync_client=True) as prefect:
        prefect.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        try:
            result = process_xnat_session(
                "PROC", session, "SUB01", _connection(xnat), ProcessingOptions(scans=["1", "2"], replace=True)
            )
        finally:
            prefect.delete_global_concurrency_limit_by_name(name)
    assert [s.status for s in result.scans] == ["converted", "converted"]
    assert held == [(name, 1), (name, 1)]  # one slot per scan's download, conversion and upload
