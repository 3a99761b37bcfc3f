"""An answer dripped a few bytes a second is bounded as a whole, not per read.

httpx's read timeout bounds each read, so a server (or proxy) sending its answer at 2 bytes/s held
``prearchive list`` for 129 s and an import for as long as the drip lasted. Against the emulator
over real sockets, both send paths (httpx for queries and DICOM-zip, ``lean`` for gradual-DICOM)
end such a request after its allowance, with one attempt (a retry would drip as long).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from transfer_helpers import connect

from xnat_flows.client.errors import NoAnswerError
from xnat_flows.client.prearchive import list_sessions
from xnat_flows.testing import XnatEmulator
from xnat_flows.testing.synth import write_studies
from xnat_flows.transfer import UploadTarget, scan_directory
from xnat_flows.transfer.upload import upload_gradual

pytestmark = pytest.mark.e2e


@pytest.fixture
def xnat(xnat_emulator_factory) -> XnatEmulator:
    return xnat_emulator_factory(projects=("DRIP",))


def test_a_dripped_listing_ends_on_the_answer_allowance(xnat: XnatEmulator, tmp_path: Path) -> None:
    client = connect(xnat, tmp_path, answer=3.0)  # each byte comes within it: only the deadline can end this
    client.whoami()  # logged in before the drip starts
    rule = xnat.faults.add(method="GET", path=r"/data/prearchive", bytes_per_second=1, times=None)

    started = time.monotonic()
    with pytest.raises(NoAnswerError) as info:
        list_sessions(client, "DRIP")
    took = time.monotonic() - started

    assert took < 15.0, took  # the answer alone takes over a minute at 1 B/s (a loose bound: shared CI cores)
    assert "still arriving 3 s after the request" in str(info.value)
    assert rule.fired == 1  # not retried: a second attempt drips as long


def test_a_dripped_gradual_import_answer_is_bounded_and_counted_in_doubt(xnat: XnatEmulator, tmp_path: Path) -> None:
    write_studies(tmp_path / "export", series=1, instances=2, instance_kb=4, seed=48)
    files = scan_directory(tmp_path / "export").files
    client = connect(xnat, tmp_path, stall=3.0)  # each byte comes within it: only the deadline can end this
    client.whoami()
    xnat.faults.add(method="POST", path=r"/data/services/import", bytes_per_second=1, times=None)

    started = time.monotonic()
    with pytest.raises(NoAnswerError) as info:  # the first instance's answer: the rest would drip alike
        upload_gradual(client, files, UploadTarget("DRIP", "S", "E"), workers=2)
    took = time.monotonic() - started

    assert took < 20.0, took  # the answer alone takes over a minute at 1 B/s
    assert "still arriving" in str(info.value)
    assert client.requests_in_doubt >= 1  # XNAT acted on it: counted, so the session is left to XNAT's timer
