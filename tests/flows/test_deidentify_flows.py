"""De-identification in the flows: the upload-dicom-session and send-dicom flows take a
``deidentify`` request field (a dicomedit-script Block or script text), run on Prefect's harness
against the emulator; the archive is read back."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from xnat_flows.anon.functions import hash_uid
from xnat_flows.blocks import DicomEditScript
from xnat_flows.client.errors import InputError
from xnat_flows.flows.cstore import send_dicom
from xnat_flows.flows.upload import NotDeidentifiedError, upload_dicom_session
from xnat_flows.models import (
    Deidentification,
    DicomReceiverTarget,
    SendDicomRequest,
    UploadRequest,
    XnatConnection,
)
from xnat_flows.testing.synth import write_studies

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness")]
PASSWORD = "deid-flow-password-5e2b"
SCRIPT = """version "6.1"
(0010,0010) := subject
(0010,0020) := session
(0008,0018) := hashUID[(0008,0018)]
(0020,000D) := hashUID[(0020,000D)]
"""


@pytest.fixture
def xnat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, xnat_emulator_factory):
    monkeypatch.setenv("XNAT_PASS", PASSWORD)
    return xnat_emulator_factory(
        tmp_path / "xnat", projects=("FLOWS",), password=PASSWORD, rebuild_idle_seconds=0.3, scp_port=0
    )


def _archived(xnat, label: str) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in xnat.archived_files(label).values()]


def test_upload_flow_applies_a_saved_dicomedit_script_block(xnat, tmp_path: Path, mocker) -> None:
    """The script keeps one study per study: its upload-batch tasks rewrite the session batch by batch."""
    from xnat_flows.transfer.deidentify import StreamedDeidentification

    batch_rewrites = mocker.spy(StreamedDeidentification, "rewrite")
    manifest = write_studies(tmp_path / "export", series=2, instances=6, instance_kb=4, seed=21)
    DicomEditScript(script=SCRIPT).save("site-deid", overwrite=True)
    request = UploadRequest(
        source_dir=str(tmp_path / "export"),
        project="FLOWS",
        subject="FSUBJ",
        session="FSESS",
        verify_timeout_seconds=30,
        deidentify=Deidentification(script_block=DicomEditScript.load("site-deid")),
    )
    result = upload_dicom_session(request, XnatConnection(url=xnat.url, username="admin"))
    (session,) = result.sessions
    assert session.verified is True and session.files_sent == len(manifest.files)
    stored = _archived(xnat, "FSESS")
    assert {str(ds.PatientName) for ds in stored} == {"FSUBJ"} and {ds.PatientID for ds in stored} == {"FSESS"}
    assert {str(ds.SOPInstanceUID) for ds in stored} == {hash_uid(f.sop_instance_uid) for f in manifest.files}
    # each upload-batch task rewrote its own batch (the other calls ask for the whole session as sent)
    asked = [call.args[1] for call in batch_rewrites.call_args_list if len(call.args[1]) < len(manifest.files)]
    assert len(asked) == len(session.batches) > 1
    assert sorted(f.relpath for batch in asked for f in batch) == sorted(
        relpath for b in session.batches for relpath in b.files
    )


def test_upload_flow_stops_on_a_script_error_and_fails_on_a_file_it_cannot_take(xnat, tmp_path: Path) -> None:
    manifest = write_studies(tmp_path / "export", series=1, instances=3, instance_kb=4, seed=22)
    fields = dict(source_dir=str(tmp_path / "export"), project="FLOWS", subject="S", session="E")
    connection = XnatConnection(url=xnat.url, username="admin")
    broken = UploadRequest(**fields, deidentify=Deidentification(script='version "6.1"\n(0010,0010) := nope[]\n'))
    with pytest.raises(InputError, match=r"script:2:16"):
        upload_dicom_session(broken, connection)
    assert xnat.stats()["imports"] == 0

    ds = pydicom.dcmread(manifest.files[0].path)
    del ds.PixelData
    ds.save_as(manifest.files[0].path, enforce_file_format=True)
    blanking = SCRIPT + 'alterPixels["rectangle", "l=0, t=0, r=2, b=2", "solid", "v=0"]\n'
    with pytest.raises(NotDeidentifiedError, match="could not be de-identified"):
        upload_dicom_session(UploadRequest(**fields, deidentify=Deidentification(script=blanking)), connection)
    assert len(_archived(xnat, "E")) == 2


def test_send_dicom_flow_deidentifies_and_verifies_the_rewritten_study(xnat, tmp_path: Path) -> None:
    manifest = write_studies(tmp_path / "export", series=1, instances=4, instance_kb=4, seed=23)
    result = send_dicom(
        SendDicomRequest(
            source_dir=str(tmp_path / "export"),
            routing_project="FLOWS",
            routing_subject="CSUBJ",
            routing_session="CSESS",
            verify=True,
            verify_timeout_seconds=30,
            deidentify=Deidentification(script=SCRIPT),
        ),
        DicomReceiverTarget(host="127.0.0.1", port=xnat.scp_port, called_aet="XNAT"),
        XnatConnection(url=xnat.url, username="admin"),
    )
    assert len(result.sent) == 4 and result.failed == []
    (study,) = result.archived
    assert study.study_uid == hash_uid(manifest.files[0].study_uid) and study.files_found == 4
    assert {str(ds.PatientName) for ds in _archived(xnat, "CSESS")} == {"CSUBJ"}


def test_the_gate_stops_an_upload_whose_rules_leave_identifiers_and_lets_a_clean_one_through(
    xnat, tmp_path: Path
) -> None:
    """``deidentify.require_clean``: every planned file is tried first; a survivor means nothing is
    sent (upload-dicom-session and send-dicom alike), and what the site keeps on purpose is allowed."""
    from xnat_flows.tasks.anon import IdentifiersSurvive

    write_studies(tmp_path / "export", series=1, instances=3, instance_kb=4, seed=24)
    fields = dict(source_dir=str(tmp_path / "export"), project="FLOWS", subject="GSUBJ")
    connection = XnatConnection(url=xnat.url, username="admin")
    leaky = Deidentification(script=SCRIPT, require_clean=True)  # keeps birth date, dates, accession number...
    with pytest.raises(IdentifiersSurvive, match="PatientBirthDate") as stopped:
        upload_dicom_session(UploadRequest(**fields, session="GATED", deidentify=leaky), connection)
    assert "nothing was sent" in str(stopped.value) and "deidentify.allow" in str(stopped.value)
    receiver = DicomReceiverTarget(host="127.0.0.1", port=xnat.scp_port, called_aet="XNAT")
    cstore = dict(source_dir=str(tmp_path / "export"), routing_project="FLOWS", routing_subject="GSUBJ")
    with pytest.raises(IdentifiersSurvive, match="PatientBirthDate"):
        send_dicom(SendDicomRequest(**cstore, routing_session="GATED_C", deidentify=leaky), receiver, connection)
    xnat.rebuild_now()  # a C-STORE delivery would now be in the archive or the prearchive
    stats = xnat.stats()
    assert stats["imports"] == 0 and stats["experiments"] == 0 and stats["prearchive"] == 0

    clean = Deidentification(script=SCRIPT, profile="basic,retain-uids", require_clean=True, allow=["retain-uids"])
    result = upload_dicom_session(UploadRequest(**fields, session="CLEAN", deidentify=clean), connection)
    assert result.ok and result.sessions[0].verified is True
    stored = _archived(xnat, "CLEAN")
    assert len(stored) == 3 and {ds.get("PatientBirthDate", "") for ds in stored} == {""}  # the profile ran too
    with pytest.raises(ValueError, match="require_clean checks de-identification rules"):
        Deidentification(require_clean=True)  # a gate with nothing to check is refused in the run's form
