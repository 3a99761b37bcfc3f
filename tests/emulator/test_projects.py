"""Projects, prearchive codes and subjects (xnat-web `ProjectResource`, `PrearcUtils`; XNAT wiki: Get All Experiments)."""

from __future__ import annotations


def test_seeded_project_default_code_is_4(client):
    assert client.get("/data/projects/TEST/prearchive_code").text == "4"


def test_create_project_and_set_code(client):
    assert client.put("/data/projects/NEW").status_code in (200, 201)
    rows = client.get("/data/projects", params={"format": "json"}).json()["ResultSet"]
    assert {r["ID"] for r in rows["Result"]} == {"NEW", "TEST"}
    assert rows["totalRecords"] == "2"
    assert client.put("/data/projects/NEW/prearchive_code/0").status_code == 200
    assert client.get("/data/projects/NEW/prearchive_code").text == "0"


def test_unknown_project_is_404(client):
    assert client.get("/data/projects/NOPE").status_code == 404
    assert client.get("/data/projects/NOPE/prearchive_code").status_code == 404


def test_subject_put_is_201_new_200_existing_with_the_id_as_body(client):
    # xnat-web SubjectResource.handlePut: returnString(sub.getId(), existing == null ? 201 : 200)
    created = client.put("/data/projects/TEST/subjects/SUBJ1")
    again = client.put("/data/projects/TEST/subjects/SUBJ1")
    assert (created.status_code, again.status_code) == (201, 200)
    rows = client.get("/data/projects/TEST/subjects").json()["ResultSet"]["Result"]
    assert [r["label"] for r in rows] == ["SUBJ1"]
    assert rows[0]["ID"].startswith("XNAT_S")
    assert created.text == again.text == rows[0]["ID"]
