"""C-STORE with resume: each instance is recorded in the upload journal as the receiver
confirms it, so an interrupted send (Ctrl-C, kill -9, a crash) is completed by running it again,
which sends only what was not confirmed.

Why this matters with XNAT: instances that reached XNAT may already be archived when the re-run
comes. Sending one of them again puts the whole re-run into a new prearchive entry that XNAT
refuses to merge ("Session already contains a scan ... with the same UID and number") and
leaves in CONFLICT. So confirmed instances are never sent again, also after a complete send (the
journal keeps them), and instances that were in flight when a run died (at most one per
association: sent, not confirmed) are reported as *in doubt* when a re-run sends them again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xnat_flows.client.errors import for_reader
from xnat_flows.transfer.dicom_inputs import RoutingOverride
from xnat_flows.transfer.dicom_results import SendResult
from xnat_flows.transfer.dicom_send import deidentify_for_send, routing_variables, store_instances
from xnat_flows.transfer.journal import InstanceLog, ResumeState, UploadJournal
from xnat_flows.transfer.scan import DicomFile

if TYPE_CHECKING:
    from xnat_flows.transfer.deidentify import Anonymizer


def journal_key(host: str, port: int, called_aet: str, routing: RoutingOverride | None = None) -> str:
    """Where a send goes, for the upload journal: the receiver, and the routing if any (the same
    files routed elsewhere are a different delivery)."""
    return f"dicom://{called_aet}@{host}:{port}" + (f"#{routing.comment()}" if routing else "")


@dataclass
class ResumedSend:
    """A resumable send: this run's result, what earlier runs had delivered, and what is in doubt."""

    result: SendResult
    resumed: int  # instances an earlier run delivered (confirmed by the receiver): not sent again
    in_flight_before: list[Path] = field(default_factory=list)  # in flight when an earlier run stopped: sent again
    journal_path: Path | None = None

    @property
    def in_doubt(self) -> list[Path]:
        """Instances the receiver may hold twice: in flight when an earlier run stopped, or sent
        again in this run after an attempt that got no answer."""
        earlier = set(self.in_flight_before)
        return self.in_flight_before + [p for p in self.result.sent_again_after_no_answer if p not in earlier]


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
    anonymizer: Anonymizer | None = None,
    anon_variables: Mapping[str, str] | None = None,
    **options: Any,
) -> ResumedSend:
    """``store_instances`` that skips the instances an earlier run delivered to the same receiver
    (and routing), and records each instance in ``journal`` as it goes out and as it is confirmed.
    With ``anonymizer`` the journal records the de-identified instances (``store_instances``).
    """
    variables = anon_variables if anon_variables is not None else routing_variables(routing)
    files, refused = deidentify_for_send(files, anonymizer, variables)
    resume = ResumeState(journal, journal_key(host, port, called_aet, routing))
    in_flight = journal.in_flight(resume.destination)
    pending = resume.pending(files)
    in_doubt = [f.path for f in pending if resume.digest(f) in in_flight]
    with journal.open_log(resume.destination) as log:
        result = store_instances(
            pending,
            host=host,
            port=port,
            called_aet=called_aet,
            routing=routing,
            delivery_log=_JournalDeliveryLog(log, resume.digest),
            **options,
        )
    result.failed += refused
    return ResumedSend(result, len(files) - len(pending), in_doubt, journal.path_for(resume.destination))


def in_doubt_warning(send: ResumedSend) -> str:
    """What to check, and do, when instances the receiver may already have held were sent again."""
    in_doubt = send.in_doubt
    examples = ", ".join(str(path) for path in in_doubt[:5]) + (", ..." if len(in_doubt) > 5 else "")
    again_now = len(in_doubt) - len(send.in_flight_before)
    causes = []
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
        '... with the same UID"): '
        + for_reader(
            "find it with `xnat-flows prearchive list -P PROJECT` and archive it with "
            "`xnat-flows prearchive archive PROJECT TIMESTAMP NAME --overwrite delete`",
            "find it in the project's prearchive (XNAT: Upload > Go To Prearchive) and archive it with the "
            "archive-prearchive deployment, overwrite 'delete'",
        )
        + " (the copies are identical). Otherwise there is nothing to do."
    )
