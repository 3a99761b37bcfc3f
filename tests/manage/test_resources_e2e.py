"""Resource uploads end to end against the XNAT emulator: round trip, scans, duplicates, targets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from manage_helpers import archive_directly

from xnat_flows.client.errors import InputError, NotFoundError
from xnat_flows.manage.resources import ResourceTarget, list_resource_files, upload_resource

pytestmark = pytest.mark.e2e


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


def test_unknown_session_is_not_found(client, tmp_path):
    note = tmp_path / "note.txt"
    note.write_text("x")
    with pytest.raises(NotFoundError):
        upload_resource(client, ResourceTarget(session="NOPE", project="TEST"), "MISC", note)


@pytest.mark.parametrize("as_directory", [False, True])
def test_a_file_name_that_is_not_utf8_is_refused_before_the_resource_is_made(
    client, experiment_id, tmp_path, as_directory: bool
):
    """Issue 20 item 7: a name from another locale crashed the upload after the resource was
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
