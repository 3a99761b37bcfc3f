"""The ``upload-dicom-session`` flow, run for real on Prefect's test harness against the emulator."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId

from xnat_flows.client.errors import ConflictError, InputError
from xnat_flows.flows.upload import UploadIncompleteError, upload_dicom_session
from xnat_flows.models import UploadRequest, XnatConnection
from xnat_flows.testing.pytest_plugin import wait_until
from xnat_flows.testing.synth import write_studies
from xnat_flows.transfer.journal import UploadJournal
from xnat_flows.transfer.session import study_label

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness")]

PASSWORD = "flow-test-password-7f3a"


@pytest.fixture
def xnat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, xnat_emulator_factory):
    monkeypatch.setenv("XNAT_PASS", PASSWORD)
    return xnat_emulator_factory(tmp_path / "xnat", projects=("FLOWS",), password=PASSWORD, rebuild_idle_seconds=0.3)


def _request(source: Path, **overrides) -> UploadRequest:
    fields = dict(
        source_dir=str(source), project="FLOWS", subject="SUBJ01", session="SESS01", verify_timeout_seconds=30
    )
    return UploadRequest(**{**fields, **overrides})


@pytest.mark.parametrize(
    ("transport", "archive_format", "workers"),
    [("dicom-zip", "tar", 4), ("dicom-zip", "zip", 2), ("gradual-dicom", "tar", 4)],
)
def test_upload_lands_verified(xnat, tmp_path: Path, transport: str, archive_format: str, workers: int) -> None:
    # XNAT's idle interval would archive the session only after an hour: the flow's archive-now
    # task has it archived as soon as every file is in.
    xnat.prearchive.rebuild_idle_seconds = 3600
    manifest = write_studies(tmp_path / "export", series=3, instances=24, instance_kb=8, seed=3)
    request = _request(tmp_path / "export", transport=transport, archive_format=archive_format, workers=workers)

    result = upload_dicom_session(request, XnatConnection(url=xnat.url, username="admin"))

    (session,) = result.sessions
    assert session.verified is True and session.missing == []
    assert session.files_sent == len(manifest.files)
    assert session.experiment_id and session.experiment_id.startswith("XNAT_E")
    if transport == "dicom-zip":
        assert len(session.batches) == workers and all(b.ok for b in session.batches)
    (experiment,) = xnat.archived_experiments("FLOWS")
    assert experiment["label"] == "SESS01"
    assert len(xnat.archived_files(session.experiment_id)) == len(manifest.files)


def test_prearchive_destination_keeps_the_session_out_of_the_archive(xnat, tmp_path: Path) -> None:
    xnat.set_prearchive_code("FLOWS", 0)  # manual: XNAT holds uploads in the prearchive only then
    write_studies(tmp_path / "export", series=2, instances=6, instance_kb=4, seed=4)
    request = _request(tmp_path / "export", direct_archive=False, verify=False)

    result = upload_dicom_session(request, XnatConnection(url=xnat.url, username="admin"))

    assert result.sessions[0].session_uri.startswith("/data/prearchive/projects/FLOWS/")
    assert xnat.archived_experiments("FLOWS") == []


def test_multi_study_input_needs_per_study(xnat, tmp_path: Path) -> None:
    manifest = write_studies(tmp_path / "export", studies=2, series=1, instances=4, instance_kb=4, seed=5)
    request = _request(tmp_path / "export")

    with pytest.raises(InputError) as raised:
        upload_dicom_session(request, XnatConnection(url=xnat.url, username="admin"))
    for uid in manifest.study_uids:
        assert uid in str(raised.value)

    result = upload_dicom_session(
        request.model_copy(update={"per_study": True}), XnatConnection(url=xnat.url, username="admin")
    )
    assert sorted(s.session for s in result.sessions) == sorted(
        study_label("SESS01", uid) for uid in manifest.study_uids
    )
    assert all(s.verified for s in result.sessions)


def test_failed_batch_fails_the_run_and_a_rerun_sends_only_the_rest(xnat, tmp_path: Path) -> None:
    manifest = write_studies(tmp_path / "export", series=2, instances=16, instance_kb=4, seed=6)
    request = _request(tmp_path / "export", workers=4)
    # Every import after the first two answers with a permanent XNAT error.
    xnat.faults.add(
        method="POST",
        path=r"/data/services/import",
        status=400,
        message="Unable to identify subject.",
        after=2,
        times=100,
    )

    with pytest.raises(UploadIncompleteError) as raised:
        upload_dicom_session(request, XnatConnection(url=xnat.url, username="admin"))
    assert "re-run" in str(raised.value)

    xnat.faults.clear()
    imports_before = xnat.stats()["imports"]
    state = upload_dicom_session(request, XnatConnection(url=xnat.url, username="admin"), return_state=True)
    result = state.result()
    assert sum(1 for b in result.sessions[0].batches if b.resumed) == 2
    this_run = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:  # the operator's per-batch table says which were sent now
        (table,) = [a for a in client.read_artifacts(artifact_filter=this_run) if a.type == "table"]
    outcomes = sorted(row["outcome"] for row in json.loads(str(table.data)))
    assert outcomes == ["delivered by an earlier run: not sent again"] * 2 + ["sent"] * 2
    assert xnat.stats()["imports"] - imports_before == 2
    assert result.sessions[0].verified is True
    # Two meanings, one result (issue: the flow counted resumed files as sent, inflating throughput):
    # all files are in XNAT now, and this run sent only the two batches the first run did not land.
    resent = [b for b in result.sessions[0].batches if not b.resumed]
    assert result.sessions[0].files_delivered == result.files_delivered == len(manifest.files)
    assert result.files_sent == sum(len(b.files) for b in resent) < len(manifest.files)
    assert result.bytes_sent == sum(b.bytes for b in resent)
    assert result.throughput_mb_s == round(result.bytes_sent / 1e6 / result.upload_seconds, 2)


def test_no_password_in_flow_run_parameters_logs_or_artifacts(xnat, tmp_path: Path) -> None:
    write_studies(tmp_path / "export", series=1, instances=4, instance_kb=4, seed=8)
    result = upload_dicom_session(_request(tmp_path / "export"), XnatConnection(url=xnat.url, username="admin"))

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
        logs = client.read_logs()
        artifacts = client.read_artifacts()
    assert result.sessions[0].verified
    haystack = " ".join(
        [str(run.parameters) for run in runs]
        + [log.message for log in logs]
        + [str(a.data) + str(a.description) for a in artifacts]
    )
    assert runs and logs and artifacts
    assert PASSWORD not in haystack


def test_a_session_label_holding_another_study_fails_the_run_before_sending(xnat, tmp_path: Path) -> None:
    """In the flow: no upload into a session of another study unless asked for."""
    write_studies(tmp_path / "first", series=1, instances=3, instance_kb=4, seed=41)
    write_studies(tmp_path / "second", series=1, instances=3, instance_kb=4, seed=42)
    connection = XnatConnection(url=xnat.url, username="admin")
    upload_dicom_session(_request(tmp_path / "first"), connection)
    imports = xnat.stats()["imports"]

    with pytest.raises(ConflictError, match="already holds another study"):
        upload_dicom_session(_request(tmp_path / "second"), connection)
    assert xnat.stats()["imports"] == imports

    result = upload_dicom_session(_request(tmp_path / "second", allow_other_study=True), connection)
    assert result.sessions[0].verified is True


def test_archived_is_announced_once_per_arrival_of_files(
    xnat, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, events_worker
) -> None:
    """``xnat.session.archived`` once per archived session and arrival of files. A re-run
    that finds the files an earlier run delivered does not announce them again (processing would run
    twice); a re-upload of the same files neither; other files in the session are a new arrival."""
    from xnat_flows.events import SESSION_ARCHIVED
    from xnat_flows.flows import upload as upload_flow
    from xnat_flows.testing.synth import write_studies as write

    write(tmp_path / "export", series=1, instances=6, instance_kb=4, seed=21)
    request = _request(tmp_path / "export", workers=2)
    connection = XnatConnection(url=xnat.url, username="admin")

    def archived_events() -> list[str]:
        events_worker.wait_until_empty()
        return [e.resource["xnat.experiment_id"] for e in events_worker._client.events if e.event == SESSION_ARCHIVED]

    def killed(*args, **kwargs):
        raise RuntimeError("worker killed after the session was verified, before it was announced")

    with monkeypatch.context() as patch:  # the journal keeps what was delivered; nothing was announced
        patch.setattr(upload_flow, "emit_upload_result", killed)
        with pytest.raises(RuntimeError):
            upload_dicom_session(request, connection)
    assert archived_events() == []

    resumed = upload_dicom_session(request, connection)  # the journal says all was delivered: 0 sent
    assert resumed.files_sent == 0 and resumed.sessions[0].verified is True
    experiment = resumed.sessions[0].experiment_id
    assert archived_events() == [experiment]  # announced by the run that found it archived

    again = upload_dicom_session(request, connection)  # the same files: nothing sent, no new arrival
    assert again.files_sent == 0 and again.sessions[0].verified is True
    assert archived_events() == [experiment]

    write(tmp_path / "export" / "more", series=1, instances=1, instance_kb=4, seed=21)  # another file of the study
    grown = upload_dicom_session(request, connection)
    assert grown.sessions[0].verified is True and grown.sessions[0].experiment_id == experiment
    assert archived_events() == [experiment, experiment]


def test_a_run_stopped_while_verifying_leaves_the_journal_for_the_rerun(
    xnat, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal's record of a session is forgotten only after verification (the library's order,
    now the flow's too): a run stopped while verifying is completed by a re-run that sends nothing
    again. (The flow forgot it before verifying, and the re-run sent every file a second time.)"""
    from xnat_flows.flows import upload as upload_flow

    manifest = write_studies(tmp_path / "export", series=1, instances=6, instance_kb=4, seed=23)
    request = _request(tmp_path / "export", workers=2)
    connection = XnatConnection(url=xnat.url, username="admin")

    def stopped(*args, **kwargs):
        raise RuntimeError("worker stopped while verifying")

    with monkeypatch.context() as patch:
        patch.setattr(upload_flow, "verify_uploaded_session", stopped)
        with pytest.raises(RuntimeError):
            upload_dicom_session(request, connection)
    imports = xnat.stats()["imports"]

    rerun = upload_dicom_session(request, connection)
    assert rerun.files_sent == 0 and xnat.stats()["imports"] == imports
    assert rerun.files_delivered == len(manifest.files) and rerun.sessions[0].verified is True


def test_a_gradual_rerun_that_finds_the_session_archived_verifies_it(xnat, tmp_path: Path) -> None:
    """A re-run that finds every instance archived sends nothing, and still reads the session back
    before it reports it (the flow verified only what it had just sent: ``verified`` stayed None)."""
    manifest = write_studies(tmp_path / "export", series=1, instances=6, instance_kb=4, seed=24)
    request = _request(tmp_path / "export", transport="gradual-dicom", workers=2)
    connection = XnatConnection(url=xnat.url, username="admin")
    first = upload_dicom_session(request, connection)
    assert first.sessions[0].verified is True

    again = upload_dicom_session(request, connection)  # the journal lists every instance as delivered
    (session,) = again.sessions
    assert session.verified is True and session.experiment_id == first.sessions[0].experiment_id
    assert again.files_sent == 0 and session.gradual is not None and session.gradual.resumed_count == 6

    shutil.rmtree(UploadJournal().directory)  # a host that never sent them: the archive holds them all
    elsewhere = upload_dicom_session(request, connection)
    (session,) = elsewhere.sessions
    assert session.verified is True and session.experiment_id == first.sessions[0].experiment_id
    assert elsewhere.files_sent == 0 and session.files_delivered == len(manifest.files)
    assert session.gradual is not None and session.gradual.already_archived


def test_landing_log_line_keeps_its_urls_apart_from_punctuation(xnat, tmp_path: Path) -> None:
    """The UI (and the demo's terminal) make links of URLs: a comma glued to one is a 404."""
    import re

    write_studies(tmp_path / "export", series=1, instances=3, instance_kb=4, seed=9)
    state = upload_dicom_session(
        _request(tmp_path / "export", session="LINKS01"),
        XnatConnection(url=xnat.url, username="admin"),
        return_state=True,
    )
    experiment = state.result().sessions[0].experiment_id
    run_logs = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))

    def landing_lines() -> list[str]:
        with get_client(sync_client=True) as client:  # logs reach the API in batches, a moment later
            return [m.message for m in client.read_logs(log_filter=run_logs) if "landed in the archive" in m.message]

    wait_until(lambda: landing_lines(), 60, what="the landing log line to reach the API")
    lines = landing_lines()
    (line,) = lines
    urls = re.findall(r"https?://\S+", line)
    assert f"{xnat.url}/data/experiments/{experiment}" in urls
    assert f"{xnat.url}/data/experiments/{experiment}?format=html" in urls
    assert all(url[-1].isalnum() or url[-1] in "/=" for url in urls), urls


def test_landing_table_fits_the_artifact_page(xnat, tmp_path: Path) -> None:
    """No empty column (prearchive timestamp for an archive landing), and no long cell: a URL is
    shown by its path and linked in full."""
    import re

    write_studies(tmp_path / "export", series=1, instances=3, instance_kb=4, seed=10)
    upload_dicom_session(
        _request(tmp_path / "export", session="TABLE01"), XnatConnection(url=xnat.url, username="admin")
    )
    with get_client(sync_client=True) as client:
        (artifact,) = [
            a for a in client.read_artifacts() if a.key == "xnat-upload-landing" and "TABLE01" in str(a.data)
        ]
    header, _, row = str(artifact.data).splitlines()
    assert header.count("|") == 5 and "prearchive" not in header
    cells = [re.sub(r"\[([^]]*)\]\([^)]*\)", r"\1", cell).strip() for cell in row.strip("|").split("|")]
    assert all(cells) and max(len(cell) for cell in cells) <= 40, cells
    assert f"({xnat.url}/data/experiments/" in row  # the full URI is the link's target


def test_two_flow_runs_to_one_label_at_once_never_share_a_session(xnat, tmp_path: Path) -> None:
    """In the flow: a concurrency slot per label (limit 1) serialises the two runs from
    the destination check to verification, so the second one's check sees the first one's study."""
    import threading

    from prefect.client.orchestration import get_client as prefect_client

    for name, seed in (("a", 51), ("b", 52)):
        write_studies(tmp_path / name, series=2, instances=6, instance_kb=4, seed=seed)
    connection = XnatConnection(url=xnat.url, username="admin")
    xnat.faults.add(path="/data/services/import", method="POST", times=None, delay_ms=800)  # let them overlap
    outcomes: list[object] = []

    def run(name: str) -> None:
        try:
            outcomes.append(upload_dicom_session(_request(tmp_path / name, workers=2), connection).ok)
        except ConflictError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert True in outcomes and len(outcomes) == 2, outcomes
    (refused,) = [o for o in outcomes if isinstance(o, ConflictError)]
    assert "another study" in str(refused) and "nothing was sent" in str(refused)
    (experiment,) = xnat.archived_experiments("FLOWS")
    assert experiment["scans"] == {"1": 3, "2": 3}  # one study's series (6 instances), none renamed N-MR1
    host = xnat.url.split("://", 1)[1]
    with prefect_client(sync_client=True) as prefect:
        limit = prefect.read_global_concurrency_limit_by_name(f"xnat-session:{host}:FLOWS:SESS01")
    assert limit.limit == 1 and limit.active_slots == 0


def test_a_flow_run_whose_upload_xnat_parked_fails_saying_what_to_do(xnat, tmp_path: Path) -> None:
    """In the flow: without verification, one look at the prearchive at the end; a
    CONFLICT is a conflict (the CLI's --flow exits 5), worded for the flow's operator."""
    write_studies(tmp_path / "export", series=1, instances=4, instance_kb=4, seed=61)
    connection = XnatConnection(url=xnat.url, username="admin")
    upload_dicom_session(_request(tmp_path / "export"), connection)
    shutil.rmtree(UploadJournal().directory)  # the same study sent from a host that did not send it
    xnat.faults.force_next_session("CONFLICT")

    with pytest.raises(ConflictError) as raised:
        upload_dicom_session(_request(tmp_path / "export", verify=False), connection)
    message = str(raised.value)
    assert "is CONFLICT" in message and "conflicts with FLOWS/SUBJ01/SESS01" in message
    assert "archive-prearchive-session" in message and "xnat-flows prearchive" not in message


def test_a_run_whose_verification_outwaits_xnats_idle_timer_says_xnat_is_still_archiving(xnat, tmp_path: Path) -> None:
    """A label XNAT already archived takes a re-run through its prearchive (archived after XNAT's
    idle interval): the run fails as not verified yet, worded for the flow's operator, not as files
    missing, and its log does not say the upload landed."""
    xnat.prearchive.rebuild_idle_seconds = 3600
    manifest = write_studies(tmp_path / "export", series=2, instances=8, instance_kb=4, seed=63)
    earlier = tmp_path / "earlier"  # an earlier run delivered 6 of the 8 instances
    for f in manifest.files[:6]:
        relative = f.path.relative_to(tmp_path / "export")
        (earlier / relative).parent.mkdir(parents=True, exist_ok=True)
        (earlier / relative).write_bytes(f.path.read_bytes())
    connection = XnatConnection(url=xnat.url, username="admin")
    assert upload_dicom_session(_request(earlier), connection).ok

    state = upload_dicom_session(_request(tmp_path / "export", verify_timeout_seconds=1), connection, return_state=True)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, UploadIncompleteError)
    message = str(error)
    assert message.startswith("not verified yet: XNAT was still archiving what was sent"), message
    assert "XNAT was still processing this upload when the wait ran out (6/8 files" in message
    assert "XNAT's prearchive page" in message and "xnat-flows prearchive" not in message
    assert "verification found missing" not in message
    assert "give the run a longer verify timeout" in message  # what the operator can change
    run_logs = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))

    def session_lines() -> list[str]:
        with get_client(sync_client=True) as client:  # logs reach the API in batches, a moment later
            return [m.message for m in client.read_logs(log_filter=run_logs) if "FLOWS/SUBJ01/SESS01 " in m.message]

    (line,) = wait_until(session_lines, 60, what="the landing log line to reach the API")
    assert "is not verified in the archive" in line and "landed" not in line, line
