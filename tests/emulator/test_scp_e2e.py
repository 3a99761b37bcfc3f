"""End to end: synthetic studies over C-STORE into the emulator's receiver, checked through its REST API."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import httpx
import pytest

from xnat_flows.testing import XnatEmulator
from xnat_flows.testing.pytest_plugin import wait_until
from xnat_flows.testing.synth import SynthRouting, write_studies
from xnat_flows.transfer.cstore.connect import echo
from xnat_flows.transfer.cstore.errors import CalledAETitleRejectedError
from xnat_flows.transfer.cstore.inputs import RoutingOverride
from xnat_flows.transfer.cstore.send import store_instances
from xnat_flows.transfer.scan import scan_directory

pytestmark = pytest.mark.e2e


def _results(http: httpx.Client, path: str) -> list[dict]:
    response = http.get(path, params={"format": "json"})
    return response.json()["ResultSet"]["Result"] if response.status_code == 200 else []


@pytest.fixture
def xnat(xnat_emulator_factory) -> XnatEmulator:
    return xnat_emulator_factory(
        scp_port=0,
        scp_aet="XNAT",
        rebuild_idle_seconds=0.3,
        projects=("TEST", "MANUAL"),
        prearchive_codes={"MANUAL": 0},
    )


def test_routed_study_is_archived_with_every_instance(xnat: XnatEmulator, tmp_path: Path) -> None:
    manifest = write_studies(
        tmp_path / "a", series=3, instances=12, instance_kb=8, junk=True, routing=SynthRouting("TEST", "SUBJ1", "SESS1")
    )
    assert echo("127.0.0.1", xnat.scp_port, "XNAT").port == xnat.scp_port
    scan = scan_directory(tmp_path / "a", headers="file-meta", skip_truncated=True)  # the junk holds cut files
    result = store_instances(scan, host="127.0.0.1", port=xnat.scp_port, workers=2, calling_aet="SCANNER")
    assert len(result.sent) == 12 and result.ok
    with httpx.Client(base_url=xnat.url, auth=(xnat.user, xnat.password)) as http:
        [experiment] = wait_until(lambda: _results(http, "/data/projects/TEST/experiments"))
        assert (experiment["label"], experiment["subject_label"]) == ("SESS1", "SUBJ1")
        assert experiment["UID"] == manifest.study_uids[0]
        expected = Counter(f.series_number for f in manifest.files)
        for scan in _results(http, f"/data/experiments/{experiment['ID']}/scans"):
            files = _results(http, f"/data/experiments/{experiment['ID']}/scans/{scan['ID']}/resources/DICOM/files")
            assert len(files) == expected[int(scan["ID"])]
        assert sorted(int(s["ID"]) for s in _results(http, f"/data/experiments/{experiment['ID']}/scans")) == [1, 2, 3]


def test_routing_override_sends_an_unrouted_study_to_the_chosen_project(xnat: XnatEmulator, tmp_path: Path) -> None:
    write_studies(tmp_path / "b", series=2, instances=4, instance_kb=8, seed=5)
    result = store_instances(
        tmp_path / "b",
        host="127.0.0.1",
        port=xnat.scp_port,
        workers=1,
        routing=RoutingOverride("MANUAL", "S2", "SESS2"),
    )
    assert len(result.sent) == 4
    with httpx.Client(base_url=xnat.url, auth=(xnat.user, xnat.password)) as http:
        [row] = wait_until(
            lambda: [r for r in _results(http, "/data/prearchive/projects/MANUAL") if r["status"] == "READY"]
        )
        assert (row["subject"], row["name"]) == ("S2", "SESS2")
        assert _results(http, "/data/projects/MANUAL/experiments") == []


def test_the_emulator_receiver_rejects_a_wrong_ae_title(xnat: XnatEmulator) -> None:
    with pytest.raises(CalledAETitleRejectedError):
        echo("127.0.0.1", xnat.scp_port, called_aet="OTHER", timeout=5)
