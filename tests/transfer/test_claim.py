"""``transfer.claim``: one upload at a time per destination label, with a bounded wait."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from xnat_flows.transfer.claim import DestinationBusyError, DestinationClaim, destination_name

NAME = destination_name("http://127.0.0.1:8080", "P", "E1")


def test_a_claim_held_by_another_process_is_waited_for_then_refused_naming_it(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from xnat_flows.transfer.claim import DestinationClaim\n"
            f"with DestinationClaim([{NAME!r}], directory=Path({str(tmp_path)!r})):\n"
            "    print('held', flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        said: list[str] = []
        started = time.monotonic()
        claim = DestinationClaim([NAME], directory=tmp_path, wait_seconds=0.6, on_wait=said.append)
        with pytest.raises(DestinationBusyError) as raised, claim:
            pass
        assert 0.5 <= time.monotonic() - started < 5
        assert f"P/E1 on 127.0.0.1:8080 (pid {holder.pid} since" in str(raised.value)
        assert "nothing was sent" in str(raised.value) and said and "waiting" in said[0]
    finally:
        holder.kill()
        holder.wait()
    with DestinationClaim([NAME], directory=tmp_path, wait_seconds=5):  # the kernel released it with the process
        pass


def test_two_claims_in_one_process_take_turns(tmp_path: Path) -> None:
    second = DestinationClaim([NAME], directory=tmp_path, wait_seconds=0.2)
    with DestinationClaim([NAME], directory=tmp_path), pytest.raises(DestinationBusyError), second:
        pass
    other = destination_name("http://127.0.0.1:8080", "P", "E2")
    with DestinationClaim([NAME], directory=tmp_path), DestinationClaim([other], directory=tmp_path, wait_seconds=0):
        pass  # another label is another claim
