"""Never resolve XNAT's conflicts by overriding its checks; uploads to one label at once.

The CLI tests run ``xnat-flows`` as subprocesses (a fresh HOME,
nothing cached) against the emulator over real sockets, as a user runs them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from transfer_helpers import connect, write_study

from xnat_flows.client.errors import ConflictError
from xnat_flows.client.prearchive import archive_session, list_sessions
from xnat_flows.testing import XnatEmulator
from xnat_flows.testing.pytest_plugin import wait_until
from xnat_flows.transfer import UploadTarget, scan_directory, upload_session
from xnat_flows.transfer.journal import UploadJournal, resume_key
from xnat_flows.transfer.session import archive_now, study_label, upload_batches
from xnat_flows.transfer.verify import prearchive_snapshot, verify_session

pytestmark = pytest.mark.e2e

CLI = str(Path(sys.executable).with_name("xnat-flows"))
IMPORT = "/data/services/import"


def slow_imports(xnat: XnatEmulator, ms: int = 1500) -> None:
    """Each import request answers ``ms`` later: two uploads started together overlap in XNAT
    (a small study otherwise goes through in 0.1 s, before the other process has even started)."""
    xnat.faults.add(path=IMPORT, method="POST", times=None, delay_ms=ms)


def cli_env(xnat: XnatEmulator, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XNAT_", "PREFECT_"))}
    home.mkdir(parents=True, exist_ok=True)
    return {**env, "HOME": str(home), "XNAT_URL": xnat.url, "XNAT_USER": "admin", "XNAT_PASS": "admin"}


def start_cli(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([CLI, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_cli(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    process = start_cli(args, env)
    out, err = process.communicate(timeout=180)
    return process.returncode, out + err


def sessions(xnat: XnatEmulator) -> dict[str, dict]:
    return {e["label"]: e for e in xnat.archived_experiments("TEST")}


def prearchive_rows(xnat: XnatEmulator) -> list[dict]:
    import httpx

    return httpx.get(f"{xnat.url}/data/prearchive/projects/TEST", auth=("admin", "admin")).json()["ResultSet"]["Result"]


def study_uid_of(folder: Path) -> str:
    (uid,) = {f.study_uid for f in scan_directory(folder).files}
    return uid


# -- 1: two patients to one label, at once: never one session, never both exit 0 ---------------------


def test_two_patients_uploaded_at_once_to_one_label_never_share_a_session(xnat_emulator, tmp_path) -> None:
    env = cli_env(xnat_emulator, tmp_path / "home")
    slow_imports(xnat_emulator)
    for round_ in range(2):  # once started together, once the second a moment later
        a, b = tmp_path / f"a{round_}", tmp_path / f"b{round_}"
        write_study(a, series=3, instances=10)
        write_study(b, series=3, instances=10)
        label = f"VISIT{round_}"
        first = start_cli(["session", "upload", str(a), "-P", "TEST", "-S", "S1", "-E", label], env)
        if round_:
            time.sleep(0.5)
        second = start_cli(["session", "upload", str(b), "-P", "TEST", "-S", "S1", "-E", label], env)
        outcomes = sorted(
            (p.wait(timeout=180), p.stdout.read() + p.stderr.read())  # type: ignore[union-attr]
            for p in (first, second)
        )
        (ok_code, ok_text), (refused_code, refused_text) = outcomes
        assert ok_code == 0, ok_text
        assert refused_code == 5, refused_text
        assert "another study" in refused_text and "nothing was sent" in refused_text
        session = sessions(xnat_emulator)[label]
        assert session["scans"] == {"1": 10, "2": 10, "3": 10}  # one study's series, none renamed N-MR1
        assert session["UID"] in {study_uid_of(a), study_uid_of(b)}
    assert prearchive_rows(xnat_emulator) == []


def test_two_uploads_in_threads_to_one_label_claim_it_one_after_the_other(xnat_emulator, tmp_path) -> None:
    folders = [tmp_path / "x", tmp_path / "y"]
    for folder in folders:
        write_study(folder, series=2, instances=6)
    outcomes: list[object] = []

    def upload(folder: Path) -> None:
        with connect(xnat_emulator, tmp_path) as client:
            try:
                outcomes.append(upload_session(client, folder, UploadTarget("TEST", "S", "SAME"), workers=2).ok)
            except ConflictError as exc:
                outcomes.append(exc)

    threads = [threading.Thread(target=upload, args=(f,)) for f in folders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(map(type, outcomes), key=str) == sorted([bool, ConflictError], key=str), outcomes
    assert True in outcomes
    assert sessions(xnat_emulator)["SAME"]["scans"] == {"1": 6, "2": 6}


# -- 2: a subject typo: refused before sending, the archived session stays where it is ----------------


def test_a_subject_typo_never_moves_an_archived_session(xnat_emulator, tmp_path) -> None:
    env = cli_env(xnat_emulator, tmp_path / "home")
    study = tmp_path / "study"
    write_study(study, series=3, instances=10)
    code, text = run_cli(["session", "upload", str(study), "-P", "TEST", "-S", "SUBJ_A", "-E", "VISIT2"], env)
    assert code == 0, text
    code, text = run_cli(["session", "upload", str(study), "-P", "TEST", "-S", "SUBJ_TYPO", "-E", "VISIT2"], env)
    assert code == 5, text
    assert "under subject 'SUBJ_A', not 'SUBJ_TYPO'" in text and "nothing was sent" in text
    import httpx

    with httpx.Client(base_url=xnat_emulator.url, auth=("admin", "admin")) as http:
        assert http.get("/data/projects/TEST/subjects/SUBJ_A/experiments/VISIT2").status_code == 200
        assert http.get("/data/projects/TEST/subjects/SUBJ_TYPO/experiments/VISIT2").status_code == 404
    assert prearchive_rows(xnat_emulator) == []


# -- verification: a CONFLICT XNAT parked is reported, never merged by override ------------------------


def _send_past_the_check(client, folder: Path, target: UploadTarget) -> tuple[list, frozenset[str]]:
    """What an upload that passed its destination check (another machine, a race) sends: the
    library's steps without the check."""
    files = scan_directory(folder).files
    before = prearchive_snapshot(client, target.project)
    batches = upload_batches(client, files, target, workers=2)
    assert all(b.ok for b in batches)
    archive_now(client, target, files[0].study_uid, [u for b in batches for u in b.uris])
    return files, before


def test_verification_reports_a_conflict_with_another_study_and_merges_nothing(xnat_emulator, tmp_path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write_study(a, series=2, instances=5)
    write_study(b, series=2, instances=5)
    target = UploadTarget("TEST", "S1", "VISIT1")
    with connect(xnat_emulator, tmp_path) as client:
        assert upload_session(client, a, target, verify_timeout=20, poll_interval=0.1).ok
        files, before = _send_past_the_check(client, b, target)
        started = time.monotonic()
        result = verify_session(client, target, files, wait_timeout=60, poll_interval=0.1, prearchive_before=before)
        took = time.monotonic() - started
    assert not result.ok and result.conflict and took < 20
    (parked,) = result.parked
    assert "CONFLICT" in parked and f"which holds study {study_uid_of(a)}" in parked and "S1/VISIT1" in parked
    assert "Invalid modification of session UID" in parked  # XNAT's own log line
    (step,) = result.next_steps
    assert "xnat-flows prearchive archive TEST" in step and "xnat-flows prearchive delete TEST" in step
    assert sessions(xnat_emulator)["VISIT1"]["scans"] == {"1": 5, "2": 5}
    assert sessions(xnat_emulator)["VISIT1"]["UID"] == study_uid_of(a)
    (row,) = prearchive_rows(xnat_emulator)
    assert row["status"] == "CONFLICT" and row["tag"] == study_uid_of(b)


def test_verification_never_moves_a_session_to_another_subject(xnat_emulator, tmp_path) -> None:
    study = tmp_path / "study"
    write_study(study, series=2, instances=5)
    with connect(xnat_emulator, tmp_path) as client:
        assert upload_session(client, study, UploadTarget("TEST", "SUBJ_A", "VISIT2"), verify_timeout=20).ok
        typo = UploadTarget("TEST", "SUBJ_TYPO", "VISIT2")
        files, before = _send_past_the_check(client, study, typo)
        result = verify_session(client, typo, files, wait_timeout=60, poll_interval=0.1, prearchive_before=before)
        assert not result.ok and result.conflict
        assert "conflicts with TEST/SUBJ_A/VISIT2" in result.parked[0] and "the same study" in result.parked[0]
        assert client.get_rows("/data/projects/TEST/subjects/SUBJ_A/experiments")[0]["label"] == "VISIT2"


def test_another_subjects_session_under_the_label_never_verifies_this_upload(xnat_emulator, tmp_path) -> None:
    """Before XNAT has parked the copy (still receiving it), the label's archived session of the same
    study and counts is another subject's: not this upload's, whatever its counts say."""
    study = tmp_path / "study"
    write_study(study, series=2, instances=5)
    with connect(xnat_emulator, tmp_path) as client:
        assert upload_session(client, study, UploadTarget("TEST", "SUBJ_A", "VISIT3"), verify_timeout=20).ok
        typo = UploadTarget("TEST", "SUBJ_TYPO", "VISIT3")
        files = scan_directory(study).files
        before = prearchive_snapshot(client, typo.project)
        assert all(b.ok for b in upload_batches(client, files, typo, workers=2))  # not archived yet
        result = verify_session(client, typo, files, wait_timeout=1, poll_interval=0.1, prearchive_before=before)
    assert not result.ok and result.experiment_id is None and result.found_count == 0


def test_this_uploads_own_late_copy_is_merged_with_append(xnat_emulator, tmp_path) -> None:
    """A copy of the same study, subject and patient that XNAT parked in CONFLICT is merged (append)."""
    study = tmp_path / "study"
    write_study(study, series=2, instances=5)
    target = UploadTarget("TEST", "S", "LATE")
    with connect(xnat_emulator, tmp_path) as client:
        assert upload_session(client, study, target, verify_timeout=20, poll_interval=0.1).ok
        xnat_emulator.faults.force_next_session("CONFLICT")
        again = upload_session(client, study, target, verify_timeout=20, poll_interval=0.1)
    assert again.ok, again.sessions[0].verify
    assert prearchive_rows(xnat_emulator) == []
    assert sessions(xnat_emulator)["LATE"]["scans"] == {"1": 5, "2": 5}


def _a_batch_arrives_late(xnat_emulator_factory, tmp_path: Path) -> tuple[XnatEmulator, Path]:
    """An XNAT whose project archives by hand, and a study of two batches (``workers=2``) whose first
    request is taken 2 s late: the other batch lands, the session goes idle and is archived."""
    xnat = xnat_emulator_factory(
        tmp_path / "xnat", projects=("TEST",), rebuild_idle_seconds=0.3, prearchive_codes={"TEST": 0}
    )
    study = tmp_path / "study"
    write_study(study, series=2, instances=4)
    xnat.faults.add(path=IMPORT, method="POST", times=1, delay_ms=2000)
    return xnat, study


def test_a_batch_that_arrives_after_the_direct_archive_session_was_archived_is_merged_not_waited_on(
    xnat_emulator_factory, tmp_path
) -> None:
    """A batch whose request reaches XNAT after the idle timer archived the Direct-Archive session goes
    through the prearchive; a project that archives by hand keeps it READY there. Verification waited
    out its whole timeout for it (a CLI --flow run, whose batches are task runs started seconds apart
    under load, hung so); it is this upload's own late copy, merged with append."""
    xnat, study = _a_batch_arrives_late(xnat_emulator_factory, tmp_path)
    target = UploadTarget("TEST", "S", "LATEBATCH")
    with connect(xnat, tmp_path) as client:
        started = time.monotonic()
        result = upload_session(client, study, target, workers=2, verify_timeout=60, poll_interval=0.1)
        took = time.monotonic() - started
    assert result.ok, result.sessions[0].verify
    assert took < 20, took  # not the verification's 60 s
    assert prearchive_rows(xnat) == []
    assert sessions(xnat)["LATEBATCH"]["scans"] == {"1": 4, "2": 4}


def test_without_verification_a_batch_kept_ready_after_the_session_was_archived_is_reported_parked(
    xnat_emulator_factory, tmp_path
) -> None:
    """The same late batch without verification: nothing merges it, so the one look at the
    prearchive reports it (READY, waiting for a person in a project that archives by hand) and the
    upload is not reported complete; the journal forgets the session, so a re-run sends it all."""
    xnat, study = _a_batch_arrives_late(xnat_emulator_factory, tmp_path)
    target = UploadTarget("TEST", "S", "LATENOVERIFY")
    journal = UploadJournal(tmp_path / "journal")
    with connect(xnat, tmp_path) as client:
        result = upload_session(client, study, target, workers=2, verify=False, journal=journal)
        key = resume_key(client.base_url, target.key)
    (session,) = result.sessions
    assert not result.ok and not result.in_conflict
    (parked,) = session.parked
    assert parked.session.status == "READY" and parked.session.name == "LATENOVERIFY"
    assert "it waits beside" in parked.describe()
    assert [row["status"] for row in prearchive_rows(xnat)] == ["READY"]  # kept for a person, not lost
    assert journal.done(key) == set()


def test_a_forced_upload_parked_in_error_stops_the_wait_at_once_naming_the_row(xnat_emulator, tmp_path) -> None:
    """7: an upload forced into another study's label waited the full 600 s and said "0/30 arrived"."""
    a, b = tmp_path / "a", tmp_path / "b"
    write_study(a, series=3, instances=10)
    write_study(b, series=3, instances=10)
    target = UploadTarget("TEST", "S", "FORCED")
    with connect(xnat_emulator, tmp_path) as client:
        assert upload_session(client, a, target, verify_timeout=20, poll_interval=0.1).ok
        xnat_emulator.faults.force_next_session("ERROR")
        started = time.monotonic()
        result = upload_session(client, b, target, allow_other_study=True, verify_timeout=60, poll_interval=0.2)
        took = time.monotonic() - started
    (study,) = result.sessions
    assert not result.ok and took < 20, took
    (parked,) = study.verify.parked
    assert "/prearchive/projects/TEST/" in parked and "is ERROR" in parked
    assert "ERROR" in study.verify.summary() and "arrived" not in study.verify.summary()


# -- 5: a study split across two folders, same label ---------------------------------------------------


def _split(tmp_path: Path) -> tuple[Path, Path, str]:
    whole = tmp_path / "whole"
    write_study(whole, series=2, instances=8)
    first, second = tmp_path / "part1", tmp_path / "part2"
    shutil.copytree(whole / "series1", first / "series1")
    shutil.copytree(whole / "series2", second / "series2")
    return first, second, study_uid_of(whole)


@pytest.mark.parametrize("together", [False, True], ids=["one-after-the-other", "at-once"])
def test_a_study_split_across_two_folders_ends_in_one_session_or_a_non_zero_exit(
    xnat_emulator, tmp_path, together
) -> None:
    env = cli_env(xnat_emulator, tmp_path / "home")
    slow_imports(xnat_emulator, 700)
    first, second, uid = _split(tmp_path)
    commands = [
        ["session", "upload", str(p), "-P", "TEST", "-S", "S", "-E", "SPLIT", "--no-verify"] for p in (first, second)
    ]
    if together:
        processes = [start_cli(c, env) for c in commands]
        outcomes = [(p.wait(timeout=180), p.stdout.read() + p.stderr.read()) for p in processes]  # type: ignore[union-attr]
    else:
        outcomes = [run_cli(c, env) for c in commands]
    wait_until(
        lambda: (
            not prearchive_rows(xnat_emulator)
            or all(r["status"] in ("CONFLICT", "ERROR") for r in prearchive_rows(xnat_emulator))
        ),
        timeout=30,
    )
    wait_until(lambda: "SPLIT" in sessions(xnat_emulator), timeout=30)
    parked = prearchive_rows(xnat_emulator)
    if all(code == 0 for code, _ in outcomes):
        assert parked == [], outcomes
        assert sessions(xnat_emulator)["SPLIT"]["scans"] == {"1": 8, "2": 8}
        assert sessions(xnat_emulator)["SPLIT"]["UID"] == uid
    else:  # a part XNAT parked is named, with the command to run
        assert any(code == 5 and "xnat-flows prearchive" in text for code, text in outcomes), outcomes


def test_no_verify_never_exits_0_while_its_upload_sits_in_conflict(xnat_emulator, tmp_path) -> None:
    env = cli_env(xnat_emulator, tmp_path / "home")
    study = tmp_path / "study"
    write_study(study, series=2, instances=5)
    args = ["session", "upload", str(study), "-P", "TEST", "-S", "S", "-E", "NOVERIFY", "--no-verify"]
    assert run_cli(args, env)[0] == 0
    wait_until(lambda: "NOVERIFY" in sessions(xnat_emulator), timeout=30)
    code, text = run_cli(args, env)  # its journal lists every batch: nothing new to send
    assert code == 0 and "not read back" in text, text
    xnat_emulator.faults.force_next_session("CONFLICT")
    code, text = run_cli(args, cli_env(xnat_emulator, tmp_path / "another-host"))  # sent again, and parked
    assert code == 5, text
    assert "XNAT did not archive this upload" in text and "is CONFLICT" in text
    assert "xnat-flows prearchive archive TEST" in text and "nothing was merged" in text


# -- 7: a --per-study re-run with -E spelled differently ----------------------------------------------


def test_a_per_study_rerun_under_another_label_is_refused_naming_the_first(xnat_emulator, tmp_path) -> None:
    env = cli_env(xnat_emulator, tmp_path / "home")
    folder = tmp_path / "two"
    write_study(folder / "a", series=1, instances=4)
    write_study(folder / "b", series=1, instances=4)
    code, text = run_cli(["session", "upload", str(folder), "-P", "TEST", "-S", "S", "-E", "MIX", "--per-study"], env)
    assert code == 0, text
    before = set(sessions(xnat_emulator))
    code, text = run_cli(["session", "upload", str(folder), "-P", "TEST", "-S", "S", "-E", "MIX_", "--per-study"], env)
    assert code == 5, text
    uid = study_uid_of(folder / "a")
    assert "already archived in TEST as session" in text and "-E MIX " in text.replace("\n", " ")
    assert study_label("MIX", uid) in text or study_label("MIX", study_uid_of(folder / "b")) in text
    assert set(sessions(xnat_emulator)) == before  # nothing archived again


# -- 7: the archive POST is resent when a kept connection is closed under it ---------------------------


def test_the_archive_request_is_resent_when_the_connection_is_closed_under_it(xnat_emulator, tmp_path) -> None:
    study = tmp_path / "study"
    write_study(study, series=1, instances=3)
    with connect(xnat_emulator, tmp_path) as client:
        client.request("PUT", "/data/projects/TEST/prearchive_code/0")
        result = upload_session(
            client, study, UploadTarget("TEST", "S", "HELD", direct_archive=False), verify_timeout=20
        )
        assert result.ok
        (row,) = list_sessions(client, "TEST")
        xnat_emulator.faults.add(path="/data/services/archive", method="POST", drop=True, times=1)
        outcome = archive_session(client, "TEST", row.timestamp, row.folder_name, wait_seconds=0)
    assert outcome.archive_uri and "HELD" in sessions(xnat_emulator)


def test_even_a_forced_upload_is_refused_before_sending_when_it_names_another_subject(xnat_emulator, tmp_path) -> None:
    """XNAT refuses to move a session to another subject under any overwrite: --into-other-study
    does not change that, so the upload is refused before anything is sent."""
    a, b = tmp_path / "a", tmp_path / "b"
    write_study(a, series=1, instances=3)
    write_study(b, series=1, instances=3)
    with connect(xnat_emulator, tmp_path) as client:
        assert upload_session(client, a, UploadTarget("TEST", "S1", "KEEP"), verify_timeout=20).ok
        imports = xnat_emulator.stats()["imports"]
        with pytest.raises(ConflictError, match="holds another study under subject 'S1', not 'S2': nothing was sent"):
            upload_session(client, b, UploadTarget("TEST", "S2", "KEEP"), allow_other_study=True)
    assert xnat_emulator.stats()["imports"] == imports
    assert sessions(xnat_emulator)["KEEP"]["subject"] == "S1"
