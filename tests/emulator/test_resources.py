"""Resource folders and file uploads on experiments and scans (XNAT wiki: Experiment/Subject/Scan Resource API; xnat-web `FileList.java`)."""

from __future__ import annotations

import hashlib

import pytest
from emulator_helpers import make_study, members, tar_bytes, zip_bytes


@pytest.fixture
def experiment(client):
    response = client.post(
        "/data/services/import",
        params={
            "import-handler": "DICOM-zip",
            "project": "TEST",
            "subject": "S",
            "session": "RES",
            "dest": "/archive/projects/TEST",
        },
        content=zip_bytes(members(make_study(1, 1))),
        headers={"Content-Type": "application/zip"},
    )
    assert response.status_code == 200, response.text
    return client.get(response.text.strip()).json()["items"][0]["data_fields"]["ID"]


@pytest.mark.parametrize(
    "parent",
    ["/data/experiments/{e}", "/data/experiments/{e}/scans/1", "/data/projects/TEST/subjects/S/experiments/RES"],
)
def test_create_resource_then_conflict(client, experiment, parent):
    base = parent.format(e=experiment)
    assert client.put(f"{base}/resources/NOTES", params={"format": "TXT"}).status_code == 200
    assert client.put(f"{base}/resources/NOTES").status_code == 409
    labels = [r["label"] for r in client.get(f"{base}/resources").json()["ResultSet"]["Result"]]
    assert "NOTES" in labels


def test_inbody_upload_download_and_digest(client, experiment):
    payload = b"some notes\n" * 100
    url = f"/data/experiments/{experiment}/resources/NOTES/files/sub/dir/notes.txt"
    assert client.put(url, params={"inbody": "true"}, content=payload).status_code == 200  # auto-creates NOTES
    assert client.get(url).content == payload
    [row] = client.get(f"/data/experiments/{experiment}/resources/NOTES/files").json()["ResultSet"]["Result"]
    assert row["Name"] == "notes.txt" and row["Size"] == str(len(payload))
    assert row["digest"] == hashlib.md5(payload).hexdigest()


def test_octet_stream_without_inbody_is_raw(client, experiment):
    url = f"/data/experiments/{experiment}/scans/1/resources/RAW/files/a.bin"
    response = client.put(url, content=b"abc", headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 200
    assert client.get(url).content == b"abc"


def test_no_data_is_400(client, experiment):
    url = f"/data/experiments/{experiment}/resources/X/files/a.json"
    empty = client.put(url)
    assert empty.status_code == 400 and "didn't provide any data" in empty.text
    typed = client.put(url, content=b'{"a": 1}', headers={"Content-Type": "application/json"})
    assert typed.status_code == 400 and "inbody=true" in typed.text


def test_duplicates_answer_200_with_list_unless_overwrite(client, experiment):
    url = f"/data/experiments/{experiment}/resources/DUP/files/a.txt"
    client.put(url, params={"inbody": "true"}, content=b"one")
    duplicate = client.put(url, params={"inbody": "true"}, content=b"two")
    assert duplicate.status_code == 200 and duplicate.json() == {"duplicates": ["a.txt"]}
    assert client.get(url).content == b"one"
    assert client.put(url, params={"inbody": "true", "overwrite": "true"}, content=b"two").status_code == 200
    assert client.get(url).content == b"two"


@pytest.mark.parametrize("kind", ["zip", "tar", "tgz"])
def test_extract_keeps_inner_paths(client, experiment, kind):
    entries = [("mr_1/1.dcm", b"one"), ("mr_1/deep/2.txt", b"two")]
    body = {"zip": zip_bytes(entries), "tar": tar_bytes(entries), "tgz": tar_bytes(entries, "w:gz")}[kind]
    name = {"zip": "bundle.zip", "tar": "bundle.tar", "tgz": "bundle.tgz"}[kind]
    url = f"/data/experiments/{experiment}/resources/EXT/files/{name}"
    assert client.post(url, params={"inbody": "true", "extract": "true"}, content=body).status_code == 200
    rows = client.get(f"/data/experiments/{experiment}/resources/EXT/files").json()["ResultSet"]["Result"]
    assert sorted(r["path"] for r in rows) == ["mr_1/1.dcm", "mr_1/deep/2.txt"]
    assert client.get(f"/data/experiments/{experiment}/resources/EXT/files/mr_1/deep/2.txt").content == b"two"


def test_extract_refuses_zip_slip(client, experiment):
    url = f"/data/experiments/{experiment}/resources/EXT/files/evil.zip"
    response = client.post(url, params={"inbody": "true", "extract": "true"}, content=zip_bytes([("../x", b"x")]))
    assert response.status_code == 400


def test_multipart_upload_and_zip_download(client, experiment):
    url = f"/data/experiments/{experiment}/resources/MP/files"
    response = client.post(url, files=[("f1", ("a.txt", b"A", "text/plain")), ("f2", ("b.txt", b"B", "text/plain"))])
    assert response.status_code == 200
    download = client.get(url, params={"format": "zip"})
    import io
    import zipfile

    # XNAT's layout in every download zip: {session}/resources/{label}/files/{path}
    assert sorted(zipfile.ZipFile(io.BytesIO(download.content)).namelist()) == [
        "RES/resources/MP/files/a.txt",
        "RES/resources/MP/files/b.txt",
    ]


def test_scans_all_files_zip(client, experiment):
    import io
    import zipfile

    download = client.get(f"/data/experiments/{experiment}/scans/ALL/files", params={"format": "zip"})
    names = zipfile.ZipFile(io.BytesIO(download.content)).namelist()
    assert names and all("/scans/1/resources/DICOM/files/" in n for n in names)


def test_delete_file_and_resource(client, experiment):
    base = f"/data/experiments/{experiment}/resources/TMP"
    client.put(f"{base}/files/a.txt", params={"inbody": "true"}, content=b"a")
    assert client.delete(f"{base}/files/a.txt").status_code == 200
    assert client.get(f"{base}/files/a.txt").status_code == 404
    assert client.delete(base, params={"removeFiles": "true"}).status_code == 200
    assert client.get(f"{base}/files").status_code == 404


def test_unknown_experiment_is_404(client):
    assert client.get("/data/experiments/XNAT_E99999/scans").status_code == 404


def test_delete_experiment(client, experiment, emulator):
    assert client.delete(f"/data/experiments/{experiment}").status_code == 200
    assert client.get(f"/data/experiments/{experiment}").status_code == 404
    assert emulator.archived_experiments() == []
