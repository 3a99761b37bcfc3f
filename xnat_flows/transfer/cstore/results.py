"""What a C-STORE reports: per instance, per association, and for the whole send."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

RECEIVER_BUSY_STATUSES = (0xA700, 0xA7FF)  # Refused: Out of Resources (PS3.4 Annex B)


def is_stored(status: int) -> bool:
    """Success or Warning (PS3.4 Annex B: the instance was stored); checked per instance, so the
    common 0x0000 is answered without importing pynetdicom."""
    if status == 0x0000:
        return True
    from pynetdicom.status import code_to_category

    return code_to_category(status) in ("Success", "Warning")


def status_meaning(status: int | None) -> str:
    """Category and text of a C-STORE status (PS3.4 Annex B), or why there was none."""
    if status is None:
        return "no response: association aborted, dropped, or no answer within the DIMSE timeout"
    from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, code_to_category

    category, text = STORAGE_SERVICE_CLASS_STATUS.get(status, (code_to_category(status), "unknown status"))
    return f"{category}: {text}" if text else category


@dataclass(frozen=True)
class InstanceOutcome:
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
        return "none" if self.status is None else f"0x{self.status:04X}"

    @property
    def meaning(self) -> str:
        return status_meaning(self.status)


@dataclass(frozen=True)
class AssociationSummary:
    worker: int
    group: int
    sent: int
    failed: int
    seconds: float
    ended: str  # "released", "aborted (no response)", "released after failure status", "refused: ..."


@dataclass
class SendResult:
    sent: list[InstanceOutcome] = field(default_factory=list)
    failed: list[InstanceOutcome] = field(default_factory=list)
    skipped: list[InstanceOutcome] = field(default_factory=list)
    associations: list[AssociationSummary] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 1
    mode: str = "in-process"

    @property
    def bytes_sent(self) -> int:
        return sum(o.size for o in self.sent)

    @property
    def instances_per_second(self) -> float:
        return len(self.sent) / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped

    @property
    def retryable_failures(self) -> list[InstanceOutcome]:
        """Failed instances a later attempt may deliver (the receiver was down, busy or dropped
        the association); the others fail the same way until the file or the receiver's
        configuration changes."""
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
        """Instances the receiver stored with a Warning status (PS3.4 Annex B: e.g. 0xB000
        coercion of data elements, 0xB006 elements discarded, 0xB007 data set does not match the
        SOP class): stored, but perhaps not as sent, so said apart."""
        return [o for o in self.sent if o.status not in (None, 0x0000)]

    @property
    def unsent_paths(self) -> list[Path]:
        """What a re-run has to send: failed and skipped instances."""
        return [o.path for o in self.failed + self.skipped]

    def summary(self) -> str:
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
