"""The one sequence of a REST upload, written against a small step interface.

For every planned session (one study under one label)::

    claim every destination ─ check every destination ─┐  (nothing is sent before all are checked)
    ┌──────────────────────────────────────────────────┘
    └─ per session: send (batches | instances) ─ archive now ─ verify ─ (disproved:) forget the journal
    └─ without verification: one look at the prearchive for what XNAT parked

Who runs a step is the caller's business (``UploadSteps``): the library runs each on an
``XnatClient`` (``transfer.session.ClientSteps``, used by ``upload_session`` and the CLI), the
``upload-dicom-session`` flow runs each as a Prefect task (``flows.upload``), so the UI shows
every task run with its retries and concurrency limits. The order and its conditions are here only:

* archive now only when everything is in and not yet known archived (``awaits_archiving``);
* a DICOM-zip session de-identified as it is sent (``deidentify.StreamedDeidentification``) is
  checked with the study its first file was rewritten to, and verified on the files as sent;
* verify whenever everything reached XNAT, also when a re-run found it archived already: no
  upload is reported verified, or complete, without XNAT saying so;
* forget the resume journal's record of a session only when verification (or, without it, the
  look at the prearchive) disproves it: files missing, or parked. A verified session keeps it, so
  a re-run of the same files sends nothing new and verifies; so does a run stopped while
  archiving or verifying.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from xnat_flows.client.prearchive import ParkedSession
from xnat_flows.transfer.deidentify import as_sent
from xnat_flows.transfer.scan import DicomFile
from xnat_flows.transfer.target import UploadTarget
from xnat_flows.transfer.upload_result import BatchResult, GradualResult, SessionResult
from xnat_flows.transfer.verify import VerifyResult

SessionPlan = Sequence[tuple[UploadTarget, list[DicomFile]]]


class UploadSteps(Protocol):
    """The steps of a REST upload, as ``sequence_upload`` calls them."""

    def claim(self, targets: Sequence[UploadTarget]) -> AbstractContextManager[object]:
        """Hold every destination for this upload alone, from its check to its verification."""
        ...

    def check_destination(
        self, target: UploadTarget, study_uid: str, allow_other_study: bool, per_study: bool
    ) -> tuple[UploadTarget, frozenset[str]]:
        """Refuse a destination XNAT would park or merge wrongly (``session.check_destination``).

        The target to use and the prearchive's rows before sending (``verify.prearchive_snapshot``).
        """
        ...

    def send_batches(self, target: UploadTarget, files: list[DicomFile]) -> list[BatchResult]:
        """DICOM-zip: the session's files in byte-balanced batches, one request each, in order of index."""
        ...

    def send_instances(self, target: UploadTarget, files: list[DicomFile]) -> GradualResult:
        """gradual-DICOM: one request per instance."""
        ...

    def archive_now(self, target: UploadTarget, study_uid: str, uris: list[str], requests_in_doubt: int) -> object:
        """Ask XNAT to archive the Direct-Archive session now (``session.archive_now``)."""
        ...

    def verify(self, target: UploadTarget, files: list[DicomFile], prearchive_before: frozenset[str]) -> VerifyResult:
        """Read the session back and compare it with what was sent (``verify.verify_session``)."""
        ...

    def forget_delivered(self, target: UploadTarget) -> None:
        """Drop the resume journal's record of this destination: a later upload sends it all again."""
        ...

    def look_for_parked(
        self, target: UploadTarget, study_uid: str, prearchive_before: frozenset[str]
    ) -> list[ParkedSession]:
        """Without verification: this upload's rows XNAT parked (``session.look_for_parked``)."""
        ...


def sequence_upload(
    steps: UploadSteps,
    plan: SessionPlan,
    *,
    gradual: bool = False,
    verify: bool = True,
    allow_other_study: bool = False,
    per_study: bool = False,
) -> list[SessionResult]:
    """Run a REST upload's steps in their one order (see the module's docstring).

    Args:
        steps: Who runs each step: ``session.ClientSteps`` (a client) or the flow's tasks.
        plan: (target, files) per session, as ``session.plan_sessions`` makes it (de-identified
            files when the upload de-identifies).
        gradual: gradual-DICOM (one instance per request) instead of DICOM-zip batches.
        verify: read every session back once it is in; without, look once for what XNAT parked.
        allow_other_study: upload into a label that holds another study (asked for explicitly).
        per_study: the plan's labels are ``--per-study`` labels (a study archived under another
            label is refused).

    Returns:
        One result per planned session, in the plan's order.

    Raises:
        ConflictError: a destination holds another study or subject; nothing was sent.
        DestinationBusyError: another upload kept a destination for longer than the claim waits.
    """
    with steps.claim([target for target, _ in plan]):
        checked = [
            steps.check_destination(target, files[0].study_uid, allow_other_study, per_study) for target, files in plan
        ]
        sessions: list[tuple[SessionResult, list[DicomFile], frozenset[str]]] = []
        for (target, before), (_, files) in zip(checked, plan, strict=True):
            session = SessionResult(
                study_uid=files[0].study_uid, target=target, files=len(files), bytes=sum(f.size for f in files)
            )
            started = time.monotonic()
            if gradual:
                session.gradual = steps.send_instances(target, files)
            else:
                session.batches = sorted(steps.send_batches(target, files), key=lambda b: b.index)
                # A session de-identified as it was sent (``deidentify.StreamedDeidentification``):
                # from here on, its files are the rewritten instances sent, less those refused.
                files = as_sent(files)
                session.files, session.bytes = len(files), sum(f.size for f in files)
            session.seconds = time.monotonic() - started
            if session.awaits_archiving:
                steps.archive_now(target, session.study_uid, session.uris, session.requests_in_doubt)
            if verify and session.uploaded:
                session.verify = steps.verify(target, files, before)
                if _delivery_disproved(session.verify):
                    steps.forget_delivered(target)
            sessions.append((session, files, before))
        if not verify:
            for session, _, before in sessions:
                session.parked = steps.look_for_parked(session.target, session.study_uid, before)
                if session.parked:  # what the journal lists is parked, not in the session
                    steps.forget_delivered(session.target)
    return [session for session, _, _ in sessions]


def _delivery_disproved(verify: VerifyResult) -> bool:
    """Verification found the session short of what the journal lists as delivered, or parked.

    Then the journal's record goes and the next run sends every file again. Otherwise it stays:
    verified, a re-run of the same files sends nothing new and verifies again (as a C-STORE
    re-run does); still at work when the wait ran out (XNAT receiving, building or archiving what
    was sent), the re-run sends nothing again and verifies — forgotten, it would send every file
    again, and after XNAT archived the session meanwhile the copies would park in the prearchive.
    Either way the re-run trusts the journal only while XNAT still holds the study
    (``session.resume_state``), and a file changed since is sent again.

    Returns:
        True when the journal's record of the session must be forgotten.
    """
    still_at_work = verify.processing or verify.uri is None
    return not verify.ok and (bool(verify.parked) or not still_at_work)
