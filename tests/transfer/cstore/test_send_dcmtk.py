"""C-STORE sender against dcmtk's storescp, an independent receiver.

storescp writes its own file meta header, so received files are compared with the sent ones by
SOP Instance UID and a hash of the pixel data. storescp cannot bind to 127.0.0.1
only; on loopback in a test that is acceptable.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.errors import InvalidDicomError

from xnat_flows.testing.pytest_plugin import wait_until
from xnat_flows.testing.synth import write_studies
from xnat_flows.transfer.cstore.connect import echo
from xnat_flows.transfer.cstore.errors import PeerUnreachableError
from xnat_flows.transfer.cstore.send import store_instances
from xnat_flows.transfer.scan import scan_directory

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.skipif(
        shutil.which("storescp") is None, reason="dcmtk's storescp is not installed (apt-get install dcmtk)"
    ),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StoreScp:
    def __init__(self, out_dir: Path, port: int, aet: str) -> None:
        self.out_dir, self.port, self.aet = out_dir, port, aet
        env = {**os.environ, "TCP_NODELAY": "1"}  # dcmtk reads it from the environment; without it ~40 ms/object
        self.process = subprocess.Popen(  # own session: kill() can take the forked children down too
            ["storescp", "--fork", "-od", str(out_dir), "+xa", "-pm", "-aet", aet, "-pdu", "131072", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("storescp did not start listening")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill_all(self) -> None:
        """SIGKILL storescp and its per-association children, as a crash would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def received(self) -> dict[str, str]:
        """SOP Instance UID -> sha256 of the pixel data, for every file storescp wrote."""
        found = {}
        for path in self.out_dir.iterdir():
            try:
                ds = pydicom.dcmread(path)
                complete_pixels = len(ds.PixelData) == ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8
            except (InvalidDicomError, EOFError, OSError, AttributeError, KeyError, ValueError):
                continue  # a file storescp was still writing when it was killed did not arrive
            if (
                complete_pixels or ds.file_meta.TransferSyntaxUID.is_compressed
            ):  # a file cut short by a crash did not arrive
                found[ds.SOPInstanceUID] = hashlib.sha256(ds.PixelData).hexdigest()
        return found


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreScp]:
    out = tmp_path / "received"
    out.mkdir()
    server = StoreScp(out, _free_port(), "XNAT")
    yield server
    server.stop()


def _sent(paths: list[Path]) -> dict[str, str]:
    sent = {}
    for path in paths:
        ds = pydicom.dcmread(path)
        sent[ds.SOPInstanceUID] = hashlib.sha256(ds.PixelData).hexdigest()
    return sent


def test_echo_to_storescp(storescp: StoreScp) -> None:
    assert echo("127.0.0.1", storescp.port, called_aet="XNAT", timeout=5).seconds < 5


def test_synthetic_study_arrives_complete(storescp: StoreScp, tmp_path: Path) -> None:
    write_studies(tmp_path / "study", studies=2, series=3, instances=60, instance_kb=32, junk=True)
    scan = scan_directory(tmp_path / "study", skip_truncated=True)  # the junk holds cut-short files
    result = store_instances(scan, host="127.0.0.1", port=storescp.port, workers=2, dimse_timeout=10)
    assert len(result.sent) == 120 and result.ok
    expected = _sent([f.path for f in scan.files])
    # forked children may still be closing their last file
    wait_until(lambda: storescp.received() == expected, 10, what="storescp to write every instance")
    assert storescp.received() == expected


def test_compressed_and_implicit_syntaxes_arrive_unchanged(storescp: StoreScp, tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    root.mkdir()
    for name in ("CT_small.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm", "MR_small_implicit.dcm"):
        shutil.copy(get_testdata_file(name), root / name)
    scan = scan_directory(root)
    result = store_instances(scan, host="127.0.0.1", port=storescp.port, workers=1, dimse_timeout=10)
    assert len(result.sent) == 4 and result.ok
    expected = _sent([f.path for f in scan.files])
    wait_until(lambda: storescp.received() == expected, 10, what="storescp to write every instance")
    assert storescp.received() == expected


def test_receiver_down_then_back_a_rerun_completes(storescp: StoreScp, tmp_path: Path) -> None:
    write_studies(tmp_path / "study", series=2, instances=40, instance_kb=16)
    scan = scan_directory(tmp_path / "study")
    storescp.stop()
    with pytest.raises(PeerUnreachableError):
        echo("127.0.0.1", storescp.port, timeout=2)
    result = store_instances(
        scan, host="127.0.0.1", port=storescp.port, workers=2, preflight=False, max_attempts=2, acse_timeout=2
    )
    assert not result.sent and len(result.failed) == 40
    assert all("Connection refused" in o.reason for o in result.failed)

    restarted = StoreScp(storescp.out_dir, storescp.port, "XNAT")
    try:
        second = store_instances(
            [f for f in scan.files if f.path in set(result.unsent_paths)],
            host="127.0.0.1",
            port=restarted.port,
            workers=2,
        )
        assert len(second.sent) == 40 and second.ok
        expected = _sent([f.path for f in scan.files])
        wait_until(lambda: restarted.received() == expected, 10, what="storescp to write every instance")
        assert restarted.received() == expected
    finally:
        restarted.stop()


@pytest.mark.slow
def test_receiver_killed_mid_send_nothing_reported_sent_that_did_not_arrive(storescp: StoreScp, tmp_path: Path) -> None:
    write_studies(tmp_path / "study", series=2, instances=1500, instance_kb=16)
    scan = scan_directory(tmp_path / "study")
    outcome: dict = {}
    sender = threading.Thread(
        target=lambda: outcome.update(
            result=store_instances(
                scan, host="127.0.0.1", port=storescp.port, workers=2, max_attempts=2, acse_timeout=2, dimse_timeout=5
            )
        )
    )
    sender.start()
    wait_until(
        lambda: len(list(storescp.out_dir.iterdir())) >= 100,
        20,
        interval=0.005,
        what="100 instances to arrive before the receiver is killed",
    )
    storescp.kill_all()
    sender.join(timeout=60)
    first = outcome["result"]
    arrived = storescp.received()
    assert first.failed, "the receiver was killed while instances were still being sent"
    assert {o.sop_instance_uid for o in first.sent} <= set(arrived)
    assert len(first.sent) + len(first.failed) == 1500

    restarted = StoreScp(storescp.out_dir, storescp.port, "XNAT")
    try:
        second = store_instances(
            [f for f in scan.files if f.path in set(first.unsent_paths)],
            host="127.0.0.1",
            port=restarted.port,
            workers=2,
        )
        assert second.ok
        expected = _sent([f.path for f in scan.files])
        wait_until(lambda: restarted.received() == expected, 10, what="storescp to write every instance")
        assert restarted.received() == expected
    finally:
        restarted.stop()
