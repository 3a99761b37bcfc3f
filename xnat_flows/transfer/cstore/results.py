"""What a C-STORE reports: per instance, per association, and for the whole send.

One type per concept, each a plain dataclass: the sending threads build them, and the send path
imports no pydantic (its start-up is part of C-STORE throughput, docs/cstore.md). pydantic still
validates and serialises them (``pydantic.TypeAdapter``), which is what Prefect's JSON result
serializer does with a flow's return value; pickle, Prefect's default, needs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from xnat_flows.transfer.scan import SkippedFile

RECEIVER_BUSY_STATUSES = (0xA700, 0xA7FF)  # Refused: Out of Resources (PS3.4 Annex B)


def is_stored(status: int) -> bool:
    """Whether a C-STORE status means the instance was stored.

    Checked per instance, so the common 0x0000 is answered without importing pynetdicom.

    Args:
        status: The DIMSE status of the C-STORE response.

    Returns:
        True for Success or Warning (PS3.4 Annex B), else False.
    """
    if status == 0x0000:
        return True
    from pynetdicom.status import code_to_category

    return code_to_category(status) in ("Success", "Warning")


def status_meaning(status: int | None) -> str:
    """A C-STORE status in words.

    Args:
        status: The DIMSE status, or None when no response came.

    Returns:
        Its category and text (PS3.4 Annex B), or why there was no status.
    """
    if status is None:
        return "no response: association aborted, dropped, or no answer within the DIMSE timeout"
    from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, code_to_category

    category, text = STORAGE_SERVICE_CLASS_STATUS.get(status, (code_to_category(status), "unknown status"))
    return f"{category}: {text}" if text else category


@dataclass(frozen=True)
class InstanceOutcome:
    """One instance's fate: sent (the receiver answered Success or Warning), failed or skipped."""

    path: Path
    sop_instance_uid: str
    size: int
    status: int | None  # the DIMSE status of the last attempt; None when no response came
    attempts: int
    reason: str = ""  # for skipped/failed: what went wrong, in words
    retryable: bool = False  # failed for a reason that may heal (receiver down, busy, dropped association)
    # attempts that went out whole and got no answer (dropped association, restarted receiver): the
    # receiver may hold a copy from one of them besides the one it confirmed
    unanswered_attempts: int = 0

    @property
    def status_hex(self) -> str:
        """The status as ``0xC000``, or ``none`` when no response came."""
        return "none" if self.status is None else f"0x{self.status:04X}"

    @property
    def meaning(self) -> str:
        """The status in words (PS3.4 Annex B)."""
        return status_meaning(self.status)


@dataclass(frozen=True)
class AssociationSummary:
    """What one association carried, and how it ended."""

    worker: int
    group: int
    sent: int
    failed: int
    seconds: float
    ended: str  # "released", "aborted (no response)", "released after failure status", "refused: ..."


@dataclass(frozen=True)
class ArchivedStudy:
    """A session in XNAT's archive that holds the instances of one sent study.

    A C-STORE names no session: XNAT's routing decides the project and labels, so it is found by
    StudyInstanceUID.
    """

    study_uid: str
    project: str
    subject: str | None
    label: str
    experiment_id: str
    uri: str
    instances_sent: int
    files_found: int


@dataclass
class SendResult:
    """The result of a C-STORE.

    What ``send.store_instances`` did over its associations, what an earlier run had delivered
    (``resume.store_instances_resumable``), what the folder held besides DICOM and, when asked,
    where the studies landed in XNAT (``sequence.send_cstore``). The CLI prints it (text and
    ``--json``) and the ``send-dicom`` flow returns it.
    """

    sent: list[InstanceOutcome] = field(default_factory=list)
    failed: list[InstanceOutcome] = field(default_factory=list)
    skipped: list[InstanceOutcome] = field(default_factory=list)  # contexts the receiver did not accept
    associations: list[AssociationSummary] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 1
    mode: str = "in-process"
    # the resume journal (``resume``)
    resumed: int = 0  # instances an earlier run delivered (confirmed by the receiver): not sent again
    in_flight_before: list[Path] = field(default_factory=list)  # in flight when an earlier run stopped: sent again
    journal_path: Path | None = None
    # journaled as delivered, sent again since XNAT could not be asked whether it still holds them
    unchecked: list[Path] = field(default_factory=list)
    unchecked_reason: str = ""  # why XNAT could not be asked
    # journaled as delivered, sent again since XNAT no longer holds their study (deleted, or another XNAT)
    forgotten: int = 0
    # the folder (``sequence``): files found that are not sent (not DICOM, or unreadable)
    not_sent: list[SkippedFile] = field(default_factory=list)
    conflicts: list[list[str]] = field(
        default_factory=list
    )  # relative paths of different files of one SOP Instance UID
    # the archive (``sequence`` with verify): where each study landed; ``verified`` once every one did
    archived: list[ArchivedStudy] = field(default_factory=list)
    verified: bool = False

    @property
    def bytes_sent(self) -> int:
        """Bytes of the instances stored."""
        return sum(o.size for o in self.sent)

    @property
    def instances_per_second(self) -> float:
        """Instances stored per second of the send."""
        return len(self.sent) / self.seconds if self.seconds > 0 else 0.0

    @property
    def unreadable(self) -> list[SkippedFile]:
        """Files or folders under the source that could not be read.

        They may hold DICOM that was not sent, so they fail the send (a re-run after fixing them
        completes it).
        """
        return [s for s in self.not_sent if s.unreadable]

    @property
    def in_doubt(self) -> list[Path]:
        """Instances the receiver may hold twice.

        In flight when an earlier run stopped, journaled as delivered without XNAT to confirm it, or
        sent again in this run after an attempt that got no answer.
        """
        earlier = list(dict.fromkeys(self.in_flight_before + self.unchecked))
        seen = set(earlier)
        return earlier + [p for p in self.sent_again_after_no_answer if p not in seen]

    @property
    def ok(self) -> bool:
        """Every instance stored, every file read, and none in doubt unless the archive holds every one.

        Instances in doubt pass only once the archive was verified to hold every instance sent. The
        one formula of the CLI's exit code, its ``--json`` ``ok`` and the flow's success.
        """
        stored = not self.failed and not self.skipped and not self.unreadable
        return stored and (not self.in_doubt or self.verified)

    @property
    def retryable_failures(self) -> list[InstanceOutcome]:
        """Failed instances a later attempt may deliver (the receiver was down, busy or dropped the association).

        The others fail the same way until the file or the receiver's configuration changes.
        """
        return [o for o in self.failed if o.retryable]

    @property
    def sent_again_after_no_answer(self) -> list[Path]:
        """Instances confirmed on a retry after an attempt that went out whole and got no answer.

        The receiver may have stored that attempt too. With XNAT this matters when it archived the
        session in between: the retry then waits in a new prearchive entry in CONFLICT ("Session
        already contains a scan ... with the same UID"), so such a send must be checked, not
        reported as a plain success.
        """
        return [o.path for o in self.sent if o.unanswered_attempts]

    @property
    def warnings(self) -> list[InstanceOutcome]:
        """Instances the receiver stored with a Warning status: stored, but perhaps not as sent, so said apart.

        PS3.4 Annex B, e.g. 0xB000 coercion of data elements, 0xB006 elements discarded, 0xB007 data
        set does not match the SOP class.
        """
        return [o for o in self.sent if o.status not in (None, 0x0000)]

    @property
    def unsent_paths(self) -> list[Path]:
        """What a re-run has to send: failed and skipped instances."""
        return [o.path for o in self.failed + self.skipped]

    def summary(self) -> str:
        """One line: counts, bytes, time, rate and associations."""
        warned = f" ({len(self.warnings)} with a warning status)" if self.warnings else ""
        return (
            f"{len(self.sent)} sent{warned}, {len(self.failed)} failed, "
            f"{len(self.skipped)} not accepted by the receiver (SOP class or transfer syntax), "
            f"{self.bytes_sent / 1e6:.1f} MB in {self.seconds:.1f} s ({self.instances_per_second:.0f} instances/s, "
            f"{self.workers} association(s), {self.mode})"
        )


# C-STORE progress: called with (instances finished, total) as each instance is answered. (The REST
# uploads report a fuller snapshot, transfer.progress.Progress.)
InstanceCountCallback = Callable[[int, int], None]
