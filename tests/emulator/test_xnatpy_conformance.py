"""xnatpy (xnat 0.8.1) against the emulator: where xnatpy and the emulator disagree, the emulator is wrong."""

from __future__ import annotations

import pytest

from emulator_helpers import make_study, members, wait_for, zip_bytes

xnat = pytest.importorskip("xnat")


@pytest.fixture
def session(emulator):
    emulator.set_prearchive_code("TEST", 0)
    with xnat.connect(emulator.url, user="admin", password="admin", loglevel="ERROR") as connection:
        yield connection


def test_login_lists_projects_and_version(session):
    assert list(session.projects.keys()) == ["TEST"]
    assert session.xnat_version == "1.9.2.1"


def test_bad_password_fails_to_connect(emulator):
    with pytest.raises(xnat.exceptions.XNATLoginFailedError):
        xnat.connect(emulator.url, user="admin", password="wrong", loglevel="CRITICAL")


def test_import_archive_and_read_back(session, tmp_path):
    study = make_study(series=2, instances=3)
    archive_path = tmp_path / "study.zip"
    archive_path.write_bytes(zip_bytes(members(study)))

    prearchive_session = session.services.import_(archive_path, project="TEST", subject="SUBJ", experiment="EXP")
    assert prearchive_session.project == "TEST"
    listed = wait_for(lambda: [s for s in session.prearchive.sessions() if s.status == "READY"])
    assert [s.label for s in listed] == ["EXP"]
    assert sorted(scan.id for scan in listed[0].scans) == ["1", "2"]

    experiment = listed[0].archive()
    assert experiment.label == "EXP" and experiment.project == "TEST"
    assert sorted(experiment.scans.keys()) == ["1", "2"]
    scan = experiment.scans["1"]
    assert list(scan.resources.keys()) == ["DICOM"] or [r.label for r in scan.resources.values()] == ["DICOM"]
    files = list(scan.files.values())
    assert len(files) == 3
    target = tmp_path / "one.dcm"
    files[0].download(target, verbose=False)
    assert target.read_bytes()[128:132] == b"DICM"

    assert experiment.subject.label == "SUBJ"
    project = session.projects["TEST"]
    assert [s.label for s in project.subjects.values()] == ["SUBJ"]
    assert [e.label for e in project.experiments.values()] == ["EXP"]
    assert [e.label for e in project.subjects["SUBJ"].experiments.values()] == ["EXP"]
    assert [e.label for e in session.experiments.values()] == ["EXP"]


def test_import_straight_to_archive(session, tmp_path):
    archive_path = tmp_path / "study.zip"
    archive_path.write_bytes(zip_bytes(members(make_study(1, 2))))
    experiment = session.services.import_(archive_path, project="TEST", subject="S2", experiment="DIRECT",
                                          destination="/archive")
    assert experiment.label == "DIRECT"
    assert list(experiment.scans.keys()) == ["1"]


def test_resource_upload_and_download(session, emulator, tmp_path):
    archive_path = tmp_path / "study.zip"
    archive_path.write_bytes(zip_bytes(members(make_study(1, 1))))
    experiment = session.services.import_(archive_path, project="TEST", subject="S3", experiment="RES",
                                          destination="/archive")
    resource = experiment.create_resource("NOTES")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello from xnatpy\n")
    resource.upload(notes, "notes.txt")
    assert list(resource.files.keys()) == ["notes.txt"]
    downloaded = tmp_path / "back.txt"
    resource.files["notes.txt"].download(downloaded, verbose=False)
    assert downloaded.read_text() == "hello from xnatpy\n"
