"""xnatpy (xnat 0.8.1) against the emulator: where xnatpy and the emulator disagree, the emulator is wrong."""

from __future__ import annotations

import pytest
from emulator_helpers import make_study, members, zip_bytes

from xnat_flows.testing.pytest_plugin import wait_until

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
    listed = wait_until(lambda: [s for s in session.prearchive.sessions() if s.status == "READY"])
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
    experiment = session.services.import_(
        archive_path, project="TEST", subject="S2", experiment="DIRECT", destination="/archive"
    )
    assert experiment.label == "DIRECT"
    assert list(experiment.scans.keys()) == ["1"]


def test_resource_upload_and_download(session, emulator, tmp_path):
    archive_path = tmp_path / "study.zip"
    archive_path.write_bytes(zip_bytes(members(make_study(1, 1))))
    experiment = session.services.import_(
        archive_path, project="TEST", subject="S3", experiment="RES", destination="/archive"
    )
    resource = experiment.create_resource("NOTES")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello from xnatpy\n")
    resource.upload(notes, "notes.txt")
    assert list(resource.files.keys()) == ["notes.txt"]
    downloaded = tmp_path / "back.txt"
    resource.files["notes.txt"].download(downloaded, verbose=False)
    assert downloaded.read_text() == "hello from xnatpy\n"


# -- the object API round trip (issue: clients read and write through the emulator unchanged) ----------


@pytest.fixture
def archived(session, tmp_path):
    """A two-scan session in the archive, read through xnatpy."""
    archive_path = tmp_path / "study.zip"
    archive_path.write_bytes(zip_bytes(members(make_study(series=2, instances=2))))
    return session.services.import_(
        archive_path, project="TEST", subject="RT", experiment="RTSESS", destination="/archive"
    )


def test_list_files_of_every_scan(archived):
    counts = {scan.id: len(scan.files) for scan in archived.scans.values()}
    assert counts == {"1": 2, "2": 2}
    names = [f.name for scan in archived.scans.values() for f in scan.files.values()]
    assert all(name.endswith(".dcm") for name in names)


def test_scan_download_dir(archived, tmp_path):
    scan = archived.scans["1"]
    scan.download_dir(tmp_path / "scan", verbose=False)
    files = sorted(p for p in (tmp_path / "scan").rglob("*.dcm"))
    assert len(files) == 2
    assert files[0].relative_to(tmp_path / "scan").parts[:5] == ("RTSESS", "scans", "1", "resources", "DICOM")


def test_experiment_download_dir_and_download_zip(archived, tmp_path):
    import zipfile

    archived.download_dir(tmp_path / "all", verbose=False)
    extracted = sorted(p.relative_to(tmp_path / "all").as_posix() for p in (tmp_path / "all").rglob("*.dcm"))
    assert len(extracted) == 4
    assert all(p.startswith("RTSESS/scans/") and "/resources/DICOM/files/" in p for p in extracted)

    archived.download(tmp_path / "all.zip", verbose=False)
    with zipfile.ZipFile(tmp_path / "all.zip") as zipped:
        assert sorted(zipped.namelist()) == extracted

    archived.scans["2"].resources["DICOM"].download(tmp_path / "res.zip", verbose=False)
    with zipfile.ZipFile(tmp_path / "res.zip") as zipped:
        assert all(n.startswith("RTSESS/scans/2/resources/DICOM/files/") for n in zipped.namelist())
        assert len(zipped.namelist()) == 2


def test_resource_catalog_upload_and_upload_dir_on_experiment_and_scan(session, archived, tmp_path):
    source = tmp_path / "derived"
    (source / "sub").mkdir(parents=True)
    (source / "a.txt").write_text("A")
    (source / "sub" / "b.txt").write_text("B")
    single = tmp_path / "single.json"
    single.write_text('{"ok": true}')

    for parent in (archived, archived.scans["1"]):
        resource = session.classes.ResourceCatalog(parent=parent, label="DERIVED", format="TXT")
        resource.upload(single, "single.json")
        resource.upload_dir(source)  # tgz_file: one upload, extracted on the server
        parent.clearcache()
        again = parent.resources["DERIVED"]
        assert sorted(again.files.keys()) == ["a.txt", "single.json", "sub/b.txt"]
        target = tmp_path / f"back-{parent.id}.txt"
        again.files["sub/b.txt"].download(target, verbose=False)
        assert target.read_text() == "B"
        assert again.file_count == 3


def test_create_subject_and_session_set_fields_add_scan_and_delete(session, emulator):
    project = session.projects["TEST"]
    subject = session.classes.SubjectData(parent=project, label="NEWSUBJ")
    assert subject.id.startswith("XNAT_S")
    experiment = session.classes.MrSessionData(parent=subject, label="NEWSESS")
    assert experiment.id.startswith("XNAT_E")

    import datetime

    experiment.date = datetime.date(2024, 5, 6)
    experiment.fields["visit"] = "baseline"
    experiment.clearcache()
    fresh = session.experiments[experiment.id]
    assert fresh.date == datetime.date(2024, 5, 6)
    assert fresh.fields["visit"] == "baseline"
    assert fresh.label == "NEWSESS" and fresh.project == "TEST"

    scan = session.classes.MrScanData(parent=fresh, id="7", type="T1w", series_description="MPRAGE")
    fresh.clearcache()
    assert list(fresh.scans.keys()) == ["7"]
    assert fresh.scans["7"].type == "T1w"
    assert scan.id == "7"

    fresh.delete()
    assert [e["ID"] for e in emulator.archived_experiments()] == []
    project.clearcache()
    project.subjects["NEWSUBJ"].delete()
    project.clearcache()
    assert "NEWSUBJ" not in project.subjects


def test_assessor_demographics_sharing_and_project_resources(session, emulator, tmp_path):
    emulator.store.ensure_project("OTHER")
    project = session.projects["TEST"]
    subject = session.classes.SubjectData(parent=project, label="DEMO")
    subject.demographics.gender = "female"
    subject.clearcache()
    assert subject.demographics.gender == "female"

    experiment = session.classes.MrSessionData(parent=subject, label="DEMOSESS")
    assessor = session.classes.QcAssessmentData(parent=experiment, label="QC1")
    experiment.clearcache()
    assert [a.label for a in experiment.assessors.values()] == ["QC1"]
    assessor.create_resource("OUT")
    assert [r.label for r in assessor.resources.values()] == ["OUT"]

    subject.share("OTHER", label="DEMO_IN_OTHER")
    experiment.share("OTHER")
    other = session.projects["OTHER"]
    assert [s.label for s in other.subjects.values()] == ["DEMO_IN_OTHER"]
    assert [e.id for e in other.experiments.values()] == [experiment.id]

    notes = tmp_path / "protocol.txt"
    notes.write_text("protocol v1")
    resource = project.create_resource("PROTOCOL")
    resource.upload(notes, "protocol.txt")
    project.clearcache()
    assert [r.label for r in project.resources.values()] == ["PROTOCOL"]
    assert int(list(project.resources.values())[0].files["protocol.txt"].size) == len("protocol v1")
