"""The emulator keeps XNAT's anonymization scripts at XNAT's configuration-service endpoints
(xnat-web ConfigResource, tool ``anon``) and applies the enabled ones on import."""

from __future__ import annotations

import io

import pydicom
import pytest
from emulator_helpers import make_study

from xnat_flows.testing.prearchive import XnatRefusal
from xnat_flows.testing.pytest_plugin import wait_until

SITE = "/data/config/anon/script"
PROJECT = "/data/projects/TEST/config/anon/projects/TEST"
SCRIPT = 'version "6.1"\n(0010,0010) := subject\n(0010,0020) := session\n(0008,1030) := project\n'


def test_a_script_is_stored_versioned_and_read_back_as_xnat_answers(client) -> None:
    assert client.get(SITE, params={"format": "json"}).status_code == 404
    created = client.put(SITE, params={"inbody": "true"}, content=SCRIPT)
    assert created.status_code == 201
    assert client.put(SITE, params={"inbody": "true"}, content=SCRIPT + "\n").status_code == 200
    (row,) = client.get(SITE, params={"format": "json"}).json()["ResultSet"]["Result"]
    assert row["tool"] == "anon" and row["path"] == "script" and row["status"] == "enabled"
    assert row["contents"] == SCRIPT + "\n" and row["version"] == "2"
    assert client.get(SITE, params={"contents": "true"}).text == SCRIPT + "\n"


def test_status_alone_enables_and_disables_and_delete_disables(client) -> None:
    client.put(SITE, content=SCRIPT)
    assert client.put(SITE, params={"status": "disabled"}).status_code == 200
    (row,) = client.get(SITE, params={"format": "json"}).json()["ResultSet"]["Result"]
    assert row["status"] == "disabled" and row["contents"] == SCRIPT
    assert client.get(SITE, params={"contents": "true"}).status_code == 404  # disabled: no contents
    client.put(SITE, params={"status": "enabled"})
    assert client.delete(SITE).status_code == 200
    assert client.get(SITE, params={"format": "json"}).json()["ResultSet"]["Result"][0]["status"] == "disabled"
    assert client.put(SITE, params={"status": "maybe"}).status_code == 400
    assert client.put(SITE).status_code == 400  # neither status nor contents


def test_the_project_script_lives_at_xnats_project_path(client) -> None:
    assert client.put(PROJECT, content=SCRIPT).status_code == 201
    (row,) = client.get(PROJECT, params={"format": "json"}).json()["ResultSet"]["Result"]
    assert row["path"] == "/projects/TEST" and row["project"] == "TEST"  # ConfigResource.fixAnonPath
    assert client.get("/data/projects/NOPE/config/anon/projects/NOPE", params={"format": "json"}).status_code == 404
    # a project's "script" path is another configuration, which XNAT's anonymizer never reads
    assert client.get("/data/projects/TEST/config/anon/script", params={"format": "json"}).status_code == 404


def _stored(emulator, label: str) -> dict[str, pydicom.Dataset]:
    return {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, emulator.archived_files(label).values())}


def test_enabled_site_and_project_scripts_are_applied_on_import_unless_prevent_anon(emulator, client) -> None:
    client.put(SITE, content='version "6.1"\n(0010,0010) := subject\n(0010,0020) := session\n')
    client.put(PROJECT, content='version "6.1"\n(0008,1030) := project\n- (0010,0030)\n')
    study = make_study(1, 3)
    params = {"PROJECT_ID": "TEST", "SUBJECT_ID": "SUBJ", "EXPT_LABEL": "SITE_AND_PROJECT"}
    emulator.import_instance(study[0].data, params, direct_archive=True)
    emulator.import_instance(study[1].data, {**params, "prevent_anon": "true"}, direct_archive=True)
    client.put(PROJECT, params={"status": "disabled"})
    emulator.import_instance(study[2].data, params, direct_archive=True)
    wait_until(lambda: emulator.archived_experiments("TEST"))
    stored = _stored(emulator, "SITE_AND_PROJECT")
    both = stored[study[0].sop_instance_uid]
    assert (str(both.PatientName), both.PatientID, both.StudyDescription) == ("SUBJ", "SITE_AND_PROJECT", "TEST")
    assert "PatientBirthDate" not in both
    original = pydicom.dcmread(io.BytesIO(study[1].data))
    assert str(stored[study[1].sop_instance_uid].PatientName) == str(original.PatientName)  # prevent_anon
    site_only = stored[study[2].sop_instance_uid]
    assert str(site_only.PatientName) == "SUBJ" and site_only.get("StudyDescription") == original.get(
        "StudyDescription"
    )
    assert both.PixelData == original.PixelData


def test_a_script_failing_on_a_file_refuses_it(emulator, client) -> None:
    client.put(SITE, content='version "6.1"\n(0010,0010) := visit\n')  # a variable XNAT does not pass
    with pytest.raises(XnatRefusal) as refused:
        emulator.import_instance(make_study(1, 1)[0].data, {"PROJECT_ID": "TEST", "SUBJECT_ID": "S", "EXPT_LABEL": "E"})
    assert refused.value.status == 500 and "anonymization" in refused.value.message
