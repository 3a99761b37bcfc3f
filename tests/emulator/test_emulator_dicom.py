"""The emulator with its DICOM receiver: C-STORE lands in the same importer as HTTP (xnat-web `GradualDicomImporter.java`)."""

from __future__ import annotations

import httpx
import pytest
from emulator_helpers import make_study

from xnat_flows.testing.pytest_plugin import wait_until

pynetdicom = pytest.importorskip("pynetdicom")


def test_c_store_routes_by_headers_into_prearchive(tmp_path, xnat_emulator_factory):
    import io

    import pydicom
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    study = make_study(1, 3, patient_comments="Project:TEST Subject:SCPSUBJ Session:SCPSESS")
    xnat = xnat_emulator_factory(tmp_path, scp_port=0, rebuild_idle_seconds=0.3, prearchive_codes={"TEST": 0})
    assert isinstance(xnat.scp_port, int) and xnat.dicom_receiver is not None
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(CTImageStorage, pydicom.uid.ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", xnat.scp_port, ae_title="XNAT")
    assert assoc.is_established
    try:
        for instance in study:
            status = assoc.send_c_store(pydicom.dcmread(io.BytesIO(instance.data)))
            assert status.Status == 0x0000
    finally:
        assoc.release()
    rows = wait_until(lambda: [r for r in xnat.prearchive_sessions() if r["status"] == "READY"])
    assert rows[0]["name"] == "SCPSESS" and rows[0]["subject"] == "SCPSUBJ" and rows[0]["file_count"] == 3
    receivers = httpx.get(f"{xnat.url}/xapi/dicomscp", auth=("admin", "admin")).json()
    assert receivers[0]["port"] == xnat.scp_port and receivers[0]["aeTitle"] == "XNAT"
