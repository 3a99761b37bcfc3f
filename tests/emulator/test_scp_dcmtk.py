"""dcmtk's storescu/echoscu talking to the emulator's receiver: the SCP interoperates with a real SCU."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from xnat_flows.testing.scp import EmulatorDicomScp
from xnat_flows.testing.synth import write_studies

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.skipif(
        shutil.which("storescu") is None, reason="dcmtk's storescu is not installed (apt-get install dcmtk)"
    ),
]


def test_storescu_delivers_a_study_with_junk_and_echoscu_checks_the_ae_title(tmp_path: Path) -> None:
    manifest = write_studies(tmp_path / "study", series=2, instances=10, instance_kb=16, junk=True)
    received: dict[str, bytes] = {}
    lock = threading.Lock()

    def ingest(part10: bytes, calling_aet: str) -> str:
        import pydicom

        sop = pydicom.dcmread(pydicom.filebase.DicomBytesIO(part10), stop_before_pixels=True).SOPInstanceUID
        with lock:
            received[sop] = part10
        return calling_aet

    env = {**os.environ, "TCP_NODELAY": "1"}
    with EmulatorDicomScp(ingest, ae_title="XNAT") as scp:
        port = str(scp.port)
        ok = subprocess.run(["echoscu", "-aec", "XNAT", "127.0.0.1", port], env=env, capture_output=True, timeout=30)
        assert ok.returncode == 0, ok.stderr
        wrong = subprocess.run(
            ["echoscu", "-aec", "WRONG", "127.0.0.1", port], env=env, capture_output=True, timeout=30
        )
        assert wrong.returncode != 0
        assert b"Called AE Title Not Recognized" in wrong.stderr + wrong.stdout
        sent = subprocess.run(
            ["storescu", "+sd", "+r", "-nh", "-aec", "XNAT", "127.0.0.1", port, str(tmp_path / "study")],
            env=env,
            capture_output=True,
            timeout=120,
        )
    assert set(received) == {f.sop_instance_uid for f in manifest.files}, sent.stderr[-2000:]
    import pydicom

    # storescu may re-encode (e.g. to Implicit VR) when the SCP accepts that first: compare decoded datasets
    for item in manifest.files:
        assert pydicom.dcmread(pydicom.filebase.DicomBytesIO(received[item.sop_instance_uid])) == pydicom.dcmread(
            item.path
        )
