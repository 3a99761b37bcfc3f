"""Behaviour checked against xnat-web's source, through plain REST and through xnatpy (xnat 0.8.1):
what pipelines written for a real XNAT read back. Each test names the xnat-web class it follows."""

from __future__ import annotations

import csv
import io

import pytest
from emulator_helpers import make_study, members, zip_bytes

from xnat_flows.testing.pytest_plugin import wait_until

xnat = pytest.importorskip("xnat")


@pytest.fixture
def held(emulator, client):
    """One READY prearchive session (a manual project holds it): its prearchive URI."""
    emulator.set_prearchive_code("TEST", 0)
    answer = client.post(
        "/data/services/import",
        params={"import-handler": "DICOM-zip", "project": "TEST", "subject": "S", "session": "HELD"},
        content=zip_bytes(members(make_study(2, 2))),
        headers={"Content-Type": "application/zip"},
    )
    assert answer.status_code == 200, answer.text
    wait_until(lambda: [s for s in emulator.prearchive_sessions() if s["status"] == "READY"])
    return answer.text.strip()


def test_prearchive_scan_resources_list_label_count_size_whatever_columns_asked(client, held):
    """xnat-web PrearcScanResourceList: columns label, file_count, file_size; columns= not applied."""
    listed = client.get(f"{held}/scans/1/resources", params={"format": "json", "columns": "ID,URI,label"}).json()
    assert listed["ResultSet"]["Result"] == [
        {"label": "DICOM", "file_count": "2", "file_size": listed["ResultSet"]["Result"][0]["file_size"]}
    ]
    files = client.get(f"{held}/scans/1/resources/DICOM/files", params={"columns": "ID"}).json()["ResultSet"]["Result"]
    assert [sorted(f) for f in files] == [["Name", "Size", "URI"]] * 2  # PrearcSessionResourceFiles
    assert client.get(f"{held}/scans/1/resources/DICOM/files/nope.dcm").status_code == 400


def test_xnatpy_sees_the_resources_and_files_of_a_prearchive_scan(emulator, held):
    with xnat.connect(emulator.url, user="admin", password="admin", loglevel="ERROR") as session:
        [prearchived] = session.prearchive.sessions()
        scan = prearchived.scans[0]
        assert list(scan.resources.keys()) == ["DICOM"]
        assert scan.resources["DICOM"].file_count == 2
        assert len(scan.files) == 2


def test_batch_prearchive_services_answer_in_the_format_asked(client, held):
    """xnat-web BatchPrearchiveActionsA.updatedStatusRepresentation renders the status table with format=."""
    src = held.removeprefix("/data")
    answer = client.post("/data/services/prearchive/rebuild", params={"src": src, "format": "csv"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    [row] = list(csv.DictReader(io.StringIO(answer.text)))
    assert row["folderName"] == "HELD" and row["project"] == "TEST"
    client.put("/data/projects/OTHER")
    moved = client.post("/data/services/prearchive/move", params={"src": src, "newProject": "OTHER", "format": "xml"})
    assert moved.status_code == 200 and "<ResultSet" in moved.text and "OTHER" in moved.text


@pytest.fixture
def archived(emulator, client):
    """One archived CT session EXP1 (subject S1) in TEST: its accession ID."""
    answer = client.post(  # dest=/archive: archived within the request
        "/data/services/import",
        params={
            "import-handler": "DICOM-zip",
            "project": "TEST",
            "subject": "S1",
            "session": "EXP1",
            "dest": "/archive/projects/TEST",
        },
        content=zip_bytes(members(make_study(1, 1))),
        headers={"Content-Type": "application/zip"},
    )
    assert answer.status_code == 200, answer.text
    return answer.text.strip().rsplit("/", 1)[-1]


def test_site_experiment_listing_default_columns(client, archived):
    """xnat-web ExperimentListResource.getDefaultFields: the default root xnat:experimentData has no
    subject columns; a subject-assessor root adds subject_ID and subject_label."""
    [row] = client.get("/data/experiments", params={"format": "json"}).json()["ResultSet"]["Result"]
    assert list(row) == ["ID", "project", "date", "xsiType", "label", "insert_date", "URI"]
    [row] = client.get("/data/experiments", params={"xsiType": "xnat:ctSessionData"}).json()["ResultSet"]["Result"]
    assert list(row) == [
        "ID",
        "project",
        "date",
        "xsiType",
        "label",
        "insert_date",
        "subject_ID",
        "subject_label",
        "URI",
    ]
    assert row["subject_label"] == "S1" and row["URI"] == f"/data/experiments/{archived}"


def test_site_experiment_listing_columns_name_xpaths_by_shortcut_and_add_type_and_project(client, archived):
    """QueryOrganizerResource.formatHeaders names an xpath column by its shortcut; an abstract root
    (not a secured data type) gets xsiType and project (ExperimentListResource)."""
    rows = client.get("/data/experiments", params={"columns": "ID,xnat:experimentData/label"}).json()
    [row] = rows["ResultSet"]["Result"]
    assert row == {
        "ID": archived,
        "label": "EXP1",
        "xsiType": "xnat:ctSessionData",
        "project": "TEST",
        "URI": f"/data/experiments/{archived}",
    }
    [row] = client.get("/data/experiments", params={"columns": "ID,label", "xsiType": "xnat:ctSessionData"}).json()[
        "ResultSet"
    ]["Result"]
    assert list(row) == ["ID", "label", "URI"]  # a concrete type: nothing added


def test_note_and_custom_field_columns_read_back_what_was_set(client, archived):
    """The EXPERIMENT_DATA shortcut `note` (xnat:experimentData/note) and a custom field's xpath
    are listing columns with the values a PUT set."""
    put = client.put(
        f"/data/experiments/{archived}",
        params={"note": "motion in run 2", "xnat:ctSessionData/fields/field[name=visit]/field": "v1"},
    )
    assert put.status_code == 200, put.text
    column = "xnat:ctSessionData/fields/field[name=visit]/field"
    for path in ("/data/experiments", "/data/projects/TEST/experiments"):
        [row] = client.get(path, params={"columns": f"ID,note,{column}"}).json()["ResultSet"]["Result"]
        assert row["note"] == "motion in run 2" and row[column] == "v1", (path, row)


def test_search_elements_list_the_data_types_with_counts(client, archived):
    """xnat-web SearchElementListResource: ELEMENT_NAME, SINGULAR, PLURAL, SECURED, COUNT; ?used
    keeps the types that have data."""
    listed = client.get("/data/search/elements", params={"format": "json"}).json()["ResultSet"]
    assert listed["title"] == "Data-Types"
    rows = {r["ELEMENT_NAME"]: r for r in listed["Result"]}
    assert set(rows["xnat:ctSessionData"]) == {"ELEMENT_NAME", "SINGULAR", "PLURAL", "SECURED", "COUNT"}
    assert rows["xnat:ctSessionData"]["COUNT"] == "1" and rows["xnat:mrSessionData"]["COUNT"] == "0"
    assert rows["xnat:subjectData"]["SINGULAR"] == "Subject" and rows["xnat:subjectData"]["PLURAL"] == "Subjects"
    used = client.get("/data/search/elements", params={"used": "true"}).json()["ResultSet"]["Result"]
    assert {r["ELEMENT_NAME"] for r in used} == {"xnat:projectData", "xnat:subjectData", "xnat:ctSessionData"}


def test_search_fields_of_a_data_type_answer_a_search(client, archived):
    """xnat-web SearchFieldListResource columns; every field listed is one POST /data/search answers."""
    fields = client.get("/data/search/elements/xnat:subjectData").json()["ResultSet"]
    assert fields["title"] == "Search Fields"
    assert set(fields["Result"][0]) == {
        "FIELD_ID",
        "HEADER",
        "SUMMARY",
        "TYPE",
        "REQUIRES_VALUE",
        "DESC",
        "ELEMENT_NAME",
        "SRC",
        "VISIBLE",
        "SEARCHABLE",
        "VALUE",
    }
    ids = [f["FIELD_ID"] for f in fields["Result"]]
    assert "SUBJECT_LABEL" in ids
    search = (
        '<xdat:search xmlns:xdat="http://nrg.wustl.edu/security"><xdat:root_element_name>xnat:subjectData'
        "</xdat:root_element_name>"
        + "".join(
            f"<xdat:search_field><xdat:element_name>xnat:subjectData</xdat:element_name><xdat:field_ID>{i}"
            "</xdat:field_ID></xdat:search_field>"
            for i in ids
        )
        + "<xdat:search_where method='AND'><xdat:criteria><xdat:schema_field>xnat:subjectData.SUBJECT_LABEL"
        "</xdat:schema_field><xdat:comparison_type>=</xdat:comparison_type><xdat:value>S1</xdat:value>"
        "</xdat:criteria></xdat:search_where></xdat:search>"
    )
    [row] = client.post("/data/search", content=search, params={"format": "json"}).json()["ResultSet"]["Result"]
    assert row["subject_label"] == "S1" and row["project"] == "TEST" and row["subject_id"].startswith("XNAT_S")


def test_xnatpy_finds_data_types_and_search_fields(emulator, archived):
    with xnat.connect(emulator.url, user="admin", password="admin", loglevel="ERROR") as session:
        assert "xnat:ctSessionData" in session.inspect.datatypes()
        assert "xnat:ctSessionData/LABEL" in session.inspect.datafields("xnat:ctSessionData")
        assert hasattr(session.classes.SubjectData, "SUBJECT_LABEL")  # injected search field


def test_put_of_a_new_experiment_without_type_or_document_is_417(client):
    """xnat-web SubjAssessmentResource.handlePut: no xsiType and no document → 417 Need PUT Contents."""
    client.put("/data/projects/TEST/subjects/S9")
    refused = client.put("/data/projects/TEST/subjects/S9/experiments/E9")
    assert refused.status_code == 417 and "Need PUT Contents" in refused.text
    assert client.get("/data/projects/TEST/experiments/E9").status_code == 404


SUBJECT_XML = b"""<?xml version="1.0" encoding="UTF-8"?>
<xnat:Subject xmlns:xnat="http://nrg.wustl.edu/xnat" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
    project="TEST" label="XS1">
  <xnat:demographics xsi:type="xnat:demographicData"><xnat:gender>female</xnat:gender><xnat:handedness>left</xnat:handedness></xnat:demographics>
</xnat:Subject>"""
SESSION_XML = b"""<xnat:MRSession xmlns:xnat="http://nrg.wustl.edu/xnat" project="TEST" label="XE1">
  <xnat:date>2021-05-06</xnat:date>
  <xnat:note>from an XML document</xnat:note>
  <xnat:fields><xnat:field name="visit">baseline</xnat:field></xnat:fields>
  <xnat:subject_ID>XS1</xnat:subject_ID>
</xnat:MRSession>"""


def test_xml_documents_in_put_bodies_set_fields(client):
    """xnat-web SecureResource.loadItem reads an XML document body (pyxnat's create(xml=...))."""
    headers = {"Content-Type": "text/xml"}
    created = client.put("/data/projects/TEST/subjects/XS1", content=SUBJECT_XML, headers=headers)
    assert created.status_code == 201, created.text
    subject = client.get("/data/projects/TEST/subjects/XS1").json()["items"][0]
    [demographics] = [c for c in subject["children"] if c["field"] == "demographics"]
    assert demographics["items"][0]["data_fields"]["gender"] == "female"

    session = client.put("/data/projects/TEST/experiments/XE1", content=SESSION_XML, headers=headers)
    assert session.status_code == 201, session.text  # the type comes from the document's element
    document = client.get("/data/projects/TEST/experiments/XE1").json()["items"][0]
    assert document["meta"]["xsi:type"] == "xnat:mrSessionData"
    assert document["data_fields"]["date"] == "2021-05-06" and document["data_fields"]["note"] == "from an XML document"
    [row] = client.get(
        "/data/projects/TEST/experiments",
        params={"columns": "label,subject_label,xnat:mrSessionData/fields/field[name=visit]/field"},
    ).json()["ResultSet"]["Result"]
    assert row["subject_label"] == "XS1" and row["xnat:mrSessionData/fields/field[name=visit]/field"] == "baseline"
    # SubjectResource.handlePut answers a SAXParseException with 422
    assert client.put("/data/projects/TEST/subjects/XS2", content=b"<broken", headers=headers).status_code == 422


def test_sharing_refuses_what_is_already_there(client, archived):
    """xnat-web SubjectResource/SubjAssessmentResource.handlePut on …/projects/Q."""
    client.put("/data/projects/OTHER")
    subject = "/data/projects/TEST/subjects/S1"
    experiment = f"/data/experiments/{archived}"
    assert client.put(f"{subject}/projects/NOPE").status_code == 404
    own = client.put(f"{subject}/projects/TEST")
    assert own.status_code == 409 and "Already assigned to project:TEST" in own.text
    assert client.put(f"{subject}/projects/OTHER", params={"label": "S1_OTHER"}).status_code == 200
    again = client.put(f"{subject}/projects/OTHER")
    assert again.status_code == 409 and "Already assigned to project:OTHER" in again.text
    assert client.put(f"{experiment}/projects/OTHER", params={"label": "E_OTHER"}).status_code == 200
    assert client.put(f"{experiment}/projects/OTHER").status_code == 409
    client.put("/data/projects/OTHER/subjects/TAKEN")
    client.put("/data/projects/TEST/subjects/S2")
    taken = client.put("/data/projects/TEST/subjects/S2/projects/OTHER", params={"label": "TAKEN"})
    assert taken.status_code == 409 and "Label already in use:TAKEN" in taken.text
    labels = {r["label"] for r in client.get("/data/projects/OTHER/subjects").json()["ResultSet"]["Result"]}
    assert labels == {"S1_OTHER", "TAKEN"}


def test_post_on_subject_and_scan_listings_creates(client, archived):
    """xnat-web ProjectSubjectList.handlePost and ScanList.handlePost: 201 + ID, 409 when it exists."""
    created = client.post("/data/projects/TEST/subjects", params={"label": "POSTED"})
    assert created.status_code == 201 and created.text.startswith("XNAT_S")
    assert client.get("/data/projects/TEST/subjects/POSTED").json()["items"][0]["data_fields"]["ID"] == created.text
    exists = client.post("/data/projects/TEST/subjects", params={"label": "POSTED"})
    assert exists.status_code == 409 and "Subject already exists." in exists.text

    scans = f"/data/experiments/{archived}/scans"
    added = client.post(scans, params={"type": "LOCALIZER"})
    assert added.status_code == 201 and added.text == "2"  # scan 1 came with the upload: the next free number
    assert client.post(scans, params={"ID": "7", "xsiType": "xnat:ctScanData"}).status_code == 201
    assert client.post(scans, params={"ID": "7"}).status_code == 409
    rows = {r["ID"]: r for r in client.get(scans).json()["ResultSet"]["Result"]}
    assert (
        set(rows) == {"1", "2", "7"} and rows["2"]["xsiType"] == "xnat:ctScanData" and rows["2"]["type"] == "LOCALIZER"
    )


def test_dicom_dump_of_a_scan_through_xnatpy_and_rest(emulator, client, archived):
    """XNAT wiki: DICOM Dump Service API (xnatpy's scan.dicom_dump())."""
    with xnat.connect(emulator.url, user="admin", password="admin", loglevel="ERROR") as session:
        rows = session.experiments[archived].scans["1"].dicom_dump(fields=["StudyInstanceUID", "00080060"])
    assert [(r["tag1"], r["desc"]) for r in rows] == [
        ("(0008,0060)", "Modality"),
        ("(0020,000D)", "Study Instance UID"),
    ]
    assert rows[0]["value"] == "CT" and rows[0]["vr"] == "CS"
    whole = client.get(
        "/data/services/dicomdump", params={"src": "/archive/projects/TEST/subjects/S1/experiments/EXP1"}
    )
    assert whole.status_code == 200 and len(whole.json()["ResultSet"]["Result"]) > 20
    assert (
        client.get("/data/services/dicomdump", params={"src": "/archive/projects/TEST/experiments/NOPE"}).status_code
        == 404
    )


def test_project_users_accessibility_saved_searches_and_user_profiles(client):
    """xnat-web ProjectUserListResource, ProjectAccessibilityResource, SavedSearchListResource; XAPI users/profiles."""
    [member] = client.get("/data/projects/TEST/users").json()["ResultSet"]["Result"]
    assert member["login"] == "admin" and member["GROUP_ID"] == "TEST_owner"
    assert set(member) == {"GROUP_ID", "displayname", "login", "firstname", "lastname", "email"}
    assert client.get("/data/projects/NOPE/users").status_code == 404
    assert client.get("/data/projects/TEST/accessibility").text == "private"
    assert client.put("/data/projects/TEST/accessibility/protected").text == "protected"
    assert client.get("/data/projects/TEST/accessibility").text == "protected"
    saved = client.get("/data/search/saved").json()["ResultSet"]
    assert saved["title"] == "Stored Searches" and saved["Result"] == []
    [profile] = client.get("/xapi/users/profiles").json()
    assert profile["username"] == "admin" and profile["enabled"] is True


def test_schema_has_the_experiment_age_and_mr_scan_parameters(emulator, client, archived):
    schema = client.get("/xapi/schemas/xnat").text
    assert '<xs:element name="age"' in schema and '<xs:element name="parameters"' in schema
    client.put(
        f"/data/experiments/{archived}/scans/9",
        params={"xsiType": "xnat:mrScanData", "xnat:mrScanData/parameters/tr": "2.5"},
    )
    [parameters] = [
        c
        for c in client.get(f"/data/experiments/{archived}/scans/9").json()["items"][0]["children"]
        if c["field"] == "parameters"
    ]
    assert parameters["items"][0]["data_fields"]["tr"] == "2.5"
    with xnat.connect(emulator.url, user="admin", password="admin", loglevel="ERROR") as session:
        session.experiments[archived].age = 42.5
        assert session.experiments[archived].age == 42.5


def test_file_digests_follow_the_sites_checksums_setting(client, archived):
    """XNAT's site setting `checksums` (on in xnat-web's site-config.properties): the catalog's MD5s,
    computed here when first listed (XNAT: when the session's catalog is built)."""
    import hashlib

    files = f"/data/experiments/{archived}/scans/1/resources/DICOM/files"
    [listed] = client.get(files).json()["ResultSet"]["Result"]
    body = client.get(f"{files}/{listed['Name']}").content
    assert listed["digest"] == hashlib.md5(body).hexdigest()
    assert client.get("/xapi/siteConfig").json()["checksums"] is True
    assert client.post("/xapi/siteConfig", json={"checksums": False}).status_code == 200
    client.put(f"/data/experiments/{archived}/resources/NOTES/files/a.txt", content=b"x", params={"inbody": "true"})
    [note] = client.get(f"/data/experiments/{archived}/resources/NOTES/files").json()["ResultSet"]["Result"]
    assert note["digest"] == ""  # checksums off: catalog entries carry none


def _direct_archive(client, study, label, **extra):
    answer = client.post(
        "/data/services/import",
        params={
            "import-handler": "DICOM-zip",
            "project": "TEST",
            "subject": "S1",
            "session": label,
            "Direct-Archive": "true",
            **extra,
        },
        content=zip_bytes(members(study)),
        headers={"Content-Type": "application/zip"},
    )
    assert answer.status_code == 200, answer.text
    return answer.text.strip()


def test_direct_archive_onto_an_archived_session_goes_through_the_prearchive(emulator, client, archived):
    """xnat-web DirectArchiveSessionServiceImpl.getOrCreate refuses a new Direct-Archive session whose
    archive directory exists ("data already exists"), and GradualDicomImporter.eitherGetOrCreateSession
    then takes the instance through the prearchive: nothing is merged into the archived session by
    Direct-Archive; the project's prearchive setting decides (here manual: it stays READY)."""
    emulator.set_prearchive_code("TEST", 0)
    before = emulator.archived_experiments("TEST")
    uri = _direct_archive(client, make_study(1, 2), "EXP1")
    assert uri.startswith("/data/prearchive/projects/TEST/") and uri.endswith("/EXP1"), uri
    assert emulator.prearchive_sessions(include_direct_archive=True) == emulator.prearchive_sessions()
    wait_until(lambda: [r for r in emulator.prearchive_sessions() if r["status"] == "READY"])
    assert emulator.archived_experiments("TEST") == before  # the archived session is untouched


def test_direct_archive_onto_an_archived_session_is_auto_archived_by_the_projects_rule(emulator, client, archived):
    """Through the prearchive the project's auto-archive applies (code 4: append), and the archiver's
    checks with it: another study under the label parks in CONFLICT (xnat-web PrearcSessionArchiver)."""
    uri = _direct_archive(client, make_study(1, 1), "EXP1")
    assert uri.startswith("/data/prearchive/projects/TEST/"), uri
    wait_until(lambda: client.get(uri).json()["ResultSet"]["Result"][0]["status"] == "CONFLICT")
    [experiment] = emulator.archived_experiments("TEST")
    assert experiment["scans"] == {"1": 1}


def test_direct_archive_into_a_label_another_study_is_receiving_goes_through_the_prearchive(emulator, client):
    """A second study's Direct-Archive session would write into the first one's archive directory:
    xnat-web's getOrCreate finds no session of its (project, StudyInstanceUID, label), sees the
    directory and refuses; the second study goes through the prearchive."""
    emulator.set_prearchive_code("TEST", 0)
    first, second = make_study(1, 1), make_study(1, 1)
    assert _direct_archive(client, first, "SHARED", prevent_auto_commit="true").startswith("/xapi/direct-archive/")
    assert _direct_archive(client, second, "SHARED").startswith("/data/prearchive/projects/TEST/")
    # the same study again joins its own Direct-Archive session, which is still receiving
    assert _direct_archive(client, first, "SHARED") == f"/xapi/direct-archive/TEST/{first[0].study_uid}/SHARED"


def test_gradual_direct_archive_after_the_session_closed_goes_through_the_prearchive(emulator, client):
    """An instance for a Direct-Archive session no longer receiving (queued for archiving by
    ``POST /xapi/direct-archive/...``): getOrCreate refuses ("no longer in receiving state"), the
    instance goes through the prearchive (xnat-web DirectArchiveSessionServiceImpl.triggerArchive:
    "this will be handled by sending the later files to the prearchive")."""
    emulator.set_prearchive_code("TEST", 0)
    study = make_study(1, 2)
    params = {"PROJECT_ID": "TEST", "SUBJECT_ID": "S1", "EXPT_LABEL": "LATE", "Direct-Archive": "true"}

    def send(instance):
        answer = client.post(
            "/data/services/import",
            params={"import-handler": "gradual-DICOM", "inbody": "true", **params},
            content=instance.data,
            headers={"Content-Type": "application/dicom"},
        )
        assert answer.status_code == 200, answer.text
        return answer.text.strip()

    da_uri = send(study[0])
    emulator.prearchive.stop()  # the rebuilder waits: the session stays queued while the late file comes
    try:
        assert client.post(da_uri).status_code == 200
        late = send(study[1])
    finally:
        emulator.prearchive.start()
    assert late.startswith("/data/prearchive/projects/TEST/") and late.endswith("/LATE"), late
    wait_until(lambda: emulator.archived_experiments("TEST"))
    assert emulator.archived_experiments("TEST")[0]["scans"] == {"1": 1}
