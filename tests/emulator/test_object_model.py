"""XNAT's object model over REST, item by item of the emulator's list of differences.

Sources: XNAT's REST API documentation (Experiment API, Image Scan Resource API, Subject Resource
API, "How To Download Files via the XNAT REST API", "REST Enhanced Listing Options") and xnat-web's
restlet resources (SubjectResource, ExperimentResource, ScanResource, FileList)."""

from __future__ import annotations

import csv
import io
import tarfile
import zipfile
from xml.etree import ElementTree

import pytest
from emulator_helpers import make_study, members, zip_bytes

from xnat_flows.testing.pytest_plugin import wait_until


def archive_session(client, subject="SUBJ", label="SESS", series=2, instances=2, project="TEST", **kwargs) -> str:
    answer = client.post(
        "/data/services/import",
        params={
            "import-handler": "DICOM-zip",
            "dest": f"/archive/projects/{project}/subjects/{subject}/experiments/{label}",
        },
        content=zip_bytes(members(make_study(series, instances, **kwargs))),
        headers={"Content-Type": "application/zip"},
    )
    assert answer.status_code == 200, answer.text
    rows = client.get(f"/data/projects/{project}/experiments", params={"label": label}).json()["ResultSet"]["Result"]
    return rows[0]["ID"]


def results(answer) -> list[dict[str, str]]:
    assert answer.status_code == 200, answer.text
    return answer.json()["ResultSet"]["Result"]


def put_text(client, url, data: bytes = b"x", **params):
    return client.put(url, content=data, params=params, headers={"Content-Type": "text/plain"})


# 1. resources addressed by xnat_abstractresource_id ------------------------------------------------
def test_resources_are_addressed_by_id_or_label(client):
    experiment = archive_session(client)
    assert put_text(client, f"/data/experiments/{experiment}/resources/NOTES/files/a.txt", b"A").status_code == 200
    resource_id = results(client.get(f"/data/experiments/{experiment}/resources"))[0]["xnat_abstractresource_id"]
    by_id = results(client.get(f"/data/experiments/{experiment}/resources/{resource_id}/files"))
    assert [f["Name"] for f in by_id] == ["a.txt"]
    # A PUT through the ID files into that resource, never into a new one labelled with the number.
    assert (
        put_text(client, f"/data/experiments/{experiment}/resources/{resource_id}/files/b.txt", b"B").status_code == 200
    )
    labels = [r["label"] for r in results(client.get(f"/data/experiments/{experiment}/resources"))]
    assert labels == ["NOTES"]
    assert client.get(f"/data/experiments/{experiment}/resources/NOTES/files/b.txt").content == b"B"
    dicom_id = results(client.get(f"/data/experiments/{experiment}/scans/1/resources"))[0]["xnat_abstractresource_id"]
    assert len(results(client.get(f"/data/experiments/{experiment}/scans/1/resources/{dicom_id}/files"))) == 2


# 2. format=csv|xml|html and columns= ----------------------------------------------------------------
def test_listings_render_as_csv_xml_and_html(client):
    experiment = archive_session(client)
    as_json = results(client.get(f"/data/experiments/{experiment}/scans"))

    as_csv = client.get(f"/data/experiments/{experiment}/scans", params={"format": "csv"})
    assert as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [r["ID"] for r in rows] == [r["ID"] for r in as_json] == ["1", "2"]

    as_xml = client.get(f"/data/experiments/{experiment}/scans", params={"format": "xml"})
    root = ElementTree.fromstring(as_xml.content)  # xnat-web XMLTableRepresentation's shape
    assert (root.tag, root.get("title")) == ("ResultSet", "Scans")
    columns = [c.text for c in root.findall("results/columns/column")]
    cells = [[c.text or "" for c in row.findall("cell")] for row in root.findall("results/rows/row")]
    assert [dict(zip(columns, row, strict=True))["ID"] for row in cells] == ["1", "2"]

    files = ElementTree.fromstring(
        client.get(f"/data/experiments/{experiment}/scans/1/files", params={"format": "xml"}).content
    )
    uri_column = [c for c in files.findall("results/columns/column") if c.text == "URI"]
    assert uri_column[0].get("serverRoot") == ""
    assert len(files.findall("results/rows/row")) == 2

    as_html = client.get("/data/projects", params={"format": "html"})
    assert as_html.headers["content-type"].startswith("text/html")
    assert "<td>TEST</td>" in as_html.text


def test_columns_select_names_and_xpaths(client):
    archive_session(client, label="S1")
    rows = results(
        client.get("/data/experiments", params={"columns": "label,xnat:imageSessionData/modality,subject_label"})
    )
    # xnat-web QueryOrganizerResource.formatHeaders: the xpath column carries its shortcut name; the
    # listing is rooted at xnat:imageSessionData, no data type of its own: xsiType and project are added.
    assert rows == [
        {
            "label": "S1",
            "modality": "CT",
            "subject_label": "SUBJ",
            "xsiType": "xnat:ctSessionData",
            "project": "TEST",
            "URI": rows[0]["URI"],
        }
    ]
    as_csv = client.get("/data/projects/TEST/experiments", params={"format": "csv", "columns": "ID,label"})
    assert next(csv.reader(io.StringIO(as_csv.text))) == ["ID", "label", "URI"]


# 3. scans/ALL/files lists, zips only with format=zip ------------------------------------------------
def test_all_scan_files_is_a_listing_unless_a_zip_is_asked_for(client):
    experiment = archive_session(client)
    for params in ({"format": "json"}, {}):
        rows = results(client.get(f"/data/experiments/{experiment}/scans/ALL/files", params=params))
        assert len(rows) == 4
        assert {r["URI"].split("/scans/")[1].split("/")[0] for r in rows} == {"1", "2"}
    zipped = client.get(f"/data/experiments/{experiment}/scans/ALL/files", params={"format": "zip"})
    assert zipped.headers["content-type"] == "application/zip"
    assert len(zipfile.ZipFile(io.BytesIO(zipped.content)).namelist()) == 4


# 4. zip layout --------------------------------------------------------------------------------------
def test_every_download_zip_uses_xnats_layout(client):
    experiment = archive_session(client, label="LAYOUT")
    put_text(client, f"/data/experiments/{experiment}/resources/NOTES/files/sub/n.txt")
    names = {
        "scan resource": f"/data/experiments/{experiment}/scans/1/resources/DICOM/files",
        "scan": f"/data/experiments/{experiment}/scans/1/files",
        "session resource": f"/data/experiments/{experiment}/resources/NOTES/files",
    }
    listing = {
        key: zipfile.ZipFile(io.BytesIO(client.get(url, params={"format": "zip"}).content)).namelist()
        for key, url in names.items()
    }
    assert all(n.startswith("LAYOUT/scans/1/resources/DICOM/files/") for n in listing["scan resource"])
    assert sorted(listing["scan"]) == sorted(listing["scan resource"]) and len(listing["scan"]) == 2
    assert listing["session resource"] == ["LAYOUT/resources/NOTES/files/sub/n.txt"]


# 5. scan downloads: one scan, comma lists, scan types, tar.gz ---------------------------------------
def test_scan_downloads_by_id_list_type_and_format(client):
    experiment = archive_session(client, series=3, label="DL")
    client.put(f"/data/experiments/{experiment}/scans/2", params={"type": "T1w"})

    def names(ref, fmt="zip"):
        answer = client.get(f"/data/experiments/{experiment}/scans/{ref}/files", params={"format": fmt})
        assert answer.status_code == 200, answer.text
        if fmt == "zip":
            return sorted(zipfile.ZipFile(io.BytesIO(answer.content)).namelist())
        return sorted(tarfile.open(fileobj=io.BytesIO(answer.content), mode="r:gz").getnames())

    assert {n.split("/")[2] for n in names("1")} == {"1"}
    assert {n.split("/")[2] for n in names("1,3")} == {"1", "3"}
    assert {n.split("/")[2] for n in names("T1w")} == {"2"}
    assert names("1,2", "tar.gz") == names("1,2")
    # One resource of every scan, and several resources at once ("How To Download Files via the XNAT REST API")
    put_text(client, f"/data/experiments/{experiment}/scans/1/resources/SNAPSHOTS/files/snap.jpg")
    every_dicom = client.get(
        f"/data/experiments/{experiment}/scans/ALL/resources/DICOM/files", params={"format": "zip"}
    )
    assert {n.split("/")[2] for n in zipfile.ZipFile(io.BytesIO(every_dicom.content)).namelist()} == {"1", "2", "3"}
    both = results(client.get(f"/data/experiments/{experiment}/scans/1/resources/DICOM,SNAPSHOTS/files"))
    assert sorted(r["collection"] for r in both) == ["DICOM", "DICOM", "SNAPSHOTS"]
    assert client.get(f"/data/experiments/{experiment}/scans/ALL/resources/NOPE/files").status_code == 404
    assert client.get(f"/data/experiments/{experiment}/scans/NOPE/files").status_code == 404


# 6. creation with PUT -------------------------------------------------------------------------------
def test_put_creates_experiment_subject_and_scan(client):
    created = client.put(
        "/data/projects/TEST/subjects/NEWSUBJ/experiments/NEW",
        params={"xsiType": "xnat:mrSessionData", "xnat:mrSessionData/date": "2024-03-04"},
    )
    assert created.status_code == 201 and created.text.startswith("XNAT_E")
    experiment = created.text
    subjects = results(client.get("/data/projects/TEST/subjects"))
    assert [s["label"] for s in subjects] == ["NEWSUBJ"]
    again = client.put("/data/projects/TEST/subjects/NEWSUBJ/experiments/NEW", params={"xsiType": "xnat:mrSessionData"})
    assert (again.status_code, again.text) == (200, experiment)

    # xnat-web ScanResource.handlePut: 200, and a new scan needs its modality's xsiType
    assert client.put(f"/data/experiments/{experiment}/scans/8").status_code == 417
    assert (
        client.put(f"/data/experiments/{experiment}/scans/8", params={"xsiType": "xnat:imageScanData"}).status_code
        == 400
    )
    scan = client.put(f"/data/experiments/{experiment}/scans/7", params={"xsiType": "xnat:mrScanData", "type": "T2"})
    assert scan.status_code == 200
    rows = results(client.get(f"/data/experiments/{experiment}/scans"))
    assert [(r["ID"], r["type"], r["xsiType"]) for r in rows] == [("7", "T2", "xnat:mrScanData")]
    document = client.get(f"/data/experiments/{experiment}").json()["items"][0]
    assert document["meta"]["xsi:type"] == "xnat:mrSessionData"
    assert document["data_fields"]["date"] == "2024-03-04"
    # xnat-web SubjAssessmentResource.handlePut: neither xsiType nor a document → 417 "Need PUT Contents".
    no_type = client.put("/data/projects/TEST/subjects/X/experiments/NOTYPE")
    assert no_type.status_code == 417 and "Need PUT Contents" in no_type.text
    assert client.get("/data/projects/TEST/subjects/X").status_code == 404  # no subject left behind
    refused = client.put(
        "/data/projects/TEST/subjects/NEWSUBJ/experiments/BADDATE",
        params={"xsiType": "xnat:mrSessionData", "xnat:mrSessionData/date": "yesterday"},
    )
    assert refused.status_code == 400  # checked before anything is created
    assert [e["label"] for e in results(client.get("/data/projects/TEST/experiments"))] == ["NEW"]


# 7. filters on /data/experiments --------------------------------------------------------------------
def test_experiment_filters_return_the_right_rows(client):
    client.put("/data/projects/OTHER")
    archive_session(client, label="CT_A")
    archive_session(client, label="CT_B")
    archive_session(client, label="OTHER_1", project="OTHER", subject="S9")
    client.put("/data/projects/TEST/subjects/M/experiments/MR_A", params={"xsiType": "xnat:mrSessionData"})

    def labels(**params):
        return [r["label"] for r in results(client.get("/data/experiments", params=params))]

    assert labels(project="OTHER") == ["OTHER_1"]
    assert labels(xsiType="xnat:mrSessionData") == ["MR_A"]
    assert sorted(labels(xsiType="xnat:imageSessionData")) == ["CT_A", "CT_B", "MR_A", "OTHER_1"]
    assert labels(xsiType="xnat:petSessionData") == []
    assert labels(label="CT_B") == ["CT_B"]
    assert sorted(labels(label="CT_*")) == ["CT_A", "CT_B"]
    assert sorted(labels(label="CT_A,MR_A")) == ["CT_A", "MR_A"]
    assert labels(project="TEST", sortBy="label", sortOrder="DESC") == ["MR_A", "CT_B", "CT_A"]
    assert labels(project="TEST", sortBy="label", limit="2", offset="1") == ["CT_B", "MR_A"]
    assert client.get("/data/experiments", params={"limit": "many"}).status_code == 400


# 8. writes do what they say -------------------------------------------------------------------------
def test_put_metadata_persists_and_delete_scan_deletes(client, emulator):
    experiment = archive_session(client)
    answer = client.put(
        f"/data/experiments/{experiment}",
        params={
            "xnat:ctSessionData/date": "2023-01-02",
            "xnat:ctSessionData/note": "checked",
            "xnat:ctSessionData/fields/field[name=visit]/field": "baseline",
        },
    )
    assert answer.status_code == 200
    item = client.get(f"/data/experiments/{experiment}").json()["items"][0]
    assert item["data_fields"]["date"] == "2023-01-02" and item["data_fields"]["note"] == "checked"
    fields = next(c for c in item["children"] if c["field"] == "fields/field")["items"]
    assert [(f["data_fields"]["name"], f["data_fields"]["field"]) for f in fields] == [("visit", "baseline")]
    bad_date = client.put(f"/data/experiments/{experiment}", params={"xnat:ctSessionData/date": "soon"})
    assert bad_date.status_code == 400  # refused, not stored
    client.put(f"/data/experiments/{experiment}", params={"date": "03/04/2022"})  # XNAT's REST shortcut
    assert client.get(f"/data/experiments/{experiment}").json()["items"][0]["data_fields"]["date"] == "2022-03-04"
    client.put(f"/data/experiments/{experiment}", params={"xnat:ctSessionData/note": "NULL"})
    assert "note" not in client.get(f"/data/experiments/{experiment}").json()["items"][0]["data_fields"]

    assert client.delete(f"/data/experiments/{experiment}/scans/1").status_code == 200
    assert [r["ID"] for r in results(client.get(f"/data/experiments/{experiment}/scans"))] == ["2"]
    assert list(emulator.archived_experiments()[0]["scans"]) == ["2"]
    assert client.get(f"/data/experiments/{experiment}/scans/1/files").status_code == 404


# 9. subjects and projects: delete, resources, sharing, catalog refresh ------------------------------
def test_delete_subject_and_project(client, emulator):
    archive_session(client, subject="GONE", label="G1")
    assert client.delete("/data/projects/TEST/subjects/GONE").status_code == 200
    assert results(client.get("/data/projects/TEST/subjects")) == []
    assert emulator.archived_experiments() == []
    client.put("/data/projects/DOOMED")
    archive_session(client, project="DOOMED", label="D1")
    assert client.delete("/data/projects/DOOMED", params={"removeFiles": "true"}).status_code == 200
    assert client.get("/data/projects/DOOMED").status_code == 404
    assert [p["ID"] for p in results(client.get("/data/projects"))] == ["TEST"]


def test_project_and_subject_resources(client):
    client.put("/data/projects/TEST/subjects/S1")
    for parent in ("/data/projects/TEST", "/data/projects/TEST/subjects/S1"):
        assert client.put(f"{parent}/resources/PROTOCOL").status_code == 200
        assert put_text(client, f"{parent}/resources/PROTOCOL/files/p.txt", b"P").status_code == 200
        assert [f["Name"] for f in results(client.get(f"{parent}/resources/PROTOCOL/files"))] == ["p.txt"]
        assert client.get(f"{parent}/resources/PROTOCOL/files/p.txt").content == b"P"
    subject_id = results(client.get("/data/projects/TEST/subjects"))[0]["ID"]
    assert [r["label"] for r in results(client.get(f"/data/subjects/{subject_id}/resources"))] == ["PROTOCOL"]


def test_sharing_a_subject_and_session_into_another_project(client):
    client.put("/data/projects/SHARED")
    experiment = archive_session(client, subject="SH", label="SHSESS")
    assert (
        client.put("/data/projects/TEST/subjects/SH/projects/SHARED", params={"label": "SH_IN_SHARED"}).status_code
        == 200
    )
    assert client.put("/data/projects/TEST/subjects/SH/experiments/SHSESS/projects/SHARED").status_code == 200
    assert [s["label"] for s in results(client.get("/data/projects/SHARED/subjects"))] == ["SH_IN_SHARED"]
    assert [e["ID"] for e in results(client.get("/data/projects/SHARED/experiments"))] == [experiment]
    shared = client.get("/data/projects/SHARED/subjects/SH_IN_SHARED/experiments/SHSESS").json()["items"][0]
    assert shared["data_fields"]["ID"] == experiment
    sharing = next(c for c in shared["children"] if c["field"] == "sharing/share")["items"]
    assert [s["data_fields"]["project"] for s in sharing] == ["SHARED"]
    assert client.delete(f"/data/experiments/{experiment}/projects/SHARED").status_code == 200
    assert results(client.get("/data/projects/SHARED/experiments")) == []


def test_refresh_catalog_service(client):
    experiment = archive_session(client)
    answer = client.post(
        "/data/services/refresh/catalog",
        params={"resource": f"/archive/experiments/{experiment}", "options": "populateStats"},
    )
    assert answer.status_code == 200
    assert (
        client.post("/data/services/refresh/catalog", params={"resource": "/archive/experiments/NOPE"}).status_code
        == 404
    )
    assert client.post("/data/services/refresh/catalog").status_code == 400


# 10. schema, XML documents, assessors, reconstructions, site listings, search, HEAD -------------------
def test_schema_declares_xnats_model(client):
    schema = ElementTree.fromstring(client.get("/xapi/schemas/xnat").content)
    xs = "{http://www.w3.org/2001/XMLSchema}"
    types = {t.get("name"): t for t in schema.iter(f"{xs}complexType") if t.get("name")}
    for name in (
        "projectData",
        "investigatorData",
        "subjectData",
        "demographicData",
        "projectParticipant",
        "experimentData",
        "imageSessionData",
        "mrSessionData",
        "imageScanData",
        "mrScanData",
        "imageAssessorData",
        "qcAssessmentData",
        "reconstructedImageData",
        "resourceCatalog",
    ):
        assert name in types, name

    def element_names(type_name):
        return {e.get("name") for e in types[type_name].iter(f"{xs}element")}

    assert {"demographics", "fields", "resources", "sharing", "experiments"} <= element_names("subjectData")
    assert {"scans", "assessors", "reconstructions"} <= element_names("imageSessionData")
    assert {"sharing", "fields", "resources", "date"} <= element_names("experimentData")
    assert {"PI", "investigators", "fields"} <= element_names("projectData")
    assert {"gender", "dob", "handedness"} <= element_names("demographicData")


def test_single_objects_as_xml(client):
    experiment = archive_session(client, label="XMLSESS")
    client.put(f"/data/experiments/{experiment}", params={"xnat:ctSessionData/fields/field[name=arm]/field": "A"})
    document = ElementTree.fromstring(client.get(f"/data/experiments/{experiment}", params={"format": "xml"}).content)
    ns = {"xnat": "http://nrg.wustl.edu/xnat"}
    assert document.tag == "{http://nrg.wustl.edu/xnat}CTSession"
    assert document.get("ID") == experiment and document.get("label") == "XMLSESS"
    assert [s.get("ID") for s in document.findall("xnat:scans/xnat:scan", ns)] == ["1", "2"]
    assert document.find("xnat:fields/xnat:field[@name='arm']", ns).text == "A"
    subject = ElementTree.fromstring(client.get("/data/projects/TEST/subjects/SUBJ", params={"format": "xml"}).content)
    assert subject.tag == "{http://nrg.wustl.edu/xnat}Subject" and subject.get("label") == "SUBJ"
    project = ElementTree.fromstring(client.get("/data/projects/TEST", params={"format": "xml"}).content)
    assert project.tag == "{http://nrg.wustl.edu/xnat}Project" and project.get("ID") == "TEST"


def test_assessors_and_reconstructions(client, emulator):
    experiment = archive_session(client)
    made = client.put(f"/data/experiments/{experiment}/assessors/QC1", params={"xsiType": "xnat:qcManualAssessorData"})
    assert made.status_code == 201
    assessor_id = made.text
    assert (
        put_text(client, f"/data/experiments/{experiment}/assessors/QC1/out/resources/QC/files/r.txt").status_code
        == 200
    )
    rows = results(client.get(f"/data/experiments/{experiment}/assessors"))
    assert [(r["ID"], r["label"], r["xsiType"]) for r in rows] == [(assessor_id, "QC1", "xnat:qcManualAssessorData")]
    assert [
        f["Name"] for f in results(client.get(f"/data/experiments/{experiment}/assessors/{assessor_id}/files"))
    ] == ["r.txt"]
    assert [e["ID"] for e in results(client.get("/data/experiments"))] == [experiment]  # sessions only
    assert [e["ID"] for e in emulator.archived_experiments()] == [experiment]
    assessors = results(client.get("/data/experiments", params={"xsiType": "xnat:imageAssessorData"}))
    assert [a["ID"] for a in assessors] == [assessor_id]

    assert client.put(f"/data/experiments/{experiment}/reconstructions/R1", params={"type": "MPR"}).status_code == 201
    assert (
        put_text(client, f"/data/experiments/{experiment}/reconstructions/R1/resources/NIFTI/files/r.nii").status_code
        == 200
    )
    assert [(r["ID"], r["type"]) for r in results(client.get(f"/data/experiments/{experiment}/reconstructions"))] == [
        ("R1", "MPR")
    ]
    document = client.get(f"/data/experiments/{experiment}").json()["items"][0]
    fields = {c["field"] for c in document["children"]}
    assert {"scans/scan", "assessors/assessor", "reconstructions/reconstructedImage"} <= fields


def test_site_wide_subject_and_user_listings(client):
    archive_session(client, subject="ALPHA")
    assert [s["label"] for s in results(client.get("/data/subjects"))] == ["ALPHA"]
    assert [u["login"] for u in results(client.get("/data/users"))] == ["admin"]


def test_xml_search(client):
    archive_session(client, label="FIND_ME")
    archive_session(client, label="NOT_ME")
    search = """<?xml version="1.0" encoding="UTF-8"?>
<xdat:search xmlns:xdat="http://nrg.wustl.edu/security">
  <xdat:root_element_name>xnat:ctSessionData</xdat:root_element_name>
  <xdat:search_field><xdat:element_name>xnat:ctSessionData</xdat:element_name><xdat:field_ID>LABEL</xdat:field_ID>
    <xdat:sequence>0</xdat:sequence></xdat:search_field>
  <xdat:search_field><xdat:element_name>xnat:ctSessionData</xdat:element_name><xdat:field_ID>PROJECT</xdat:field_ID>
    <xdat:sequence>1</xdat:sequence></xdat:search_field>
  <xdat:search_where method="AND"><xdat:criteria override_value_formatting="0">
    <xdat:schema_field>xnat:ctSessionData/label</xdat:schema_field><xdat:comparison_type>LIKE</xdat:comparison_type>
    <xdat:value>%FIND%</xdat:value></xdat:criteria></xdat:search_where>
</xdat:search>"""
    answer = client.post("/data/search", params={"format": "csv"}, content=search, headers={"Content-Type": "text/xml"})
    assert answer.status_code == 200, answer.text
    assert list(csv.DictReader(io.StringIO(answer.text))) == [{"label": "FIND_ME", "project": "TEST"}]
    assert client.post("/data/search", content=b"<not-xml").status_code == 400


def test_head_and_last_modified(client):
    experiment = archive_session(client)
    name = results(client.get(f"/data/experiments/{experiment}/scans/1/files"))[0]["URI"]
    full = client.get(name)
    head = client.head(name)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == full.headers["content-length"] == str(len(full.content))
    assert "GMT" in full.headers["last-modified"] and head.headers["last-modified"] == full.headers["last-modified"]
    assert client.head(f"/data/experiments/{experiment}").status_code == 200
    assert client.head("/data/experiments/NOPE").status_code == 404


# 11. AA:true / AA:false in the routing comment -------------------------------------------------------
@pytest.mark.parametrize(("code", "flag", "archived"), [(0, "AA:true", True), (4, "AA:false", False)])
def test_routing_comment_auto_archive_flag_overrides_the_project(client, emulator, code, flag, archived):
    emulator.set_prearchive_code("TEST", code)
    for instance in make_study(1, 2, patient_comments=f"Project:TEST Subject:R1 Session:ROUTED {flag}"):
        answer = client.post(
            "/data/services/import",
            params={"import-handler": "gradual-DICOM", "inbody": "true"},
            content=instance.data,
            headers={"Content-Type": "application/dicom"},
        )
        assert answer.status_code == 200, answer.text
    if archived:
        wait_until(lambda: emulator.archived_experiments())
        assert emulator.prearchive_sessions() == []
    else:
        rows = wait_until(lambda: [r for r in emulator.prearchive_sessions() if r["status"] == "READY"])
        assert [r["name"] for r in rows] == ["ROUTED"]
        assert emulator.archived_experiments() == []
