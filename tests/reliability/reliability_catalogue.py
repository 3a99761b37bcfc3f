"""The fault catalogue: every fault tried against every transport, run twice (the faulty run and a
clean re-run), with the invariants the suite demands.

Shared by ``tests/reliability/test_faults.py`` (one test per case) and ``bench/fault_table.py``
(prints the table that docs/reliability.md shows), so the table is always what the tests check.

A case passes when
* run 1 either completes with every instance landed exactly once, or stops and *lists* (failed
  batches' files, failed instances, unsent paths) at least every instance that did not land;
* the re-run, with the fault gone and the same resume journal, completes;
* afterwards every expected instance is in XNAT's archive exactly once (counted by reading the
  SOP Instance UID of every archived file of the project), nothing is left in the prearchive and
  no second session was created.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from unittest import mock

import httpx
import pydicom

from xnat_flows.client.client import XnatClient
from xnat_flows.client.credentials import Credentials
from xnat_flows.client.errors import XnatError
from xnat_flows.client.retry import RetryPolicy
from xnat_flows.testing import XnatEmulator
from xnat_flows.testing.faults import PERMANENT_400, TRANSIENT_400
from xnat_flows.testing.synth import write_studies
from xnat_flows.transfer.journal import UploadJournal
from xnat_flows.transfer.scan import ScanResult, scan_directory
from xnat_flows.transfer.session import upload_session
from xnat_flows.transfer.target import UploadTarget

Transport = Literal["dicom-zip", "gradual-dicom", "c-store"]
PROJECT, SUBJECT, SESSION = "REL", "REL_S01", "REL_E01"
PASSWORD = "reliability-pw-5d1e"
IMPORT = r"/data/services/import"
# XNAT archives a session once no instance arrived for this long (5 min on a real server). The
# faults' waits stay below it, except where a case is about a retry arriving after it.
REBUILD_IDLE = 1.5
RESTARTED_IDLE = 30.0  # see Harness.restart
READ_TIMEOUT = 0.4  # seconds; "slow response" faults delay longer than this
LOGIN_PAGE = "<html><head><title>XNAT - Login</title></head><body><form action='/login'></form></body></html>"
FAST_RETRY = RetryPolicy(attempts=6, backoff_base=0.05, backoff_max=0.3, retry_after_max=5.0, budget_seconds=30.0)


class Harness:
    """One emulator (restartable on the same data dir and ports), one synthetic study, one journal."""

    def __init__(
        self, workdir: Path, *, scp: bool = False, series: int = 2, instances: int = 16, seed: int = 11
    ) -> None:
        self.workdir = workdir
        self.source = workdir / "export"
        self.manifest = write_studies(self.source, series=series, instances=instances, instance_kb=4, seed=seed)
        self.uid_of = {f.path.relative_to(self.source).as_posix(): f.sop_instance_uid for f in self.manifest.files}
        self.expected_uids = set(self.uid_of.values())
        # Acceptable archived contents: every source file as written, plus any later rewrite.
        self.good_digests = {_sha256(f.path) for f in self.manifest.files}
        self._scp = scp
        self.emulator = self._new_emulator(port=0, scp_port=0 if scp else None)
        self.clients: list[XnatClient] = []

    def _new_emulator(self, port: int, scp_port: int | None, idle: float = REBUILD_IDLE) -> XnatEmulator:
        return XnatEmulator(
            self.workdir / "xnat",
            port=port,
            projects=(PROJECT,),
            password=PASSWORD,
            scp_port=scp_port,
            rebuild_idle_seconds=idle,
        ).start()

    def restart(self, down_seconds: float = 0.3) -> None:
        """Stop the server (cutting open connections) and start it again on the same state and ports.

        The restarted server's idle interval is long: XNAT's is minutes, far longer than the client's
        retries after a restart, and the compressed 1.5 s could end during the restart itself on a
        loaded machine, archiving the session before the retries of the requests the restart cut
        arrive (they then go to the prearchive, as they would on XNAT after its idle interval).
        ``settle`` runs the rebuilder at the end whatever the interval."""
        port, scp_port = self.emulator.port, self.emulator.scp_port
        self.emulator.stop()
        time.sleep(down_seconds)
        self.emulator = self._new_emulator(port=port, scp_port=scp_port, idle=RESTARTED_IDLE)

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.emulator.stop()

    def client(self, read_timeout: float = 30.0) -> XnatClient:
        creds = Credentials(url=self.emulator.url, username="admin", password=PASSWORD)
        timeout = httpx.Timeout(connect=2.0, read=read_timeout, write=read_timeout, pool=10.0)
        client = XnatClient(creds, timeout=timeout, retry=FAST_RETRY)
        self.clients.append(client)
        return client

    def settle(self) -> None:
        """Let the idle rebuilder archive whatever is complete (XNAT would, minutes later)."""
        deadline = time.monotonic() + 15
        # Requests the client gave up on (timeouts) may still be running on the server: wait them out.
        while self.emulator.stats()["active_imports"] and time.monotonic() < deadline:
            time.sleep(0.1)
        # The test does not wait out XNAT's idle interval: it runs the rebuilder as if it had passed.
        prearchive = self.emulator.prearchive
        idle, prearchive.rebuild_idle_seconds = prearchive.rebuild_idle_seconds, 0.0
        try:
            while True:
                self.emulator.rebuild_now()
                if not self.receiving() or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        finally:
            prearchive.rebuild_idle_seconds = idle

    def corrupt_files(self) -> int:
        """Archived files whose bytes are no version of any source file (a torn or mixed upload)."""
        count = 0
        for experiment in self.emulator.archived_experiments(PROJECT):
            for path in self.emulator.archived_files(experiment["ID"]).values():
                count += _sha256(path) not in self.good_digests
        return count

    def archived_uids(self) -> list[str]:
        """The SOP Instance UID of every archived file of the project (repeats = duplicates)."""
        uids = []
        for experiment in self.emulator.archived_experiments(PROJECT):
            for path in self.emulator.archived_files(experiment["ID"]).values():
                ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
                uids.append(str(ds.SOPInstanceUID))
        return uids

    def receiving(self) -> int:
        """Prearchive rows the rebuilder has yet to finish (still receiving or queued)."""
        rows = self.emulator.prearchive_sessions(include_direct_archive=True)
        return sum(1 for r in rows if r["status"] in ("RECEIVING", "QUEUED_ARCHIVING", "ARCHIVING", "BUILDING"))

    def leftovers(self) -> int:
        """Prearchive rows (including Direct-Archive ones) still not archived."""
        return len(self.emulator.prearchive_sessions(include_direct_archive=True))


@dataclass
class RunOutcome:
    ok: bool
    listed: set[str]  # relpaths the run reported as not delivered
    error: str = ""
    seconds: float = 0.0
    logins: int = 0
    in_doubt: bool = False  # C-STORE: instances sent again after an attempt without an answer

    def describe(self) -> str:
        if self.in_doubt and not self.listed:
            return f"stored, {self.error}: told to check for CONFLICT"
        if self.ok and self.error:
            return self.error
        if self.ok:
            return "complete"
        if self.error and not self.listed:
            return f"stopped: {self.error[:60]}"
        return f"stopped, {len(self.listed)} listed"


@dataclass
class FaultCase:
    id: str
    transport: Transport
    fault: str  # words for the table
    inject: Callable[[Harness], None] | None = None  # before run 1
    during: Callable[[Harness], None] | None = None  # in a thread while run 1 is going
    after_scan: Callable[[Harness, ScanResult], None] | None = None  # between scan and send
    workers: int = 4
    read_timeout: float = 30.0
    check_run1: Callable[[Harness, RunOutcome], None] | None = None  # extra assertions
    known_bug: str | None = None  # "<what>: <owner module>" -> strict xfail in the tests


@dataclass
class CaseResult:
    case: FaultCase
    run1: RunOutcome
    rerun: RunOutcome
    expected: int
    landed: int
    duplicates: int
    leftovers: int
    sessions: int
    corrupt: int
    missing_after_run1: set[str]
    unlisted_after_run1: set[str]

    @property
    def passed(self) -> bool:
        return (
            (self.run1.ok and not self.missing_after_run1 or not self.run1.ok and not self.unlisted_after_run1)
            and self.rerun.ok
            and self.landed == self.expected
            and self.duplicates == 0
            and self.leftovers == 0
            and self.sessions == 1
            and self.corrupt == 0
        )

    def row(self) -> dict[str, Any]:
        return {
            "fault": self.case.fault,
            "transport": self.case.transport,
            "run 1": self.run1.describe()
            + (f" (UNLISTED {len(self.unlisted_after_run1)})" if self.unlisted_after_run1 else ""),
            "re-run": self.rerun.describe(),
            "landed/expected": f"{self.landed}/{self.expected}",
            "duplicates": self.duplicates,
            "corrupt": self.corrupt,
            "left in prearchive": self.leftovers,
            "verdict": "ok" if self.passed else "FAIL",
        }


# -- running one upload ----------------------------------------------------------------------------


def _run_rest(h: Harness, case: FaultCase, client: XnatClient) -> RunOutcome:
    scan = scan_directory(h.source)
    if case.after_scan is not None:
        case.after_scan(h, scan)
    started = time.monotonic()
    try:
        result = upload_session(
            client,
            scan,
            UploadTarget(PROJECT, SUBJECT, SESSION),
            workers=case.workers,
            gradual=case.transport == "gradual-dicom",
            journal=UploadJournal(),
            verify=True,
            verify_timeout=4.0,
            poll_interval=0.2,
        )
    except XnatError as exc:
        return RunOutcome(False, set(), str(exc), time.monotonic() - started, client.login_count)
    listed: set[str] = set()
    for study in result.sessions:
        listed.update(study.failed_files)
        listed.update(name for b in study.batches if not b.ok for name in b.files)
        if study.verify is not None and not study.verify.ok:
            listed.add(f"<verify: {study.verify.summary()}>")
    return RunOutcome(result.ok, listed, "", time.monotonic() - started, client.login_count)


def _run_cstore(h: Harness, case: FaultCase) -> RunOutcome:
    from xnat_flows.models import DicomReceiverTarget, XnatConnection
    from xnat_flows.tasks.cstore import send_instances
    from xnat_flows.transfer.cstore.inputs import RoutingOverride

    scan = scan_directory(h.source)
    if case.after_scan is not None:
        case.after_scan(h, scan)
    receiver = DicomReceiverTarget(host="127.0.0.1", port=h.emulator.scp_port, called_aet="XNAT", calling_aet="RELTEST")
    started = time.monotonic()
    try:
        # The task's own code (journal included), without a Prefect run around it; with the XNAT
        # behind the receiver, which the journal is checked against (the worker's XNAT_PASS).
        connection = XnatConnection(url=h.emulator.url, username="admin")
        with mock.patch.dict(os.environ, {"XNAT_PASS": PASSWORD}):
            send = send_instances.fn(
                receiver, scan.files, case.workers, RoutingOverride(PROJECT, SUBJECT, SESSION), connection=connection
            )
    except XnatError as exc:
        return RunOutcome(False, set(), str(exc), time.monotonic() - started)
    result = send
    listed = {Path(p).relative_to(h.source).as_posix() for p in result.unsent_paths}
    in_doubt = send.in_doubt
    if in_doubt and not listed:
        # Sent again after an attempt that got no answer: the run says the session may wait in
        # CONFLICT and what to do (``in_doubt_warning``); it claims no complete delivery.
        return RunOutcome(False, set(), f"{len(in_doubt)} in doubt", time.monotonic() - started, in_doubt=True)
    return RunOutcome(result.ok and not in_doubt, listed, "", time.monotonic() - started, in_doubt=bool(in_doubt))


def _follow_the_in_doubt_advice(h: Harness) -> None:
    """What ``in_doubt_warning`` tells the user: archive the CONFLICT entry with ``--overwrite delete``."""
    from xnat_flows.client.prearchive import archive_session, list_sessions

    client = h.client()
    for row in list_sessions(client, PROJECT):
        if row.status == "CONFLICT":
            archive_session(client, row.project, row.timestamp, row.folder_name or row.name, overwrite="delete")


def run_upload(h: Harness, case: FaultCase, read_timeout: float) -> RunOutcome:
    if case.transport == "c-store":
        return _run_cstore(h, case)
    return _run_rest(h, case, h.client(read_timeout))


def run_case(case: FaultCase, workdir: Path) -> CaseResult:
    """Run 1 with the fault, then a clean re-run; count what landed."""
    h = Harness(workdir, scp=case.transport == "c-store")
    try:
        if case.inject is not None:
            case.inject(h)
        worker = threading.Thread(target=case.during, args=(h,), daemon=True) if case.during else None
        if worker is not None:
            worker.start()
        run1 = run_upload(h, case, case.read_timeout)
        if worker is not None:
            worker.join(timeout=30)
        h.emulator.faults.clear()
        if h.emulator.dicom_receiver is not None:
            from xnat_flows.testing.scp import ScpFaults

            h.emulator.dicom_receiver.set_faults(ScpFaults())
        h.settle()
        landed_after_run1 = set(h.archived_uids())
        expected_now = {h.uid_of[rel] for rel in _existing(h)}
        missing = {rel for rel, uid in h.uid_of.items() if uid in expected_now and uid not in landed_after_run1}
        # A file deleted before the send cannot land, and must be listed too.
        missing |= {rel for rel in h.uid_of if rel not in _existing(h)}
        # A run that stopped as a whole (an exception) lists no files: it claims nothing landed.
        unlisted = set() if run1.error and not run1.listed else missing - run1.listed
        if case.check_run1 is not None:
            case.check_run1(h, run1)

        if run1.ok:
            rerun = RunOutcome(True, set(), "not needed")
        else:
            if run1.in_doubt:
                _follow_the_in_doubt_advice(h)
            # A restart's long idle interval was for run 1's retries; the re-run meets the usual
            # (compressed) one: a re-run to an archived label goes through the prearchive, and its
            # session would otherwise outwait the re-run's verification.
            h.emulator.prearchive.rebuild_idle_seconds = REBUILD_IDLE
            rerun = run_upload(h, FaultCase(case.id, case.transport, case.fault, workers=case.workers), 30.0)
            h.settle()
        uids = h.archived_uids()
        experiments = h.emulator.archived_experiments(PROJECT)
        return CaseResult(
            case=case,
            run1=run1,
            rerun=rerun,
            expected=len(expected_now),
            landed=len(set(uids) & expected_now),
            duplicates=len(uids) - len(set(uids)) + len(set(uids) - expected_now),
            leftovers=h.leftovers(),
            sessions=len(experiments),
            corrupt=h.corrupt_files(),
            missing_after_run1=missing,
            unlisted_after_run1=unlisted,
        )
    finally:
        h.close()


def _existing(h: Harness) -> list[str]:
    return [rel for rel in h.uid_of if (h.source / rel).exists()]


# -- the faults --------------------------------------------------------------------------------------


def _http(**rule: Any) -> Callable[[Harness], None]:
    def inject(h: Harness) -> None:
        h.emulator.faults.add(**{"method": "POST", "path": IMPORT, **rule})

    return inject


def _waited_at_least(seconds: float) -> Callable[[Harness, RunOutcome], None]:
    def check(h: Harness, run: RunOutcome) -> None:
        assert run.seconds >= seconds, f"Retry-After {seconds} s not honoured: run took {run.seconds:.2f} s"

    return check


def _one_relogin(h: Harness, run: RunOutcome) -> None:
    assert run.logins == 2, f"expected the first login and exactly one shared re-login, got {run.logins} logins"


def _restart_after(progress: int) -> Callable[[Harness], None]:
    """Restart the server once it has taken ``progress`` imports (REST) or stores (C-STORE)."""

    def during(h: Harness) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            receiver = h.emulator.dicom_receiver
            seen = receiver.stores_seen if receiver is not None else h.emulator.stats()["imports"]
            if seen >= progress:
                break
            time.sleep(0.005)
        h.restart()

    return during


def _sha256(path: Path) -> str:
    """A digest of what matters in an instance: its UID, comments and pixel bytes. (C-STORE sends an
    edited copy, with routing in PatientComments and the receiver's own file meta, so whole-file
    bytes differ by design; a torn upload changes the pixel bytes or cannot be read at all.)"""
    import hashlib

    try:
        ds = pydicom.dcmread(path)
        key = f"{ds.SOPInstanceUID}|{ds.get('ImageComments', '')}|".encode() + bytes(ds.PixelData)
    except Exception as exc:  # noqa: BLE001 - unreadable is corrupt
        return f"unreadable: {exc}"
    return hashlib.sha256(key).hexdigest()


def _delete_one(h: Harness, scan: ScanResult) -> None:
    scan.files[len(scan.files) // 2].path.unlink()


def _rewrite_one(h: Harness, scan: ScanResult) -> None:
    """Rewrite one file after the scan (an export still being written): new content, new size."""
    victim = scan.files[len(scan.files) // 2].path
    ds = pydicom.dcmread(victim)
    ds.ImageComments = "rewritten after the scan"
    ds.save_as(victim, enforce_file_format=True)
    h.good_digests.add(_sha256(victim))


def _scp_faults(**knobs: Any) -> Callable[[Harness], None]:
    def inject(h: Harness) -> None:
        from xnat_flows.testing.scp import ScpFaults

        h.emulator.dicom_receiver.set_faults(ScpFaults(**knobs))

    return inject


def _rest_cases(transport: Transport) -> list[FaultCase]:
    # Faults fire after the first request(s) so gradual's warm-up (first instance of each series)
    # passes and the fault hits the parallel phase too.
    after = 0 if transport == "dicom-zip" else 3
    return [
        FaultCase(
            "http500",
            transport,
            "HTTP 500 x2",
            _http(status=500, message="Internal Server Error", times=2, after=after),
        ),
        FaultCase("http502", transport, "HTTP 502 x3", _http(status=502, message="Bad Gateway", times=3, after=after)),
        FaultCase(
            "http429",
            transport,
            "HTTP 429 Retry-After: 1",
            _http(status=429, retry_after=1, times=1, after=after),
            check_run1=_waited_at_least(1.0),
        ),
        FaultCase(
            "http503",
            transport,
            "HTTP 503 Retry-After: 1",
            _http(status=503, retry_after=1, times=2, after=after),
            check_run1=_waited_at_least(1.0),
        ),
        FaultCase(
            "transient400",
            transport,
            f"HTTP 400 '{TRANSIENT_400}' x3",
            _http(status=400, message=TRANSIENT_400, times=3, after=after),
        ),
        FaultCase("drop", transport, "connection dropped mid-body x2", _http(drop=True, times=2, after=after)),
        FaultCase(
            "slow",
            transport,
            f"response 1 s late, client read timeout {READ_TIMEOUT} s",
            _http(delay_ms=1000, times=1, after=after),
            read_timeout=READ_TIMEOUT,
        ),
        FaultCase(
            "evict8",
            transport,
            "token evicted mid-run, 8 workers",
            _http(evict_token=True, times=1, after=after + 2),
            workers=8,
            check_run1=_one_relogin,
        ),
        FaultCase(
            "restart",
            transport,
            "server restarted mid-upload",
            _http(delay_ms=300, times=None),
            during=_restart_after(2 if transport == "dicom-zip" else 6),
        ),
        FaultCase(
            "permanent400",
            transport,
            f"HTTP 400 '{PERMANENT_400}' x3 (a bad batch/instance)",
            _http(status=400, message=PERMANENT_400, times=3, after=after + 2),
            known_bug=None,
        ),
        FaultCase(
            "late-retry",
            transport,
            "HTTP 503 Retry-After: 2 (retry after XNAT archived the session)",
            _http(status=503, retry_after=2, times=1, after=after + 4),
            known_bug=None,
        ),
        FaultCase("deleted", transport, "file deleted between scan and send", after_scan=_delete_one),
        FaultCase(
            "changed", transport, "file rewritten between scan and send", after_scan=_rewrite_one, known_bug=None
        ),
        # Answers that are not XNAT's import service, servers that never answer or fail everything.
        FaultCase(
            "login302",
            transport,
            "HTTP 302 to a login page (every import)",
            _http(status=302, headers={"Location": "/app/template/Login.vm"}, times=None),
        ),
        FaultCase(
            "loginhtml",
            transport,
            "HTTP 200 with an HTML login page (every import)",
            _http(error_body=LOGIN_PAGE, times=None),
        ),
        FaultCase(
            "noanswer",
            transport,
            f"import never answers (stall timeout {READ_TIMEOUT} s)",
            _http(delay_ms=2000, times=None, after=after),
            read_timeout=READ_TIMEOUT,
        ),
        FaultCase(
            "unknown400",
            transport,
            "HTTP 400 with a message XNAT's known ones do not include x2",
            _http(status=400, message="Unexpected condition 42", times=2, after=after + 2),
        ),
        FaultCase(
            "persistent500",
            transport,
            "HTTP 500 for every import (persistent)",
            _http(status=500, message="Internal Server Error", times=None, after=after + 2),
        ),
        FaultCase(
            "diskfull",
            transport,
            "HTTP 500 'No space left on device' (persistent)",
            _http(status=500, message="java.io.IOException: No space left on device", times=None, after=after + 2),
        ),
    ]


def _cstore_cases() -> list[FaultCase]:
    return [
        FaultCase("abort", "c-store", "association aborted after 10 stores", _scp_faults(abort_after_stores=10)),
        FaultCase(
            "stall",
            "c-store",
            "receiver stops answering after 10 stores",
            _scp_faults(stall_after_stores=10, stall_seconds=2.0),
        ),
        FaultCase("refuse", "c-store", "receiver refuses associations", _scp_faults(refuse_associations=True)),
        FaultCase("restart", "c-store", "receiver restarted mid-send", during=_restart_after(6)),
        FaultCase("deleted", "c-store", "file deleted between scan and send", after_scan=_delete_one),
        FaultCase("changed", "c-store", "file rewritten between scan and send", after_scan=_rewrite_one),
    ]


CATALOGUE: list[FaultCase] = _rest_cases("dicom-zip") + _rest_cases("gradual-dicom") + _cstore_cases()


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table."""
    if not rows:
        return ""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def ensure_private_profile(directory: Path) -> None:
    """Journals and token caches go to ``directory`` (the bench has no pytest fixture for it)."""
    os.environ["XNAT_FLOWS_HOME"] = str(directory)
