"""The run forms the Prefect UI draws from each flow's parameter schema: a plain title and a
description on every field, the same titles for the same things across flows, and folder fields
that say the path is read on the worker's host."""

from __future__ import annotations

import pytest
from prefect.utilities.callables import parameter_schema

from xnat_flows.flows import (
    archive_prearchive_session,
    attach_resource,
    delete_prearchive_session,
    download_xnat_session,
    ingest_inbox,
    process_xnat_session,
    send_dicom,
    upload_dicom_session,
)

FLOWS = [
    upload_dicom_session,
    send_dicom,
    ingest_inbox,
    archive_prearchive_session,
    delete_prearchive_session,
    attach_resource,
    process_xnat_session,
    download_xnat_session,
]


def _fields(schema: dict) -> list[tuple[str, str, dict]]:
    """(model or "parameters", field name, field schema) of every field the form shows."""
    found = [("parameters", name, prop) for name, prop in schema["properties"].items()]
    for model, definition in schema.get("definitions", {}).items():
        found += [(model, name, prop) for name, prop in definition.get("properties", {}).items()]
    return found


@pytest.mark.parametrize("flow", FLOWS, ids=lambda flow: flow.name)
def test_every_field_has_a_plain_title_and_a_description(flow) -> None:
    for model, name, prop in _fields(parameter_schema(flow).model_dump()):
        title = prop.get("title", "")
        assert title and "_" not in title and title != name, f"{flow.name}: {model}.{name} titled {title!r}"
        assert prop.get("description"), f"{flow.name}: {model}.{name} has no description"


def test_the_same_thing_has_the_same_title_in_every_flow() -> None:
    titles: dict[str, set[str]] = {}
    for flow in FLOWS:
        for _, name, prop in _fields(parameter_schema(flow).model_dump()):
            titles.setdefault(name, set()).add(prop["title"])
    for name in ("project", "connection", "transport", "workers", "direct_archive", "per_study", "credentials"):
        assert len(titles[name]) == 1, (name, titles[name])


def test_folder_fields_say_they_are_read_on_the_workers_host() -> None:
    fields = {
        (flow.name, name): prop
        for flow in FLOWS
        for _, name, prop in _fields(parameter_schema(flow).model_dump())
        if name in ("source_dir", "inbox_dir", "path", "dest", "scratch_dir")
    }
    assert len(fields) == 6  # upload, send-dicom, inbox, attach-resource, download, processing
    for where, prop in fields.items():
        assert "worker's host" in prop["title"], where
        assert "worker" in prop["description"] and "browser" in prop["description"], where
