"""What an operator reads when a flow run fails: the cause once per level, no traceback for our own
errors, and advice in terms of the run's Blocks and parameters (never the command line's flags).

Levels: the task run where the error happened (Prefect's own "Finished in state Failed(...)" line,
ERROR) and the flow run's final state (its message is what the runs list, the run page and the
"run failed" notification show). Before, the flow logged the exception again with its traceback
("Encountered exception during execution"), and a parent flow did the same once more.
"""

from __future__ import annotations

import logging
import re
import socket
from pathlib import Path
from uuid import UUID

import pytest
from orchestration_helpers import write_session
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.client.schemas.objects import Log
from prefect.flow_engine import run_flow
from prefect.logging.handlers import APILogHandler
from pydantic import SecretStr

from xnat_flows.blocks import XnatCredentials
from xnat_flows.client.errors import AuthenticationError, NotFoundError
from xnat_flows.flows.cstore import send_dicom
from xnat_flows.flows.inbox import ingest_inbox
from xnat_flows.flows.upload import upload_dicom_session
from xnat_flows.models import DicomReceiverTarget, SendDicomRequest, UploadRequest, XnatConnection
from xnat_flows.testing import XnatEmulator
from xnat_flows.testing.pytest_plugin import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness")]

PASSWORD = "failures-test-password-2c9e"
CLI_WORDS = re.compile(r"(?<![\w-])--[a-z]|xnat-flows (auth|session|prearchive|resource|emulator)\b|XNAT_USER")


@pytest.fixture
def xnat(tmp_path: Path, xnat_emulator_factory) -> XnatEmulator:
    return xnat_emulator_factory(
        tmp_path / "xnat", projects=("FAIL",), password=PASSWORD, scp_port=0, rebuild_idle_seconds=0.3
    )


@pytest.fixture
def block(xnat: XnatEmulator) -> XnatConnection:
    """The way a deployment runs: credentials from an xnat-credentials Block only."""
    XnatCredentials(url=xnat.url, username="admin", password=SecretStr(PASSWORD)).save("failures-site", overwrite=True)
    return XnatConnection(credentials=XnatCredentials.load("failures-site"))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_logs(flow_run_id: UUID) -> list[Log]:
    """The run's logs as the UI shows them (its own and its task runs'), once the final state's line is in."""
    APILogHandler().flush()

    def read() -> list[Log]:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        finished = any(log.task_run_id is None and log.message.startswith("Finished in state") for log in logs)
        return logs if finished else []

    return wait_until(read, 30, interval=0.2, what=f"the final state's log line of flow run {flow_run_id}")


def _assert_said_once_per_level(logs: list[Log], cause: str, *, task_level: bool = True, retries: int = 0) -> None:
    """At ERROR, once by the task that met ``cause`` and once by the run's final state; before that,
    ``retries`` of Prefect's "Retry n/m will start" notes at INFO."""
    retried = [log for log in logs if cause in log.message and " - Retry " in log.message]
    assert [log.level for log in retried] == [20] * retries, [log.message for log in retried]
    said = [log for log in logs if cause in log.message and log not in retried]
    assert sum(log.message.count(cause) for log in logs if log not in retried) == len(said), [
        log.message for log in said
    ]
    flow_level = [log for log in said if log.task_run_id is None]
    # At the flow level only the final state says it (no "Encountered exception ..." with a traceback).
    assert all(log.level == 40 for log in flow_level)  # Prefect says it at INFO; a failed run is an ERROR
    assert [log.message.split("(", 1)[0] for log in flow_level] == ["Finished in state Failed"], [
        log.message for log in said
    ]
    task_lines = [log for log in said if log.task_run_id is not None]
    assert len(task_lines) == (1 if task_level else 0), [log.message for log in said]
    assert all(log.level == 40 for log in task_lines)
    assert not [log.message for log in logs if "Traceback" in log.message]


def _upload(source: Path, project: str = "FAIL") -> UploadRequest:
    return UploadRequest(source_dir=str(source), project=project, subject="S01", session="S01_MR", verify=False)


def test_an_unknown_project_is_said_once_per_level_in_flow_words(xnat, block, tmp_path: Path) -> None:
    write_session(tmp_path / "export", patient_id="P01")

    state = upload_dicom_session(_upload(tmp_path / "export", project="NOPE"), block, return_state=True)

    assert state.is_failed()
    assert state.message.startswith("NotFoundError: Project 'NOPE' does not exist") and "\n" not in state.message
    assert "project in the run's parameters" in state.message and not CLI_WORDS.search(state.message)
    with pytest.raises(NotFoundError):  # a caller of the flow still gets the error itself
        state.result()
    logs = _run_logs(state.state_details.flow_run_id)
    _assert_said_once_per_level(logs, "Project 'NOPE' does not exist")
    assert not [log.message for log in logs if CLI_WORDS.search(log.message)]


def test_a_task_without_retries_says_our_error_once_without_a_traceback(xnat, block, tmp_path: Path) -> None:
    """The de-identification gate (``check-before-sending``, no retries): Prefect's own "Task run failed
    with exception" line and its traceback are the repeat the task's final state already says."""
    from xnat_flows.models import Deidentification

    write_session(tmp_path / "export", patient_id="P05")
    request = _upload(tmp_path / "export").model_copy(
        update={"deidentify": Deidentification(script='version "6.1"\n(0010,0010) := subject\n', require_clean=True)}
    )

    state = upload_dicom_session(request, block, return_state=True)

    assert state.is_failed() and state.message.startswith("IdentifiersSurvive:")
    assert "deidentify.allow" in state.message and not CLI_WORDS.search(state.message)
    logs = _run_logs(state.state_details.flow_run_id)
    _assert_said_once_per_level(logs, "identifying attributes survive")
    assert xnat.stats()["imports"] == 0


def test_a_bad_password_in_the_block_points_at_the_block(xnat, tmp_path: Path) -> None:
    XnatCredentials(url=xnat.url, username="admin", password=SecretStr("not-the-password")).save(
        "failures-bad-password", overwrite=True
    )
    write_session(tmp_path / "export", patient_id="P02")
    connection = XnatConnection(credentials=XnatCredentials.load("failures-bad-password"))

    state = upload_dicom_session(_upload(tmp_path / "export"), connection, return_state=True)

    assert state.is_failed() and state.message.startswith("AuthenticationError:")
    assert "xnat-credentials Block" in state.message and not CLI_WORDS.search(state.message)
    with pytest.raises(AuthenticationError) as raised:
        state.result()
    # the error a caller of the flow gets was worded for the run's operator, wherever it is read
    assert "xnat-credentials Block" in str(raised.value) and not CLI_WORDS.search(str(raised.value))
    logs = _run_logs(state.state_details.flow_run_id)
    _assert_said_once_per_level(logs, "refused the login")
    assert not [log.message for log in logs if CLI_WORDS.search(log.message)]
    assert not [log.message for log in logs if "not-the-password" in log.message]


def test_an_unreachable_xnat_fails_the_inbox_run_saying_why_once(xnat, tmp_path: Path) -> None:
    """The inbox run (a parent of upload runs) during an outage: the folder is kept, the cause is said
    by the task that met it and by the run's final state, not again by the flow."""
    down = f"http://127.0.0.1:{_closed_port()}"
    XnatCredentials(url=down, username="admin", password=SecretStr(PASSWORD)).save("failures-down", overwrite=True)
    inbox = tmp_path / "inbox"
    write_session(inbox / "scan-0001", patient_id="P03")

    state = ingest_inbox(
        str(inbox),
        "FAIL",
        quiet_seconds=0,
        connection=XnatConnection(credentials=XnatCredentials.load("failures-down")),
        return_state=True,
    )

    assert state.is_failed() and "scan-0001 kept in" in state.message
    assert "Block" in state.message and not CLI_WORDS.search(state.message)
    # what failed, against which server and Block: the URL, the Block's name, what to do
    assert f"[XNAT {down} via xnat-credentials Block 'failures-down']" in state.message
    assert "Check the URL in the run's xnat-credentials Block" in state.message
    logs = _run_logs(state.state_details.flow_run_id)
    # XNAT down is transient for a flow run: the task's retry policy (2 retries) ran before it failed
    _assert_said_once_per_level(logs, "Connection refused", retries=2)
    assert [log.message for log in logs if "scan-0001 stays in processing/" in log.message]


def test_a_wrong_called_ae_title_names_the_receiver_parameter_once(xnat, tmp_path: Path) -> None:
    write_session(tmp_path / "export", patient_id="P04")

    state = send_dicom(
        SendDicomRequest(source_dir=str(tmp_path / "export")),
        DicomReceiverTarget(host="127.0.0.1", port=xnat.scp_port, called_aet="WRONGAET"),
        return_state=True,
    )

    assert state.is_failed() and state.message.startswith("CalledAETitleRejectedError:")
    assert "called_aet in the run's receiver parameter" in state.message and not CLI_WORDS.search(state.message)
    logs = _run_logs(state.state_details.flow_run_id)
    _assert_said_once_per_level(logs, "does not answer to the called AE title 'WRONGAET'")


def test_a_worker_engine_does_not_repeat_the_failure_with_a_traceback(
    xnat, block, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker runs a flow through Prefect's engine (``run_flow(..., error_logger=the run's logger)``),
    which re-raises the error of a run that failed and logged it again with a ~70-line traceback
    ("Engine execution exited with unexpected exception"). Not for our errors: the run's
    state says it once."""
    write_session(tmp_path / "export", patient_id="P05")
    caplog.set_level(logging.INFO, logger="prefect")

    with pytest.raises(NotFoundError) as raised:
        run_flow(
            upload_dicom_session,
            parameters={"request": _upload(tmp_path / "export", project="NOPE"), "connection": block},
            error_logger=logging.getLogger("prefect.flow_runs"),
        )

    assert not CLI_WORDS.search(str(raised.value)) and "project in the run's parameters" in str(raised.value)
    runs = [r for r in caplog.records if r.name == "prefect.flow_runs"]
    assert not [r.getMessage() for r in runs if "Engine execution exited" in r.getMessage()]
    final = [r for r in runs if r.getMessage().startswith("Finished in state Failed")]
    assert len(final) == 1 and final[0].levelno == logging.ERROR
    assert f"[XNAT {xnat.url} via xnat-credentials Block 'failures-site']" in final[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info is not None]  # no traceback anywhere
