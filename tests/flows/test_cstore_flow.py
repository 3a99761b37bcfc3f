"""The ``send-dicom`` flow and ``session upload-dicom`` against the emulator's DICOM receiver."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from xnat_flows.cli.main import app
from xnat_flows.client.errors import XnatError
from xnat_flows.flows.cstore import send_dicom
from xnat_flows.models import DicomReceiverTarget, SendDicomRequest
from xnat_flows.testing import XnatEmulator
from xnat_flows.testing.pytest_plugin import wait_until
from xnat_flows.testing.synth import write_studies

pytestmark = [pytest.mark.e2e]


@pytest.fixture
def xnat(tmp_path: Path, xnat_emulator_factory) -> XnatEmulator:
    return xnat_emulator_factory(
        tmp_path / "xnat", projects=("CSTORE",), scp_port=0, scp_aet="XNAT", rebuild_idle_seconds=0.3
    )


def _wait_archived(xnat: XnatEmulator, project: str, timeout: float = 20.0) -> list[dict]:
    return wait_until(
        lambda: xnat.archived_experiments(project),
        timeout,
        interval=0.2,
        what=lambda: f"an archived session in {project}: prearchive={xnat.prearchive_sessions()}",
    )


@pytest.mark.usefixtures("prefect_harness")
def test_send_dicom_flow_routes_to_project_and_archives_every_instance(xnat, tmp_path: Path) -> None:
    manifest = write_studies(tmp_path / "export", series=2, instances=20, instance_kb=8, seed=11)
    result = send_dicom(
        SendDicomRequest(
            source_dir=str(tmp_path / "export"),
            workers=2,
            routing_project="CSTORE",
            routing_subject="SUBJ_C",
            routing_session="SESS_C",
        ),
        DicomReceiverTarget(host="127.0.0.1", port=xnat.scp_port, called_aet="XNAT"),
    )
    assert len(result.sent) == len(manifest.files) and result.failed == []
    (experiment,) = _wait_archived(xnat, "CSTORE")
    assert experiment["label"] == "SESS_C"
    assert len(xnat.archived_files(experiment["ID"])) == len(manifest.files)
    # The user's files were not touched by the routing override.
    assert all("Project:" not in path.path.read_bytes()[:4096].decode("latin-1") for path in manifest.files)


@pytest.mark.usefixtures("prefect_harness")
def test_send_dicom_flow_fails_clearly_on_wrong_called_aet(xnat, tmp_path: Path) -> None:
    write_studies(tmp_path / "export", series=1, instances=2, instance_kb=4, seed=12)
    with pytest.raises(XnatError) as raised:
        send_dicom(
            SendDicomRequest(source_dir=str(tmp_path / "export")),
            DicomReceiverTarget(host="127.0.0.1", port=xnat.scp_port, called_aet="WRONGAET"),
        )
    assert "WRONGAET" in str(raised.value)


def test_cli_upload_dicom(xnat, tmp_path: Path) -> None:
    manifest = write_studies(tmp_path / "export", series=2, instances=6, instance_kb=4, seed=13)
    outcome = CliRunner().invoke(
        app,
        [
            "session",
            "upload-dicom",
            str(tmp_path / "export"),
            "--host",
            "127.0.0.1",
            "--port",
            str(xnat.scp_port),
            "--called-aet",
            "XNAT",
            "--workers",
            "2",
            "-P",
            "CSTORE",
            "-S",
            "SUBJ_CLI",
            "-E",
            "SESS_CLI",
            "--url",
            xnat.url,
            "--username",
            "admin",
        ],
        env={"XNAT_PASS": "admin"},  # -P needs a login: the project is checked first
    )
    assert outcome.exit_code == 0, outcome.output
    assert f"{len(manifest.files)} sent, 0 failed" in outcome.output
    (experiment,) = _wait_archived(xnat, "CSTORE")
    assert experiment["label"] == "SESS_CLI"


def test_cli_upload_dicom_wrong_port_says_what_to_check(tmp_path: Path) -> None:
    write_studies(tmp_path / "export", series=1, instances=1, instance_kb=4, seed=14)
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    outcome = CliRunner().invoke(
        app, ["session", "upload-dicom", str(tmp_path / "export"), "--host", "127.0.0.1", "--port", str(closed_port)]
    )
    assert outcome.exit_code not in (0, 6)
    assert "port" in outcome.output.lower()


@pytest.mark.usefixtures("prefect_harness")
def test_a_receiver_that_recovers_is_completed_by_a_task_retry(xnat, tmp_path: Path, monkeypatch) -> None:
    """The receiver refuses every attempt of the first task run (0xA700, out of resources): the
    task raises, Prefect retries it, and the retry sends what is missing."""
    from xnat_flows.flows import cstore as cstore_flow

    manifest = write_studies(tmp_path / "export", series=1, instances=4, instance_kb=4, seed=15)
    real_ingest = xnat._scp.ingest
    calls: list[bool] = []

    def busy_for_one_task_run(part10: bytes, calling_aet: str):
        calls.append(len(calls) >= 12)  # 4 instances x 3 attempts inside the first task run
        if not calls[-1]:
            raise RuntimeError("importer busy")
        return real_ingest(part10, calling_aet)

    monkeypatch.setattr(xnat._scp, "ingest", busy_for_one_task_run)
    monkeypatch.setattr(cstore_flow, "send_instances", cstore_flow.send_instances.with_options(retry_delay_seconds=0))
    result = send_dicom(
        SendDicomRequest(source_dir=str(tmp_path / "export"), workers=1, routing_project="CSTORE"),
        DicomReceiverTarget(host="127.0.0.1", port=xnat.scp_port, called_aet="XNAT"),
    )
    assert result.failed == [] and len(result.sent) == len(manifest.files) and result.resumed == 0
    assert calls.count(False) == 12 and calls.count(True) == len(manifest.files)


@pytest.mark.usefixtures("prefect_harness")
def test_associations_hold_slots_of_the_receivers_concurrency_limit(xnat, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from xnat_flows.tasks.policies import receiver_limit_name

    name = receiver_limit_name("127.0.0.1", xnat.scp_port)
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=2))
    try:
        manifest = write_studies(tmp_path / "export", series=2, instances=40, instance_kb=4, seed=16)
        result = send_dicom(
            SendDicomRequest(source_dir=str(tmp_path / "export"), workers=4, routing_project="CSTORE"),
            DicomReceiverTarget(host="127.0.0.1", port=xnat.scp_port, called_aet="XNAT"),
        )
        assert len(result.sent) == len(manifest.files)
        assert {a.worker for a in result.associations} <= {0, 1}  # 4 asked, the limit holds 2
        with get_client(sync_client=True) as client:
            assert client.read_global_concurrency_limit_by_name(name).active_slots == 0  # all released
    finally:
        with get_client(sync_client=True) as client:
            client.delete_global_concurrency_limit_by_name(name)


def test_cli_upload_dicom_rerun_sends_only_what_was_not_stored(xnat, tmp_path: Path, monkeypatch) -> None:
    manifest = write_studies(tmp_path / "export", series=1, instances=8, instance_kb=4, seed=17)
    real_ingest = xnat._scp.ingest
    refused = {f.sop_instance_uid for f in manifest.files[:3]}
    stored: list[str] = []
    refusing = True

    def ingest(part10: bytes, calling_aet: str):
        import pydicom

        uid = pydicom.dcmread(pydicom.filebase.DicomBytesIO(part10), stop_before_pixels=True).SOPInstanceUID
        if refusing and uid in refused:
            raise RuntimeError("importer out of resources")  # -> 0xA700
        stored.append(uid)
        return real_ingest(part10, calling_aet)

    monkeypatch.setattr(xnat._scp, "ingest", ingest)
    args = [
        "session",
        "upload-dicom",
        str(tmp_path / "export"),
        "--host",
        "127.0.0.1",
        "--port",
        str(xnat.scp_port),
        "--workers",
        "2",
        "-P",
        "CSTORE",
        "-S",
        "SUBJ_R",
        "-E",
        "SESS_R",
        "--url",
        xnat.url,
        "--username",
        "admin",
    ]
    first = CliRunner().invoke(app, args, env={"XNAT_PASS": "admin"})
    assert first.exit_code == 6, first.output
    assert "0xA700" in first.output and "run the same command again" in first.output
    assert len(stored) == len(manifest.files) - 3

    refusing = False
    second = CliRunner().invoke(app, args, env={"XNAT_PASS": "admin"})
    assert second.exit_code == 0, second.output
    assert f"{len(manifest.files) - 3} instances were delivered by an earlier run" in second.output
    assert sorted(stored[len(manifest.files) - 3 :]) == sorted(refused)  # only those were sent again


@pytest.mark.usefixtures("prefect_harness")
def test_send_dicom_verify_announces_an_archived_study_once(
    xnat, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, events_worker
) -> None:
    """A re-run of send-dicom with verify whose journal says every instance was delivered
    (0 sent) finds the study archived again; it must not emit ``xnat.session.archived`` again, or
    processing would run twice. A run that sent the instances but did not announce them (no verify,
    or its wait timed out) leaves the announcement to the next verifying run."""
    from xnat_flows.events import SESSION_ARCHIVED
    from xnat_flows.models import XnatConnection

    monkeypatch.setenv("XNAT_PASS", "admin")
    manifest = write_studies(tmp_path / "export", series=1, instances=4, instance_kb=4, seed=18)
    request = SendDicomRequest(
        source_dir=str(tmp_path / "export"),
        workers=1,
        routing_project="CSTORE",
        routing_subject="SUBJ_V",
        routing_session="SESS_V",
        verify_timeout_seconds=30,
    )
    receiver = DicomReceiverTarget(host="127.0.0.1", port=xnat.scp_port, called_aet="XNAT")
    connection = XnatConnection(url=xnat.url, username="admin")

    def archived_events() -> list[str]:
        events_worker.wait_until_empty()
        return [e.resource["xnat.experiment_id"] for e in events_worker._client.events if e.event == SESSION_ARCHIVED]

    unverified = send_dicom(request, receiver, connection)
    assert len(unverified.sent) == len(manifest.files) and unverified.archived == []
    verify = request.model_copy(update={"verify": True})
    verified = send_dicom(verify, receiver, connection)
    assert verified.sent == [] and verified.resumed == len(manifest.files)
    (study,) = verified.archived
    assert archived_events() == [study.experiment_id]  # the first announcement of these instances

    again = send_dicom(verify, receiver, connection)
    assert again.sent == [] and again.archived == verified.archived
    assert archived_events() == [study.experiment_id]  # not twice


def test_the_receiver_form_fields_take_a_value_without_picking_a_type_first() -> None:
    """Optional (``X | None``) fields render in Prefect's form as "Property is type None" until the
    operator picks a type; the receiver's fields have plain defaults instead."""
    from prefect.utilities.callables import parameter_schema

    from xnat_flows.flows.cstore import send_dicom

    schema = parameter_schema(send_dicom).model_dump_for_openapi()
    fields = schema["definitions"]["DicomReceiverTarget"]["properties"]
    for name, kind in (("host", "string"), ("port", "integer"), ("called_aet", "string"), ("calling_aet", "string")):
        assert "anyOf" not in fields[name] and fields[name]["type"] == kind, fields[name]
        assert fields[name]["title"] and fields[name]["description"]


@pytest.mark.usefixtures("prefect_harness")
def test_instances_in_doubt_fail_an_unverified_run_and_a_verified_run_checks_the_archive(
    xnat, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receiver aborts the association on the 6th instance, which is then sent again: the
    receiver may hold it twice. Without verify the run cannot call that delivered (Failed, saying
    what to check); with verify it looks in the archive and completes when every instance is there."""
    from xnat_flows.flows.cstore import SendInDoubtError
    from xnat_flows.models import XnatConnection
    from xnat_flows.testing.scp import ScpFaults

    monkeypatch.setenv("XNAT_PASS", "admin")
    write_studies(tmp_path / "export", series=1, instances=12, instance_kb=4, seed=19)
    receiver = DicomReceiverTarget(host="127.0.0.1", port=xnat.scp_port, called_aet="XNAT")
    request = SendDicomRequest(
        source_dir=str(tmp_path / "export"),
        workers=1,
        routing_project="CSTORE",
        routing_subject="S",
        routing_session="D1",
    )
    xnat.dicom_receiver.set_faults(ScpFaults(abort_after_stores=5))
    state = send_dicom(request, receiver, return_state=True)
    assert state.is_failed() and "SendInDoubtError" in state.message and "got no answer" in state.message
    with pytest.raises(SendInDoubtError):
        state.result()

    other = write_studies(tmp_path / "other", series=1, instances=12, instance_kb=4, seed=20)  # another study
    xnat.dicom_receiver.set_faults(ScpFaults(abort_after_stores=xnat.dicom_receiver.stores_seen + 3))
    verified = send_dicom(
        request.model_copy(
            update={
                "source_dir": str(tmp_path / "other"),
                "routing_session": "D2",
                "verify": True,
                "verify_timeout_seconds": 30,
            }
        ),
        receiver,
        XnatConnection(url=xnat.url, username="admin"),
    )
    assert len(verified.in_doubt) == 1 and len(verified.sent) == len(other.files)
    (study,) = verified.archived
    assert study.label == "D2" and study.files_found == len(other.files)


@pytest.mark.usefixtures("prefect_harness")
def test_an_unknown_routing_project_is_refused_before_anything_is_sent(
    xnat, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """XNAT files the instances of a project it does not know under Unassigned in its prearchive.
    The CLI asked XNAT first and refused; the flow sent them. One sequence now: the flow too asks
    the XNAT of its connection, before reading or sending anything."""
    from xnat_flows.models import XnatConnection

    monkeypatch.setenv("XNAT_PASS", "admin")
    write_studies(tmp_path / "export", series=1, instances=4, instance_kb=4, seed=21)
    with pytest.raises(XnatError) as raised:
        send_dicom(
            SendDicomRequest(source_dir=str(tmp_path / "export"), routing_project="NOSUCH"),
            DicomReceiverTarget(host="127.0.0.1", port=xnat.scp_port, called_aet="XNAT"),
            XnatConnection(url=xnat.url, username="admin"),
        )
    assert "NOSUCH" in str(raised.value) and "does not exist" in str(raised.value)
    assert xnat.dicom_receiver.stores_seen == 0
    assert xnat.prearchive_sessions(include_direct_archive=True) == [] and xnat.archived_experiments() == []


@pytest.mark.usefixtures("prefect_harness")
def test_duplicates_chooses_which_of_two_files_of_one_instance_is_sent(xnat, tmp_path: Path) -> None:
    """The request's ``duplicates`` is the scan's choice, as for the REST upload: of two different
    files holding one SOP Instance UID (a corrected re-export beside the original) the newest (the
    default) or the oldest by modification time is sent, or nothing at all with ``stop``."""
    import os

    import pydicom

    manifest = write_studies(tmp_path / "export", series=1, instances=3, instance_kb=4, seed=19)
    original = manifest.files[1].path
    corrected = tmp_path / "export" / "zz_corrected" / "IM1"
    corrected.parent.mkdir()
    ds = pydicom.dcmread(original)
    ds.ImageComments = "corrected re-export"  # PatientComments carries the routing on the sent copy
    ds.save_as(corrected, enforce_file_format=True)
    stamp = original.stat().st_mtime_ns + 10**9
    os.utime(corrected, ns=(stamp, stamp))
    receiver = DicomReceiverTarget(host="127.0.0.1", port=xnat.scp_port, called_aet="XNAT")

    def send(label: str, **choice: str):
        request = SendDicomRequest(
            source_dir=str(tmp_path / "export"),
            workers=1,
            routing_project="CSTORE",
            routing_subject="SUBJ_D",
            routing_session=label,
            **choice,
        )
        return send_dicom(request, receiver)

    def archived_comments(label: str) -> list[str]:
        (experiment,) = wait_until(
            lambda: [e for e in xnat.archived_experiments("CSTORE") if e["label"] == label],
            20.0,
            interval=0.2,
            what=lambda: f"session {label} archived: prearchive={xnat.prearchive_sessions()}",
        )
        files = xnat.archived_files(experiment["ID"]).values()
        return sorted(str(pydicom.dcmread(p, stop_before_pixels=True).get("ImageComments", "")) for p in files)

    newest = send("SESS_NEWEST")
    assert len(newest.sent) == len(manifest.files)
    assert newest.conflicts == [[original.relative_to(tmp_path / "export").as_posix(), "zz_corrected/IM1"]]
    assert archived_comments("SESS_NEWEST") == ["", "", "corrected re-export"]
    oldest = send("SESS_OLDEST", duplicates="oldest")
    assert len(oldest.sent) == len(manifest.files)
    assert archived_comments("SESS_OLDEST") == ["", "", ""]
    with pytest.raises(XnatError, match="held by different files"):
        send("SESS_STOP", duplicates="stop")
    assert [e for e in xnat.archived_experiments("CSTORE") if e["label"] == "SESS_STOP"] == []
    assert xnat.prearchive_sessions() == []  # refused before anything was sent
