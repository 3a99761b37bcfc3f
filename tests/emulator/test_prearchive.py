"""Prearchive listing/actions and the archive service with XNAT's merge rules
(XNAT wiki: Image Session Archive Service API; xnat-web `PrearcSessionResource.java`, `PrearcSessionArchiver.java`).
"""

from __future__ import annotations

import pytest
from emulator_helpers import make_instance, make_study, members, zip_bytes

from xnat_flows.testing.pytest_plugin import wait_until


@pytest.fixture
def manual(emulator, client):
    emulator.set_prearchive_code("TEST", 0)
    emulator.set_prearchive_code("OTHER", 0)
    return "TEST"


def upload(client, instances, **params):
    query = {"import-handler": "DICOM-zip", "project": "TEST", "subject": "S", **params}
    response = client.post(
        "/data/services/import",
        params=query,
        content=zip_bytes(members(instances)),
        headers={"Content-Type": "application/zip"},
    )
    assert response.status_code == 200, response.text
    return response.text.strip()


def ready(client, uri):
    assert client.post(uri, params={"action": "build"}).status_code == 200
    return uri[len("/data") :]


def archive(client, src, **params):
    return client.post("/data/services/archive", data={"src": src, **params})


def test_listings(client, manual):
    uri = upload(client, make_study(2, 2), session="L1")
    upload(client, make_study(1, 1), session="L2", project="OTHER")
    everything = client.get("/data/prearchive", params={"format": "json"}).json()["ResultSet"]
    assert everything["totalRecords"] == "2"
    assert len(client.get("/data/prearchive/projects").json()["ResultSet"]["Result"]) == 2
    assert len(client.get("/data/prearchive/projects/TEST").json()["ResultSet"]["Result"]) == 1
    assert len(client.get("/data/prearchive/projects/TEST,OTHER").json()["ResultSet"]["Result"]) == 2
    row = client.get(uri).json()["ResultSet"]["Result"][0]
    assert row["url"] == uri[len("/data") :] and row["folderName"] == "L1" and row["autoarchive"] == "Manual"
    assert all(isinstance(v, str) for v in row.values())
    scans = client.get(f"{uri}/scans").json()["ResultSet"]["Result"]
    assert [s["ID"] for s in scans] == ["1", "2"]
    resources = client.get(f"{uri}/scans/1/resources").json()["ResultSet"]["Result"]
    assert resources[0]["label"] == "DICOM" and resources[0]["file_count"] == "2"
    files = client.get(f"{uri}/scans/1/resources/DICOM/files").json()["ResultSet"]["Result"]
    assert client.get(files[0]["URI"]).content[128:132] == b"DICM"


def test_delete_and_move(client, manual):
    uri = upload(client, make_study(1, 1), session="D")
    assert client.delete(uri).status_code == 200
    assert client.get(uri).status_code == 404
    uri = upload(client, make_study(1, 1), session="MV")
    moved = client.post(uri, params={"action": "move", "newProject": "OTHER"})
    assert moved.status_code == 301 and moved.text.startswith("/data/prearchive/projects/OTHER/")
    assert client.get(moved.text).status_code == 200
    assert client.post(moved.text, params={"action": "move", "newProject": "NOPE"}).status_code == 403


def test_actions_build_commit_and_unknown(emulator, client, manual):
    uri = upload(client, make_study(1, 1), session="B")
    assert client.post(uri, params={"action": "build"}).text == uri
    assert client.get(uri).json()["ResultSet"]["Result"][0]["status"] == "READY"
    assert client.post(uri).status_code == 400
    assert "unsupported action" in client.post(uri, params={"action": "dance"}).text
    emulator.set_prearchive_code("TEST", 4)
    committed = client.post(uri, params={"action": "commit"})
    assert committed.status_code == 301 and committed.text.startswith("/data/archive/projects/TEST/")


def test_archive_service_success_and_already_archived(client, manual):
    src = ready(client, upload(client, make_study(1, 2), session="A1"))
    response = archive(client, src)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/uri-list")
    assert response.text.startswith("/data/archive/projects/TEST/subjects/") and response.text.endswith("\r\n")
    again = archive(client, src)
    assert again.status_code == 404
    assert client.get("/data/projects/TEST/experiments/A1").status_code == 200


def test_archive_service_refusals(client, manual, emulator):
    src = ready(client, upload(client, make_study(1, 1), session="R1"))
    assert archive(client, src, dest="/prearchive/projects/TEST").status_code == 400
    mismatch = archive(client, src, dest="/archive/projects/OTHER")
    assert mismatch.status_code == 400 and "Project mismatch" in mismatch.text
    assert archive(client, "/prearchive/projects/Unassigned/1/2").status_code == 400
    assert archive(client, "/prearchive/projects/TEST/20000101_000000000/NOPE").status_code == 404


def test_existing_session_needs_overwrite(client, manual):
    study = make_study(1, 2)
    archive(client, ready(client, upload(client, study[:1], session="X")))
    src = ready(client, upload(client, study[1:], session="X"))
    conflict = archive(client, src)
    assert conflict.status_code == 409 and "Session already exists, retry with overwrite enabled" in conflict.text
    assert client.get(f"/data{src}").json()["ResultSet"]["Result"][0]["status"] == "CONFLICT"
    assert archive(client, src, overwrite="append").status_code == 200  # what clients do with CONFLICT rows


def test_append_merges_disjoint_halves_and_refuses_identical(client, manual, emulator):
    study = make_study(1, 4)
    archive(client, ready(client, upload(client, study[:2], session="H")))
    assert archive(client, ready(client, upload(client, study[2:], session="H")), overwrite="append").status_code == 200
    assert emulator.archived_experiments("TEST")[0]["scans"] == {"1": 4}
    src = ready(client, upload(client, study[:2], session="H"))
    refused = archive(client, src, overwrite="append")
    assert refused.status_code == 409
    assert archive(client, src, overwrite="append", overwrite_files="true").status_code == 200
    assert emulator.archived_experiments("TEST")[0]["scans"] == {"1": 4}


def test_delete_overwrite_replaces(client, manual, emulator):
    study = make_study(1, 2)
    archive(client, ready(client, upload(client, study, session="O")))
    assert archive(client, ready(client, upload(client, study, session="O")), overwrite="delete").status_code == 200


def test_append_renames_scan_with_different_uid(client, manual, emulator):
    from pydicom.uid import generate_uid

    study_uid = generate_uid()
    first = make_instance(study_uid, generate_uid(), 3, 1)
    second = make_instance(study_uid, generate_uid(), 3, 1)
    archive(client, ready(client, upload(client, [first], session="N")))
    archive(client, ready(client, upload(client, [second], session="N")), overwrite="append")
    assert emulator.archived_experiments("TEST")[0]["scans"] == {"3": 1, "3-CT1": 1}


def test_uid_change_needs_override(client, manual):
    archive(client, ready(client, upload(client, make_study(1, 1), session="U")))
    src = ready(client, upload(client, make_study(1, 1), session="U"))
    refused = archive(client, src, overwrite="append")
    assert refused.status_code == 409 and "Invalid modification of session UID" in refused.text
    assert archive(client, src, overwrite="delete").status_code == 200


def test_no_overwrite_mode_moves_a_session_to_another_subject(client, manual, emulator):
    """xnat-web `PrearcSessionArchiver.checkForConflicts`: the subject check holds under delete too;
    delete skips only the study UID check (a subject typo once moved an archived session)."""
    study = make_study(1, 2)
    archive(client, ready(client, upload(client, study[:1], session="MOVE", subject="SUBJ_A")))
    src = ready(client, upload(client, study[1:], session="MOVE", subject="SUBJ_TYPO"))
    for overwrite in ("append", "delete"):
        refused = archive(client, src, overwrite=overwrite)
        assert refused.status_code == 409, overwrite
        assert "Invalid modification of session subject via archive process.: MOVE Already Exists" in refused.text
    assert client.get(f"/data{src}").json()["ResultSet"]["Result"][0]["status"] == "CONFLICT"
    (session,) = emulator.archived_experiments("TEST")
    assert client.get("/data/projects/TEST/subjects/SUBJ_A/experiments/MOVE").status_code == 200
    assert session["scans"] == {"1": 1}


def test_an_archived_session_keeps_its_dicom_patient(client, manual):
    archive(
        client,
        ready(client, upload(client, make_study(1, 1, patient_id="PID7", patient_name="Roe^Rick"), session="PAT")),
    )
    fields = client.get("/data/projects/TEST/experiments/PAT").json()["items"][0]["data_fields"]
    assert fields["dcmPatientId"] == "PID7" and fields["dcmPatientName"] == "Roe^Rick"


def test_archive_dest_sets_subject_and_label(client, manual):
    src = ready(client, upload(client, make_study(1, 1), session="ORIG"))
    response = archive(client, src, dest="/archive/projects/TEST/subjects/NEWSUBJ/experiments/NEWLABEL")
    assert response.status_code == 200
    experiment = client.get("/data/projects/TEST/experiments/NEWLABEL").json()["items"][0]["data_fields"]
    subjects = client.get("/data/projects/TEST/subjects").json()["ResultSet"]["Result"]
    assert experiment["subject_ID"] == next(s["ID"] for s in subjects if s["label"] == "NEWSUBJ")


def test_batch_prearchive_services(client, manual):
    first = upload(client, make_study(1, 1), session="S1")[len("/data") :]
    second = upload(client, make_study(1, 1), session="S2")[len("/data") :]
    rebuilt = client.post("/data/services/prearchive/rebuild", data={"src": first}).json()
    assert rebuilt["ResultSet"]["Result"][0]["status"] == "READY"
    moved = client.post("/data/services/prearchive/move", data={"src": second, "newProject": "OTHER"})
    assert moved.json()["ResultSet"]["Result"][0]["project"] == "OTHER"
    assert client.post("/data/services/prearchive/delete", data={"src": first}).status_code == 200
    assert client.get(f"/data{first}").status_code == 404


def test_archive_redirect_true_is_303(client, manual):
    src = ready(client, upload(client, make_study(1, 1), session="RD"))
    response = archive(client, src, redirect="true")
    assert response.status_code == 303 and response.headers["Location"].startswith("/data/archive/projects/TEST/")


def test_session_zip_and_xml(client, manual):
    import io
    import zipfile

    uri = upload(client, make_study(1, 2), session="Z")
    assert client.get(uri, params={"format": "xml"}).status_code == 404  # not built yet
    client.post(uri, params={"action": "build"})
    assert 'label="Z"' in client.get(uri, params={"format": "xml"}).text
    names = zipfile.ZipFile(io.BytesIO(client.get(uri, params={"format": "zip"}).content)).namelist()
    assert len(names) == 2 and all(n.startswith("1/DICOM/") for n in names)


def test_dicom_zip_into_prearchive_folder_of_another_study_is_400(client, manual):
    uri = upload(client, make_study(1, 1), session="F")
    dest = uri[len("/data") :]
    other = client.post(
        "/data/services/import",
        params={"import-handler": "DICOM-zip", "dest": dest},
        content=zip_bytes(members(make_study(1, 1))),
        headers={"Content-Type": "application/zip"},
    )
    assert other.status_code == 400 and "different StudyInstanceUID" in other.text


def test_direct_archive_listing_and_commit(emulator, client):
    emulator.prearchive.rebuild_idle_seconds = 3600  # hold the session in the direct-archive table
    study = make_study(1, 1)
    response = client.post(
        "/data/services/import",
        params={
            "import-handler": "DICOM-zip",
            "project": "TEST",
            "subject": "S",
            "session": "DAL",
            "Direct-Archive": "true",
        },
        content=zip_bytes(members(study)),
        headers={"Content-Type": "application/zip"},
    )
    uri = response.text.strip()
    listed = client.post("/xapi/direct-archive", json={"filters": {"project": {"operator": "EQ", "value": "TEST"}}})
    assert [s["uri"] for s in listed.json()] == [uri]
    [row] = [r for r in emulator.store.prearc_rows(["TEST"], include_direct=True) if r.name == "DAL"]
    with emulator.prearchive.holding() as held:  # as while an import request still writes into it
        held.rows.add(row.id)
        refused = client.post(uri)
    assert refused.status_code == 400 and "still receiving new files" in refused.text
    assert client.post("/xapi/direct-archive/TEST/1.2.3.4/DAL").status_code == 404

    committed = client.post(uri)
    # XNAT queues the session and answers at once (DirectArchiveSessionApi.triggerArchive):
    # 200, no body; it is archived soon after, long before the idle interval (an hour here).
    assert committed.status_code == 200 and committed.text == ""
    wait_until(lambda: emulator.archived_experiments("TEST"), timeout=10)
    assert emulator.archived_experiments("TEST")[0]["label"] == "DAL"
    query = {"filters": {"project": {"operator": "EQ", "value": "TEST"}}}
    wait_until(lambda: client.post("/xapi/direct-archive", json=query).json() == [], timeout=10)
