"""The prearchive and resource flows, run bare (``.fn()``) with their tasks inlined, on the emulator.

Running real task runs needs a Prefect API (the lead's Prefect-run tests cover that); here the
flow bodies and the task bodies run in-process, so the tests stay fast.
"""

from __future__ import annotations

import pytest
from manage_helpers import archive_directly, import_study, stage_session
from prefect.logging import disable_run_logger

from xnat_flows.client.archive import WaitTimeoutError
from xnat_flows.client.errors import ConflictError, NotFoundError
from xnat_flows.client.prearchive import PrearchiveSessionFailed, list_sessions
from xnat_flows.flows import prearchive as prearchive_flows
from xnat_flows.flows import resources as resource_flows
from xnat_flows.flows.prearchive import ArchiveRequest, PrearchiveSessionRef
from xnat_flows.flows.resources import AttachResourceRequest
from xnat_flows.manage.resources import ResourceTarget, list_resource_files
from xnat_flows.models import XnatConnection
from xnat_flows.tasks.prearchive import archive_session_task, wait_for_archive_task
from xnat_flows.tasks.resources import upload_resource_task

pytestmark = pytest.mark.e2e


class _Inline:
    """Stands in for a Prefect task: calls its function directly, ignores ``with_options``."""

    def __init__(self, task) -> None:
        self.fn = task.fn

    def with_options(self, **_options) -> _Inline:
        return self

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


@pytest.fixture(autouse=True)
def inline_tasks(monkeypatch):
    for module in (prearchive_flows, resource_flows):
        for name in dir(module):
            if name.endswith("_task"):
                monkeypatch.setattr(module, name, _Inline(getattr(module, name)))
    with disable_run_logger():
        yield


@pytest.fixture
def connection(manual_xnat) -> XnatConnection:
    # URL only: user and password come from XNAT_USER/XNAT_PASS, never from a parameter.
    return XnatConnection(url=manual_xnat.url)


def test_archive_and_delete_flows(client, connection):
    ready = stage_session(client, "TEST", "S1")
    outcome = prearchive_flows.archive_prearchive_session.fn(
        ArchiveRequest(project="TEST", timestamp=ready.timestamp, folder="S1", label="S1_ARCH"), connection
    )
    assert outcome.archive_uri and outcome.label == "S1_ARCH"

    doomed = stage_session(client, "TEST", "S2")
    deleted = prearchive_flows.delete_prearchive_session.fn(
        PrearchiveSessionRef(project="TEST", timestamp=doomed.timestamp, folder="S2"), connection
    )
    assert deleted.deleted and list_sessions(client, "TEST") == []


def _property_names(schema: object) -> set[str]:
    """Field names the form shows. A Block's own schema (``block_type_slug``) is not a form: the UI
    offers a picker of saved Blocks and the run gets a reference, never the Block's fields."""
    if isinstance(schema, dict):
        if "block_type_slug" in schema:
            return set()
        names = set(schema.get("properties", {})) if isinstance(schema.get("properties"), dict) else set()
        return names.union(*(_property_names(value) for value in schema.values()))
    if isinstance(schema, list):
        return set().union(*(_property_names(value) for value in schema))
    return set()


@pytest.mark.parametrize(
    "flow",
    [
        prearchive_flows.archive_prearchive_session,
        prearchive_flows.delete_prearchive_session,
        resource_flows.attach_resource,
    ],
)
def test_flow_forms_have_no_secret_field(flow):
    schema = flow.parameters.model_dump()
    names = _property_names(schema)
    assert "connection" in names and "url" in names and "credentials" in names
    assert schema["definitions"]["XnatCredentials"]["block_type_slug"] == "xnat-credentials"
    assert not {name for name in names if "password" in name.lower() or "token" in name.lower()}


def test_archive_form_offers_the_overwrite_choices():
    overwrite = ArchiveRequest.model_json_schema()["properties"]["overwrite"]
    assert {"enum": ["append", "delete"], "type": "string"} in overwrite["anyOf"]


def test_attach_resource_waits_for_the_archive_first(client, connection, tmp_path):
    client.request("PUT", "/data/projects/TEST/prearchive_code/4")
    import_study(client, "TEST", "LATE", commit=False)  # archived by the idle rebuilder a moment later
    (tmp_path / "nifti").mkdir()
    (tmp_path / "nifti" / "t1.nii").write_bytes(b"nifti")

    result = resource_flows.attach_resource.fn(
        AttachResourceRequest(
            session="LATE",
            project="TEST",
            label="NIFTI",
            path=str(tmp_path / "nifti"),
            wait_for_archive=True,
            wait_timeout_seconds=30,
        ),
        connection,
    )

    assert result.files == ["t1.nii"] and result.complete
    experiment_id = result.resource_uri.split("/")[3]
    assert [f.path for f in list_resource_files(client, ResourceTarget(session=experiment_id), "NIFTI")] == ["t1.nii"]


def test_attach_resource_reports_duplicates(client, connection, tmp_path):
    experiment = archive_directly(client, "TEST", "SUB1", "S1")
    note = tmp_path / "notes.txt"
    note.write_text("x")
    request = AttachResourceRequest(session=experiment, label="MISC", path=str(note))
    assert resource_flows.attach_resource.fn(request, connection).complete
    again = resource_flows.attach_resource.fn(request, connection)
    assert again.duplicates == ["notes.txt"]


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (WaitTimeoutError("still RECEIVING"), True),
        (PrearchiveSessionFailed("in ERROR", logs=["Empty sessions cannot be archived."]), False),
        (ConflictError("exists"), False),
        (NotFoundError("gone"), False),
    ],
)
def test_tasks_retry_only_what_a_later_attempt_can_fix(error, retried):
    from prefect.states import Failed

    for task in (archive_session_task, wait_for_archive_task, upload_resource_task):
        assert task.retries > 0 and task.retry_condition_fn(task, None, Failed(data=error)) is retried
