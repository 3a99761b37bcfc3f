"""C-STORE with resume.

Each instance is recorded in the upload journal as the receiver confirms it, so an interrupted send
(Ctrl-C, kill -9, a crash) is completed by running it again, which sends only what was not
confirmed.

Why this matters with XNAT: instances that reached XNAT may already be archived when the re-run
comes. Sending one of them again puts the whole re-run into a new prearchive entry that XNAT
refuses to merge ("Session already contains a scan ... with the same UID and number") and
leaves in CONFLICT. So confirmed instances are never sent again, also after a complete send (the
journal keeps them), and instances that were in flight when a run died (at most one per
association: sent, not confirmed) are reported as *in doubt* when a re-run sends them again.

The journal is trusted only while XNAT still holds the study (``held``: the REST check of
``transfer.session.study_present``): after the session was deleted, or against a fresh XNAT at the
same address, its records are dropped and the instances sent again. Without a way to ask XNAT (no
login), the journaled instances are sent again too, and reported in doubt: a re-run never ends in
success on the strength of a record nobody could check.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xnat_flows.client.errors import XnatError
from xnat_flows.transfer.cstore.inputs import RoutingOverride
from xnat_flows.transfer.cstore.results import SendResult
from xnat_flows.transfer.cstore.send import deidentify_for_send, routing_variables, store_instances
from xnat_flows.transfer.journal import InstanceLog, ResumeState, UploadJournal
from xnat_flows.transfer.scan import DicomFile, read_file_header

log = logging.getLogger(__name__)

# StudyInstanceUID -> XNAT holds that study (archive, Direct-Archive or prearchive)
StudyHeldCheck = Callable[[str], bool]

if TYPE_CHECKING:
    from xnat_flows.transfer.deidentify import Anonymizer


def journal_key(host: str, port: int, called_aet: str, routing: RoutingOverride | None = None) -> str:
    """Where a send goes, for the upload journal (the same files routed elsewhere are a different delivery).

    Args:
        host: The receiver's host.
        port: The receiver's port.
        called_aet: The receiver's AE title.
        routing: The routing override, if any.

    Returns:
        The journal's destination key, ``dicom://AET@HOST:PORT`` plus ``#`` and the routing.
    """
    return f"dicom://{called_aet}@{host}:{port}" + (f"#{routing.comment()}" if routing else "")


class _JournalDeliveryLog:
    """``DeliveryLog`` onto an upload-journal log: digests of the files, written as they happen."""

    def __init__(self, log: InstanceLog, digest: Callable[[DicomFile], str]) -> None:
        self._log = log
        self._digest = digest

    def sending(self, file: DicomFile) -> None:
        self._log.sending(self._digest(file))

    def stored(self, file: DicomFile) -> None:
        self._log.stored(self._digest(file))

    def refused(self, file: DicomFile) -> None:
        self._log.refused(self._digest(file))


def store_instances_resumable(
    files: list[DicomFile],
    journal: UploadJournal,
    *,
    host: str,
    port: int,
    called_aet: str = "XNAT",
    routing: RoutingOverride | None = None,
    held: StudyHeldCheck | None = None,
    anonymizer: Anonymizer | None = None,
    anon_variables: Mapping[str, str] | None = None,
    **options: Any,
) -> SendResult:
    """``store_instances`` that skips the instances an earlier run delivered to the same receiver.

    It skips them, for the same routing, while XNAT still holds their study, and records each
    instance in ``journal`` as it goes out and as it is confirmed. With ``anonymizer`` the journal
    records the de-identified instances (``store_instances``).

    Args:
        files: The instances to send (from ``scan_directory``).
        journal: The upload journal (``UploadJournal()``: the profile's).
        host: The receiver's host.
        port: The receiver's port.
        called_aet: The receiver's AE title.
        routing: The routing override, if any (part of the journal's destination).
        held: Asks XNAT whether it holds a study (``transfer.session.study_present``); called only
            when the journal lists deliveries. None, or an ``XnatError`` from it: XNAT cannot be
            asked, so the journal is not trusted: its instances are sent again, in doubt.
        anonymizer: De-identify each instance as it is sent, or None.
        anon_variables: The script's variables (default: the routing's labels).
        **options: More ``store_instances`` options (calling_aet, workers, timeouts, progress...).

    Returns:
        The send's result with the resume's facts: ``resumed``, ``in_flight_before``,
        ``unchecked``, ``forgotten``, ``journal_path``.
    """
    variables = anon_variables if anon_variables is not None else routing_variables(routing)
    files, refused = deidentify_for_send(files, anonymizer, variables)
    destination = journal_key(host, port, called_aet, routing)
    resume = ResumeState(journal, destination)
    delivered = [f for f in files if resume.digest(f) in resume.done]
    unchecked: list[Path] = []
    unchecked_reason = "no login"
    forgotten = 0
    if delivered:
        try:
            gone = _not_held(delivered, held) if held is not None else None
        except XnatError as exc:  # not logged in, XNAT's REST API away
            gone, unchecked_reason = None, exc.message
        if gone is None:  # XNAT cannot be asked: the journal alone is no proof of delivery
            log.warning(
                "%d instances are journaled as delivered to %s, but XNAT cannot be asked whether it still "
                "holds them (%s): sending them again",
                len(delivered),
                destination,
                unchecked_reason,
            )
            unchecked = [f.path for f in delivered]
            resume = ResumeState(journal, destination, set())
        else:
            forgotten = len(gone)
            resume = ResumeState(journal, destination, resume.done - {resume.digest(f) for f in gone})
    in_flight = journal.in_flight(resume.destination)
    pending = resume.pending(files)
    in_doubt = [f.path for f in pending if resume.digest(f) in in_flight]
    with journal.open_log(resume.destination) as instance_log:
        result = store_instances(
            pending,
            host=host,
            port=port,
            called_aet=called_aet,
            routing=routing,
            delivery_log=_JournalDeliveryLog(instance_log, resume.digest),
            **options,
        )
    result.failed += refused
    result.resumed = len(files) - len(pending)
    result.in_flight_before = in_doubt
    result.journal_path = journal.path_for(resume.destination)
    result.unchecked = unchecked
    result.unchecked_reason = unchecked_reason if unchecked else ""
    result.forgotten = forgotten
    return result


def _not_held(delivered: list[DicomFile], held: StudyHeldCheck) -> list[DicomFile]:
    """The journaled instances whose study XNAT no longer holds (asked once per study)."""
    by_study: dict[str, list[DicomFile]] = {}
    for f in delivered:
        study = f.study_uid or _study_of(f)  # a file-meta scan leaves the study UID empty
        by_study.setdefault(study, []).append(f)
    gone: list[DicomFile] = []
    for study, instances in by_study.items():
        if not study or not held(study):
            log.warning(
                "the journal lists %d instances of study %s as delivered, but XNAT does not hold that study "
                "(deleted, or another XNAT at this address): sending them again",
                len(instances),
                study or "(unknown)",
            )
            gone.extend(instances)
    return gone


def _study_of(file: DicomFile) -> str:
    try:
        found = read_file_header(file.path, file.path.parent, file.path.stat())
    except OSError:
        return ""
    return found.study_uid if isinstance(found, DicomFile) else ""


def in_doubt_warning(
    send: SendResult,
    archive_with: str = "find it in the project's prearchive and archive it with overwrite 'delete'",
    check_with: str = "XNAT credentials let a re-run check them",
) -> str:
    """What to check, and do, when instances the receiver may already have held were sent again.

    Args:
        send: The send's result (its ``in_doubt`` instances and why each is in doubt).
        archive_with: How the reader finds and archives a prearchive entry, in the reader's terms
            (the CLI: its commands; a flow run: the prearchive page, deployments).
        check_with: How a re-run gets to check deliveries, in the reader's terms.

    Returns:
        The warning: the causes, up to five paths, and what to do.
    """
    in_doubt = send.in_doubt
    examples = ", ".join(str(path) for path in in_doubt[:5]) + (", ..." if len(in_doubt) > 5 else "")
    earlier = {*send.in_flight_before, *send.unchecked}
    again_now = sum(1 for path in in_doubt if path not in earlier)
    causes = []
    if send.unchecked:
        causes.append(
            f"{len(send.unchecked)} instance(s) an earlier run delivered could not be checked in XNAT "
            f"({send.unchecked_reason}; " + check_with + ")"
        )
    if send.in_flight_before:
        causes.append(f"{len(send.in_flight_before)} instance(s) were in flight when an earlier run stopped")
    if again_now:
        causes.append(
            f"{again_now} instance(s) got no answer on an attempt in this run (the association dropped or "
            "the receiver restarted)"
        )
    return (
        f"{' and '.join(causes)}, so the receiver may already "
        f"have held them; they were sent again ({examples}). If XNAT had archived that session before they "
        'came again, they wait in a prearchive entry in CONFLICT ("Session already contains a scan '
        '... with the same UID"): ' + archive_with + " (the copies are identical). Otherwise there is nothing to do."
    )
