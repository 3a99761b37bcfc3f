"""Resource library: local collection rules and request shapes, against scripted XNAT answers."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import httpx
import pytest
from manage_helpers import experiment_document

from xnat_flows.client.errors import InputError
from xnat_flows.manage import resources
from xnat_flows.manage.resources import ResourceTarget


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
