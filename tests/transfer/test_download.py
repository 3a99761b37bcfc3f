"""Downloading sessions (``transfer.download``) from the emulator over real sockets: layout, choice
of scans and resources, verification against XNAT's catalog, resume, a full disk, a bad file."""

from __future__ import annotations

import errno
import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest
from transfer_helpers import connect

from xnat_flows.client.errors import InputError
from xnat_flows.manage.resources import ResourceTarget, upload_resource
from xnat_flows.testing import XnatEmulator
from xnat_flows.testing.synth import write_studies
from xnat_flows.transfer import download as dl
from xnat_flows.transfer.download import LocalDiskFullError, download_session
from xnat_flows.transfer.scan import scan_directory
from xnat_flows.transfer.session import upload_session
from xnat_flows.transfer.target import UploadTarget


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): _md5(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def archived(xnat_emulator: XnatEmulator, tmp_path: Path) -> dict[str, Any]:
    """One archived session: 3 series, 12 instances; the md5 of every file sent."""
    manifest = write_studies(tmp_path / "src", studies=1, series=3, instances=12, instance_kb=16, seed=3)
    client = connect(xnat_emulator, tmp_path)
    result = upload_session(client, scan_directory(tmp_path / "src"), UploadTarget("TEST", "SUBJ", "SESS1"))
    assert result.ok
    experiment = result.sessions[0].verify.experiment_id  # type: ignore[union-attr]
    sent = sorted(_md5(f.path) for f in manifest.files)
    yield {"client": client, "experiment": experiment, "sent": sent, "manifest": manifest}
    client.close()


@pytest.mark.parametrize("read_whole_up_to", [dl._WHOLE_BODY_MAX, 0], ids=["small-files-whole", "streamed"])
def test_whole_session_in_xnat_layout_verified_by_md5(
    archived: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_whole_up_to: int
) -> None:
    monkeypatch.setattr(dl, "_WHOLE_BODY_MAX", read_whole_up_to)
    result = download_session(archived["client"], archived["experiment"], tmp_path / "dl")
    assert result.ok and result.files == 12 and result.downloaded == 12 and result.already_present == 0
    assert result.digests_checked == 12  # the emulator lists an MD5 for every file, as XNAT does
    tree = _tree(tmp_path / "dl" / "SESS1")
    assert sorted(tree.values()) == archived["sent"]
    assert all(path.startswith("scans/") and "/resources/DICOM/files/" in path for path in tree)
    assert {s.id for s in result.scans} == {"1", "2", "3"}
    assert all(s.type and s.series_description for s in result.scans)


def test_rerun_fetches_only_missing_or_wrong_files(archived: dict[str, Any], tmp_path: Path) -> None:
    client = archived["client"]
    first = download_session(client, "TEST/SUBJ/SESS1", tmp_path / "dl")
    files = sorted((tmp_path / "dl" / "SESS1").rglob("*.dcm")) or sorted(
        p for p in (tmp_path / "dl" / "SESS1").rglob("*") if p.is_file()
    )
    files[0].unlink()  # missing
    damaged = bytearray(files[1].read_bytes())
    damaged[-1] ^= 0xFF  # same size, other content: only the digest tells
    files[1].write_bytes(bytes(damaged))
    again = download_session(client, "TEST/SESS1", tmp_path / "dl")
    assert first.downloaded == 12
    assert again.ok and again.downloaded == 2 and again.already_present == 10
    assert sorted(_tree(tmp_path / "dl" / "SESS1").values()) == archived["sent"]
    third = download_session(client, archived["experiment"], tmp_path / "dl")
    assert third.downloaded == 0 and third.already_present == 12


def test_flat_layout_scan_choice_by_id_and_type_and_resources(
    archived: dict[str, Any], xnat_emulator: XnatEmulator, tmp_path: Path
) -> None:
    client = archived["client"]
    nifti = tmp_path / "t1.nii.gz"
    nifti.write_bytes(b"not really a volume" * 100)
    upload_resource(client, ResourceTarget(session=archived["experiment"], scan="2"), "NIFTI", nifti)
    session = download_session(client, archived["experiment"], tmp_path / "x", scans="1")
    assert [s.id for s in session.scans] == ["1"]
    scan_type = next(
        s.type for s in download_session(client, archived["experiment"], tmp_path / "y").scans if s.id == "2"
    )
    flat = download_session(
        client, archived["experiment"], tmp_path / "flat", scans=scan_type, resources=["NIFTI"], layout="flat"
    )
    assert flat.ok and flat.files == 1 and [s.id for s in flat.scans] == ["2"]
    assert (tmp_path / "flat" / "SESS1" / "2" / "t1.nii.gz").read_bytes() == nifti.read_bytes()
    both = download_session(client, archived["experiment"], tmp_path / "both", scans="1,2", resources=["NIFTI"])
    assert both.without_files == ["1"]  # scan 1 has no NIFTI: said, not an error
    with pytest.raises(InputError, match="No scan with ID or type '99'.*its scans: 1 "):
        download_session(client, archived["experiment"], tmp_path / "none", scans="1,99")


def test_zip_per_resource_gives_the_same_files(archived: dict[str, Any], tmp_path: Path) -> None:
    by_zip = download_session(archived["client"], archived["experiment"], tmp_path / "z", via="zip", workers=2)
    assert by_zip.ok and by_zip.downloaded == 12 and by_zip.digests_checked == 12
    assert sorted(_tree(tmp_path / "z" / "SESS1").values()) == archived["sent"]
    assert not [p for p in (tmp_path / "z").rglob("*") if p.name.endswith(".part")]
    again = download_session(archived["client"], archived["experiment"], tmp_path / "z", via="zip")
    assert again.downloaded == 0 and again.already_present == 12


class _FillingDisk:
    """``open`` for the download module whose files raise ENOSPC once ``budget`` bytes were written."""

    def __init__(self, budget: int) -> None:
        self.budget = budget

    def __call__(self, path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = open(path, mode, *args, **kwargs)  # noqa: SIM115 - wrapped and closed by the caller
        if "w" not in mode:
            return handle
        outer = self

        class Limited:
            def __enter__(self) -> Limited:
                return self

            def __exit__(self, *exc: object) -> None:
                handle.close()

            def write(self, data: bytes) -> int:
                if outer.budget < len(data):
                    raise OSError(errno.ENOSPC, "No space left on device")
                outer.budget -= len(data)
                return handle.write(data)

        return Limited()


@pytest.mark.parametrize("read_whole_up_to", [dl._WHOLE_BODY_MAX, 0], ids=["small-files-whole", "streamed"])
def test_disk_full_stops_with_a_clear_error_and_leaves_only_complete_files(
    archived: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read_whole_up_to: int
) -> None:
    monkeypatch.setattr(dl, "_WHOLE_BODY_MAX", read_whole_up_to)
    client = archived["client"]
    dest = tmp_path / "dl"
    monkeypatch.setattr(dl, "open", _FillingDisk(5 * 16 * 1024), raising=False)
    with pytest.raises(LocalDiskFullError, match="No space left on the device of .*dl/SESS1") as caught:
        download_session(client, archived["experiment"], dest, workers=3)
    assert "run the same download again" in caught.value.hint
    assert not [p for p in dest.rglob("*") if p.name.endswith(".part")]  # no half file anywhere
    plan = dl.plan_download(client, dl.resolve_session(client, archived["experiment"]), dest)
    present = [f for f in plan.files if (dest / "SESS1" / f.local).exists()]
    assert 0 < len(present) < 12
    assert all(dl.file_matches(dest / "SESS1" / f.local, f) for f in present)  # what is there is complete
    monkeypatch.undo()
    rerun = download_session(client, archived["experiment"], dest)
    assert rerun.ok and rerun.already_present == len(present) and rerun.downloaded == 12 - len(present)


def test_not_enough_free_space_is_said_before_anything_is_fetched(
    archived: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 1000))  # type: ignore[attr-defined]
    with pytest.raises(LocalDiskFullError, match=r"needs 0\.\d MB .* has 0\.0 MB free"):
        download_session(archived["client"], archived["experiment"], tmp_path / "dl")
    assert not [p for p in (tmp_path / "dl").rglob("*") if p.is_file()]


def test_a_file_that_differs_from_the_catalog_is_listed_and_not_kept(
    archived: dict[str, Any], xnat_emulator: XnatEmulator, tmp_path: Path
) -> None:
    # The emulator records a file's MD5 the first time a listing asks for it (its catalog build):
    # list once, so the catalog holds the digest of what was archived before the file is damaged.
    assert download_session(archived["client"], archived["experiment"], tmp_path / "first").ok
    stored = sorted(p for p in xnat_emulator.store.archive_dir.rglob("*") if p.is_file() and p.suffix == ".dcm")
    victim = stored[0]
    data = bytearray(victim.read_bytes())
    data[200] ^= 0xFF  # XNAT's catalog keeps the MD5 of what was archived
    victim.write_bytes(bytes(data))
    result = download_session(archived["client"], archived["experiment"], tmp_path / "dl")
    assert not result.ok and result.downloaded == 11
    assert len(result.failed) == 1 and "differs from XNAT's catalog" in result.failed[0].error
    assert not (tmp_path / "dl" / "SESS1" / result.failed[0].local).exists()
    assert not [p for p in (tmp_path / "dl").rglob("*") if p.name.endswith(".part")]


def test_a_local_path_that_cannot_be_written_fails_those_files_only(archived: dict[str, Any], tmp_path: Path) -> None:
    blocker = tmp_path / "dl" / "SESS1" / "scans" / "1"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where scan 1's folder would go")
    result = download_session(archived["client"], archived["experiment"], tmp_path / "dl")
    assert not result.ok and result.downloaded == 8  # scans 2 and 3
    assert len(result.failed) == 4 and all(f.local.startswith("scans/1/") for f in result.failed)
    assert all("Error" in f.error for f in result.failed)
