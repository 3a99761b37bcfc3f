"""``manage.resources``: local collection rules and request shapes against scripted XNAT answers, then
uploads end to end against the XNAT emulator (round trip, scans, duplicates, targets)."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import httpx
import pytest
from manage_helpers import archive_directly, experiment_document

from xnat_flows.client.errors import InputError, NotFoundError
from xnat_flows.manage import resources
from xnat_flows.manage.resources import ResourceTarget, list_resource_files, upload_resource


def _tree(root: Path) -> Path:
    data = root / "bids"
    (data / "sub-01" / "anat").mkdir(parents=True)
    (data / "sub-01" / "anat" / "T1w.nii.gz").write_bytes(os.urandom(3000))
    (data / "dataset_description.json").write_text('{"Name": "x"}')
    (data / ".DS_Store").write_bytes(b"junk")
    (data / ".git").mkdir()
    (data / ".git" / "HEAD").write_text("ref")
    outside = root / "secret.txt"
    outside.write_text("not for XNAT")
    (data / "leak.txt").symlink_to(outside)
    (data / "alias.json").symlink_to(data / "dataset_description.json")
    (data / "dangling").symlink_to(root / "missing")
    (data / "loop").symlink_to(data, target_is_directory=True)
    return data


def test_collect_directory_skips_hidden_and_escaping_symlinks(tmp_path):
    members, skipped = resources.collect_directory(_tree(tmp_path))
    assert [m.relpath for m in members] == ["alias.json", "dataset_description.json", "sub-01/anat/T1w.nii.gz"]
    reasons = {s.path: s.reason for s in skipped}
    assert reasons[".DS_Store"] == "hidden file"
    assert reasons[".git"] == "hidden folder"
    assert reasons["leak.txt"].startswith("symlink pointing outside the directory")
    assert reasons["dangling"] == "broken symlink"
    assert reasons["loop"] == "symlinked folder (not followed)"


def test_directory_upload_streams_one_zip_with_inner_paths(scripted_client, tmp_path):
    data = _tree(tmp_path)
    requests: list[tuple[str, str, dict[str, str], bytes]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = request.read()
        requests.append((request.method, request.url.path, dict(request.url.params), body))
        if request.url.path.endswith("/resources/BIDS"):
            return httpx.Response(409, text="resource already exists")
        return httpx.Response(200, text="")

    with scripted_client(handler) as client:
        result = resources.upload_resource(client, ResourceTarget(session="XNAT_E00001"), "BIDS", data)

    (create, upload) = requests
    assert create[:2] == ("PUT", "/data/experiments/XNAT_E00001/resources/BIDS")
    assert upload[:3] == (
        "PUT",
        "/data/experiments/XNAT_E00001/resources/BIDS/files/bids.zip",
        {"inbody": "true", "extract": "true"},
    )
    with zipfile.ZipFile(io.BytesIO(upload[3])) as archive:
        assert archive.namelist() == result.files
        assert archive.read("sub-01/anat/T1w.nii.gz") == (data / "sub-01" / "anat" / "T1w.nii.gz").read_bytes()
        assert all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())
    assert result.extracted and not result.resource_created and result.complete
    assert result.bytes_sent == sum(m.size for m in resources.collect_directory(data)[0])
    assert {s.path for s in result.skipped} == {".DS_Store", ".git", "leak.txt", "dangling", "loop"}


def test_file_upload_to_a_scan_reports_duplicates(scripted_client, tmp_path):
    nifti = tmp_path / "t1w.nii.gz"
    nifti.write_bytes(b"\x1f\x8b" + os.urandom(100))
    seen: list[tuple[str, dict[str, str]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, dict(request.url.params)))
        if request.url.path == "/data/projects/P/experiments/S1":
            return httpx.Response(200, json=experiment_document())
        if request.url.path.endswith("/files/t1w.nii.gz"):
            assert request.read() == nifti.read_bytes()
            return httpx.Response(200, text='{"duplicates": ["t1w.nii.gz"]}', headers={"Content-Type": "text/html"})
        return httpx.Response(200)

    target = ResourceTarget(session="S1", project="P", scan="1")
    with scripted_client(handler) as client:
        result = resources.upload_resource(client, target, "NIFTI", nifti)
    assert [path for path, _ in seen] == [
        "/data/projects/P/experiments/S1",
        "/data/experiments/XNAT_E00001/scans/1/resources/NIFTI",
        "/data/experiments/XNAT_E00001/scans/1/resources/NIFTI/files/t1w.nii.gz",
    ]
    assert seen[-1][1] == {"inbody": "true"}
    assert result.duplicates == ["t1w.nii.gz"] and not result.complete and result.resource_created


def test_overwrite_and_full_project_path(scripted_client, tmp_path):
    note = tmp_path / "notes.txt"
    note.write_text("hello")
    seen: list[tuple[str, dict[str, str]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, dict(request.url.params)))
        return httpx.Response(200)

    target = ResourceTarget(session="S1", project="P", subject="SUB 1")
    with scripted_client(handler) as client:
        resources.upload_resource(client, target, "MISC", note, overwrite=True)
    assert seen[-1] == (
        "/data/projects/P/subjects/SUB 1/experiments/S1/resources/MISC/files/notes.txt",
        {"inbody": "true", "overwrite": "true"},
    )


def test_directory_without_sendable_files_is_an_input_error(scripted_client, tmp_path):
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / ".hidden").write_text("x")
    with (
        scripted_client(lambda request: httpx.Response(200)) as client,
        pytest.raises(InputError, match="no file to upload"),
    ):
        resources.upload_resource(client, ResourceTarget(session="XNAT_E00001"), "X", tmp_path / "only")


@pytest.mark.parametrize(
    ("body", "expected"),
    [("", []), ('{"duplicates": ["a/b.txt", "c"]}', ["a/b.txt", "c"]), ("{not json", []), ('{"other": 1}', [])],
)
def test_duplicates_in(body, expected):
    assert resources.duplicates_in(body) == expected


@pytest.fixture
def experiment_id(client) -> str:
    return archive_directly(client, "TEST", "SUB1", "S1")


def _nested_tree(root: Path) -> dict[str, bytes]:
    """A BIDS-like tree with odd names; returns {relative path: bytes} of what must arrive."""
    files = {
        "dataset_description.json": b'{"Name": "demo", "BIDSVersion": "1.9.0"}',
        "sub-01/anat/sub-01_T1w.nii.gz": os.urandom(200_000),
        "sub-01/func/sub-01_task-rest_bold.json": b'{"RepetitionTime": 2.0}',
        "derivatives/qc/report with spaces.html": b"<html>ok</html>",
        "derivatives/qc/empty.txt": b"",
    }
    for relpath, data in files.items():
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / ".hidden.txt").write_bytes(b"never sent")
    return files


def _download(client, uri: str) -> bytes:
    return client.request("GET", uri).content


@pytest.mark.e2e
def test_directory_round_trips_with_identical_paths_and_bytes(client, experiment_id, tmp_path):
    expected = _nested_tree(tmp_path / "bids")
    target = ResourceTarget(session=experiment_id)

    result = upload_resource(client, target, "BIDS", tmp_path / "bids")

    assert result.extracted and result.complete and sorted(result.files) == sorted(expected)
    assert [s.path for s in result.skipped] == [".hidden.txt"]
    stored = {f.path: f for f in list_resource_files(client, target, "BIDS")}
    assert sorted(stored) == sorted(expected)
    for relpath, data in expected.items():
        assert _download(client, stored[relpath].uri) == data, relpath


@pytest.mark.e2e
def test_scan_resource_by_project_and_label(client, experiment_id, tmp_path):
    scan_id = client.get_rows(f"/data/experiments/{experiment_id}/scans")[0]["ID"]
    snapshot = tmp_path / "snap.png"
    snapshot.write_bytes(b"\x89PNG" + os.urandom(1000))
    target = ResourceTarget(session="S1", project="TEST", scan=scan_id)

    result = upload_resource(client, target, "SNAPSHOTS", snapshot)

    assert result.resource_uri == f"/data/experiments/{experiment_id}/scans/{scan_id}/resources/SNAPSHOTS"
    assert result.resource_created and not result.extracted
    (stored,) = list_resource_files(client, ResourceTarget(session=experiment_id, scan=scan_id), "SNAPSHOTS")
    assert stored.path == "snap.png" and _download(client, stored.uri) == snapshot.read_bytes()


@pytest.mark.e2e
def test_duplicates_are_reported_and_overwrite_replaces(client, experiment_id, tmp_path):
    tree = tmp_path / "nifti"
    tree.mkdir()
    (tree / "a.nii").write_bytes(b"first")
    (tree / "b.nii").write_bytes(b"first")
    target = ResourceTarget(session="S1", project="TEST", subject="SUB1")
    upload_resource(client, target, "NIFTI", tree)
    (tree / "a.nii").write_bytes(b"second")

    kept = upload_resource(client, target, "NIFTI", tree)
    assert not kept.resource_created and sorted(kept.duplicates) == ["a.nii", "b.nii"] and not kept.complete
    stored = {f.path: f for f in list_resource_files(client, target, "NIFTI")}
    assert _download(client, stored["a.nii"].uri) == b"first"

    replaced = upload_resource(client, target, "NIFTI", tree / "a.nii", overwrite=True)
    assert replaced.complete
    assert _download(client, stored["a.nii"].uri) == b"second"


@pytest.mark.e2e
def test_unknown_session_is_not_found(client, tmp_path):
    note = tmp_path / "note.txt"
    note.write_text("x")
    with pytest.raises(NotFoundError):
        upload_resource(client, ResourceTarget(session="NOPE", project="TEST"), "MISC", note)


@pytest.mark.e2e
@pytest.mark.parametrize("as_directory", [False, True])
def test_a_file_name_that_is_not_utf8_is_refused_before_the_resource_is_made(
    client, experiment_id, tmp_path, as_directory: bool
):
    """A name from another locale crashed the upload after the resource was
    created (an empty resource left behind). It is refused first, naming the file."""
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "fine.txt").write_bytes(b"ok")
    odd = Path(os.fsdecode(bytes(folder) + b"/r\xe9sum\xe9.txt"))
    odd.write_bytes(b"latin-1 name")
    target = ResourceTarget(session=experiment_id)

    with pytest.raises(InputError) as info:
        upload_resource(client, target, "NOTES", folder if as_directory else odd)

    assert "not valid UTF-8" in str(info.value) and "r\\xe9sum\\xe9.txt" in str(info.value)
    assert "nothing was sent" in str(info.value) and "convmv" in str(info.value)
    assert not client.get_rows(f"/data/experiments/{experiment_id}/resources")  # no empty resource left
