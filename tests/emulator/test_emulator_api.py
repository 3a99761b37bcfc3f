"""The Python-side API other modules use: import_instance, SCP wiring, introspection."""

from __future__ import annotations

import sys

import pytest
from emulator_helpers import make_study

from xnat_flows.testing.prearchive import XnatRefusal
from xnat_flows.testing.pytest_plugin import wait_until


def test_import_instance_routes_by_headers(emulator):
    emulator.set_prearchive_code("ROUTED", 0)
    study = make_study(1, 2, patient_comments="Project:ROUTED Subject:SUB Session:SES")
    uris = {emulator.import_instance(i.data) for i in study}
    [uri] = uris
    assert uri.startswith("/data/prearchive/projects/ROUTED/") and uri.endswith("/SES")
    [row] = emulator.prearchive_sessions()
    assert row["subject"] == "SUB" and row["file_count"] == 2


def test_import_instance_with_params_and_direct_archive(emulator):
    study = make_study(1, 2)
    params = {"PROJECT_ID": "TEST", "SUBJECT_ID": "S", "EXPT_LABEL": "PY"}
    uris = {emulator.import_instance(i.data, params, direct_archive=True) for i in study}
    assert uris == {f"/xapi/direct-archive/TEST/{study[0].study_uid}/PY"}
    [experiment] = wait_until(lambda: emulator.archived_experiments("TEST"))
    files = emulator.archived_files("PY")
    assert len(files) == 2 and all(path.read_bytes()[128:132] == b"DICM" for path in files.values())
    assert experiment["scans"] == {"1": 2}


def test_import_instance_refuses_garbage(emulator):
    with pytest.raises(XnatRefusal) as refused:
        emulator.import_instance(b"garbage" * 50)
    assert refused.value.status == 400
    assert emulator.import_instance_for_scp(b"garbage" * 50, "SENDER") is None


def test_scp_port_without_receiver_module_is_a_clear_error(tmp_path, monkeypatch, xnat_emulator_factory):
    monkeypatch.setitem(sys.modules, "xnat_flows.testing.scp", None)  # makes the import fail
    with pytest.raises(RuntimeError, match="EmulatorDicomScp"):
        xnat_emulator_factory(tmp_path, scp_port=0)


def test_pytest_plugin_fixture(xnat_emulator):
    assert xnat_emulator.url.startswith("http://127.0.0.1:")
    assert xnat_emulator.stats()["experiments"] == 0


def test_anonymize_changes_headers_not_pixels(tmp_path, xnat_emulator_factory):
    import io

    import pydicom

    study = make_study(1, 2)
    xnat = xnat_emulator_factory(tmp_path, anonymize=True, rebuild_idle_seconds=0.2)
    params = {"PROJECT_ID": "TEST", "SUBJECT_ID": "S", "EXPT_LABEL": "ANON"}
    xnat.import_instance(study[0].data, params, direct_archive=True)
    xnat.import_instance(study[1].data, {**params, "prevent_anon": "true"}, direct_archive=True)
    wait_until(lambda: xnat.archived_experiments("TEST"))
    stored = {pydicom.dcmread(p).SOPInstanceUID: p.read_bytes() for p in xnat.archived_files("ANON").values()}
    anonymized = pydicom.dcmread(io.BytesIO(stored[study[0].sop_instance_uid]))
    # XNAT's default site script: the labels XNAT files the session under replace the identifiers
    assert (str(anonymized.PatientName), anonymized.PatientID, anonymized.StudyDescription) == ("S", "ANON", "TEST")
    assert anonymized.PixelData == pydicom.dcmread(io.BytesIO(study[0].data)).PixelData
    assert stored[study[1].sop_instance_uid] == study[1].data
