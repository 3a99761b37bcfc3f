"""An interrupted C-STORE (kill -9, Ctrl-C) completed by a re-run, after XNAT archived what arrived.

The sender runs as a real ``xnat-flows session upload-dicom`` subprocess against the emulator's
DICOM receiver (auto-archive project, short idle time), is killed mid-way, and the same command
is run again once the delivered part is archived. XNAT refuses to merge a prearchive entry that
repeats archived files ("Session already contains a scan ... with the same UID and number") and
leaves it in CONFLICT, so the re-run must send only what was not confirmed, and say so when it
re-sent instances whose fate it could not know.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xnat_flows.cli.main import app
from xnat_flows.testing import XnatEmulator
from xnat_flows.testing.pytest_plugin import wait_until
from xnat_flows.testing.scp import ScpFaults
from xnat_flows.testing.synth import write_studies
from xnat_flows.transfer.cstore.resume import journal_key
from xnat_flows.transfer.journal import UploadJournal, content_digest
from xnat_flows.transfer.scan import scan_directory

pytestmark = [pytest.mark.e2e]

ROUTE = ["-P", "CSTORE", "-S", "SUBJ_K", "-E", "SESS_K"]


@pytest.fixture
def xnat(tmp_path: Path, xnat_emulator_factory, monkeypatch: pytest.MonkeyPatch) -> XnatEmulator:
    emulator = xnat_emulator_factory(
        tmp_path / "xnat", projects=("CSTORE",), scp_port=0, scp_aet="XNAT", rebuild_idle_seconds=0.3
    )
    # -P needs a login: the sender checks the project, and what its journal says XNAT holds (also
    # in the subprocess senders, which inherit the environment)
    for name, value in (("XNAT_URL", emulator.url), ("XNAT_USER", "admin"), ("XNAT_PASS", "admin")):
        monkeypatch.setenv(name, value)
    return emulator


def _command(xnat: XnatEmulator, export: Path, workers: int) -> list[str]:
    return [
        "session",
        "upload-dicom",
        str(export),
        "--host",
        "127.0.0.1",
        "--port",
        str(xnat.scp_port),
        "--workers",
        str(workers),
        *ROUTE,
    ]


def _start_sender(args: list[str]) -> subprocess.Popen:
    # Ctrl-C handled as in a process started from a terminal: a suite started in the background
    # (a shell's `&` ignores SIGINT, and children inherit that) must not make the sender ignore it.
    code = (
        "import signal, sys\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from xnat_flows.cli.main import app\nsys.argv = ['xnat-flows', *sys.argv[1:]]\napp()"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def _journal(xnat: XnatEmulator) -> tuple[UploadJournal, str]:
    from xnat_flows.transfer.cstore.inputs import RoutingOverride

    return UploadJournal(), journal_key(
        "127.0.0.1", xnat.scp_port, "XNAT", RoutingOverride("CSTORE", "SUBJ_K", "SESS_K")
    )


def _archived_count(xnat: XnatEmulator) -> int:
    return sum(len(xnat.archived_files(e["ID"])) for e in xnat.archived_experiments("CSTORE"))


def _wait_settled(xnat: XnatEmulator, expected_archived: int) -> None:
    """Until the idle rebuilder archived ``expected_archived`` files or left a row it cannot archive."""
    wait_until(
        lambda: (
            _archived_count(xnat) >= expected_archived
            or any(row["status"] in ("CONFLICT", "ERROR") for row in xnat.prearchive_sessions())
        ),
        60,
        interval=0.01,
        what=f"{expected_archived} archived files",
    )


def test_kill_9_mid_send_then_rerun_after_archiving_completes_the_session(xnat: XnatEmulator, tmp_path: Path) -> None:
    """Deterministic point of death: the receiver stops answering the 31st instance, the sender is
    killed while it waits. 30 are stored and archived; the 31st went out unanswered (in doubt)."""
    manifest = write_studies(tmp_path / "export", series=2, instances=40, instance_kb=4, seed=21)
    total = len(manifest.files)
    _kill_after_stores(xnat, tmp_path / "export", 30)
    journal, key = _journal(xnat)
    assert len(journal.done(key)) == 30  # every confirmed instance was recorded before the kill
    assert len(journal.in_flight(key)) == 1
    _wait_settled(xnat, 30)
    assert _archived_count(xnat) == 30

    rerun = CliRunner().invoke(app, _command(xnat, tmp_path / "export", workers=1))
    assert "30 instances were delivered by an earlier run" in rerun.output
    assert f"{total - 30} sent, 0 failed" in rerun.output
    assert "1 instance(s) were in flight when an earlier run stopped" in rerun.output
    assert rerun.exit_code == 6, rerun.output  # the user is told what to check: not a plain success
    _wait_settled(xnat, total)
    assert _archived_count(xnat) == total
    assert not [row for row in xnat.prearchive_sessions() if row["status"] == "CONFLICT"]

    again = CliRunner().invoke(app, _command(xnat, tmp_path / "export", workers=1))
    assert again.exit_code == 0, again.output  # a third run finds everything delivered and sends nothing
    assert f"{total} instances were delivered by an earlier run" in again.output
    assert "0 sent, 0 failed" in again.output
    assert _archived_count(xnat) == total


def _signal_after_a_third(xnat: XnatEmulator, export: Path, signum: int, seed: int) -> tuple[int, subprocess.Popen]:
    """Send 150 instances over 4 associations; signal the sender once a third are confirmed."""
    total = len(write_studies(export, series=4, instances=150, instance_kb=4, seed=seed).files)
    journal, key = _journal(xnat)
    sender = _start_sender(_command(xnat, export, workers=4))
    wait_until(
        lambda: len(journal.done(key)) >= total // 3, 60, interval=0.01, what="a third of the instances confirmed"
    )
    sender.send_signal(signum)
    return total, sender


def test_kill_9_with_four_associations_loses_nothing_the_receiver_confirmed(xnat: XnatEmulator, tmp_path: Path) -> None:
    total, sender = _signal_after_a_third(xnat, tmp_path / "export", signal.SIGKILL, seed=22)
    sender.wait(10)
    journal, key = _journal(xnat)
    confirmed = journal.done(key)
    in_doubt = journal.in_flight(key)
    assert len(in_doubt) <= 4  # at most one instance in flight per association
    assert len(confirmed) < total  # killed mid-way
    _wait_settled(xnat, len(confirmed))

    rerun = CliRunner().invoke(app, _command(xnat, tmp_path / "export", workers=4))
    assert f"{len(confirmed)} instances were delivered by an earlier run" in rerun.output
    assert f"{total - len(confirmed)} sent, 0 failed" in rerun.output
    _wait_settled(xnat, total)
    conflict = [row for row in xnat.prearchive_sessions() if row["status"] == "CONFLICT"]
    if conflict:  # an in-flight instance had been stored: the user was told, and what to do
        assert in_doubt and "CONFLICT" in rerun.output and "--overwrite delete" in rerun.output
        assert rerun.exit_code == 6
    else:
        assert _archived_count(xnat) == total
        assert rerun.exit_code == (6 if in_doubt else 0), rerun.output


def _kill_after_stores(xnat: XnatEmulator, export: Path, stored: int) -> None:
    """Run the sender (one association) until the receiver stops answering after ``stored``
    instances, then kill -9 it while it waits for that answer."""
    xnat.dicom_receiver.set_faults(ScpFaults(stall_after_stores=stored, stall_seconds=20))
    sender = _start_sender(_command(xnat, export, workers=1))
    wait_until(
        lambda: xnat.dicom_receiver.stores_seen >= stored + 1, 60, interval=0.01, what=f"C-STORE number {stored + 1}"
    )
    sender.send_signal(signal.SIGKILL)
    sender.wait(10)


def test_a_resent_instance_xnat_had_archived_is_not_a_silent_conflict(xnat: XnatEmulator, tmp_path: Path) -> None:
    """The worst case of a kill: the receiver stored an instance and the process died before the
    answer arrived. Re-sending it makes XNAT park the whole re-run in CONFLICT; the CLI says so
    and what to do, and doing it completes the session."""
    manifest = write_studies(tmp_path / "export", series=1, instances=20, instance_kb=4, seed=23)
    total = len(manifest.files)
    _kill_after_stores(xnat, tmp_path / "export", 12)
    _wait_settled(xnat, 12)
    assert _archived_count(xnat) == 12
    # make the first stored instance look as a kill between storing and the answer leaves it
    journal, key = _journal(xnat)
    first = content_digest([scan_directory(tmp_path / "export", headers="file-meta").files[0]])
    assert first in journal.done(key)
    journal_path = journal.path_for(key)
    lines = [line for line in journal_path.read_text().splitlines() if line != first]
    journal_path.write_text("".join(line + "\n" for line in [">" + first, *lines]))

    rerun = CliRunner().invoke(app, _command(xnat, tmp_path / "export", workers=2))
    assert rerun.exit_code == 6, rerun.output
    assert f"{total - 11} sent, 0 failed" in rerun.output
    assert "2 instance(s) were in flight" in rerun.output and "CONFLICT" in rerun.output
    assert "xnat-flows prearchive archive PROJECT TIMESTAMP NAME --overwrite delete" in rerun.output
    _wait_settled(xnat, total)
    (row,) = [row for row in xnat.prearchive_sessions() if row["status"] == "CONFLICT"]
    assert _archived_count(xnat) == 12  # what XNAT did: the re-run waits in CONFLICT

    done = CliRunner().invoke(
        app,
        [
            "prearchive",
            "archive",
            "CSTORE",
            row["timestamp"],
            row["name"],
            "--overwrite",
            "delete",
            "--url",
            xnat.url,
            "--username",
            "admin",
            "--password-stdin",
        ],
        input="admin\n",
    )
    assert done.exit_code == 0, done.output
    assert _archived_count(xnat) == total


def test_ctrl_c_finishes_the_instances_in_flight_and_leaves_none_in_doubt(xnat: XnatEmulator, tmp_path: Path) -> None:
    total, sender = _signal_after_a_third(xnat, tmp_path / "export", signal.SIGINT, seed=24)
    journal, key = _journal(xnat)
    output = sender.communicate(timeout=60)[0].decode()
    assert sender.returncode == 130, output
    assert "run the same command again" in output
    confirmed = journal.done(key)
    assert len(confirmed) < total and journal.in_flight(key) == set()  # each answer was awaited and recorded
    assert xnat.dicom_receiver.stores_seen == len(confirmed)  # nothing the receiver got is unrecorded
    _wait_settled(xnat, len(confirmed))

    rerun = CliRunner().invoke(app, _command(xnat, tmp_path / "export", workers=4))
    assert rerun.exit_code == 0, rerun.output
    assert f"{total - len(confirmed)} sent, 0 failed" in rerun.output and "in flight" not in rerun.output
    _wait_settled(xnat, total)
    assert _archived_count(xnat) == total
    assert not [row for row in xnat.prearchive_sessions() if row["status"] == "CONFLICT"]


def test_ctrl_c_while_the_only_association_waits_for_an_answer_still_awaits_it(
    xnat: XnatEmulator, tmp_path: Path
) -> None:
    """Ctrl-C lands while the one worker waits for a slow answer (the receiver holds the 31st
    instance for 2 s). The sender must wait for that answer and record it before exiting: an
    interrupted ``Thread.join`` in CPython 3.11 marks a still-running thread as finished, so the
    wait cannot rest on joining the thread."""
    write_studies(tmp_path / "export", series=1, instances=40, instance_kb=4, seed=25)
    xnat.dicom_receiver.set_faults(ScpFaults(stall_after_stores=30, stall_seconds=2))
    sender = _start_sender(_command(xnat, tmp_path / "export", workers=1))
    wait_until(lambda: xnat.dicom_receiver.stores_seen >= 31, 60, interval=0.01, what="C-STORE number 31")
    sender.send_signal(signal.SIGINT)
    output = sender.communicate(timeout=60)[0].decode()
    assert sender.returncode == 130, output
    journal, key = _journal(xnat)
    assert len(journal.done(key)) == 30
    assert journal.in_flight(key) == set(), output  # the slow answer (a refusal) was awaited and recorded


def test_an_instance_sent_again_after_a_dropped_association_is_reported_in_doubt(
    xnat: XnatEmulator, tmp_path: Path
) -> None:
    """The receiver aborts the association on the 11th instance: the sender cannot know whether it
    was stored, sends it again, and says so (exit 6, what to check) instead of a plain success."""
    total = len(write_studies(tmp_path / "export", series=1, instances=20, instance_kb=4, seed=26).files)
    xnat.dicom_receiver.set_faults(ScpFaults(abort_after_stores=10))
    run = CliRunner().invoke(app, _command(xnat, tmp_path / "export", workers=1))
    assert run.exit_code == 6, run.output
    assert f"{total} sent, 0 failed" in run.output
    assert "1 instance(s) got no answer on an attempt in this run" in run.output
    assert "prearchive archive PROJECT TIMESTAMP NAME --overwrite delete" in run.output
