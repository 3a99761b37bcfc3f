"""Where C-STORE'd studies landed in XNAT's archive.

Found by StudyInstanceUID, since a C-STORE names no session (XNAT's routing decides the project,
subject and label), and complete once the session holds at least as many files as instances were
sent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from xnat_flows.client.archive import WaitTimeoutError, archived_studies
from xnat_flows.transfer.cstore.results import ArchivedStudy

if TYPE_CHECKING:
    from xnat_flows.client.client import XnatClient

log = logging.getLogger(__name__)


def wait_for_archived_studies(
    client: XnatClient,
    instances: dict[str, int],
    project: str | None,
    timeout_seconds: float,
    poll_seconds: float = 2.0,
    on_wait: Callable[[str], None] | None = None,
) -> list[ArchivedStudy]:
    """Wait, bounded, until every sent study is an archived session holding all its instances.

    Args:
        client: A logged-in client of the XNAT behind the receiver.
        instances: Instances sent per StudyInstanceUID (as sent: de-identified UIDs).
        project: Look only in this project (the routing project); None: every project.
        timeout_seconds: How long to wait in all.
        poll_seconds: The pause between two looks.
        on_wait: Told, in words, how many studies are complete at each look (default: this module's log).

    Returns:
        The archived sessions, one per study, sorted by label.

    Raises:
        WaitTimeoutError: Not every study was complete in time (reason ``archive-wait-timeout``); the
            message says what was found.
    """
    notify = on_wait or log.info
    deadline = time.monotonic() + timeout_seconds
    while True:
        found = _archived_studies(client, project, instances)
        complete = [s for s in found.values() if s.files_found >= s.instances_sent]
        if len(complete) == len(instances):
            return sorted(complete, key=lambda s: s.label)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            done = {s.study_uid for s in complete}
            missing = {uid: n for uid, n in instances.items() if uid not in done}
            shown = "; ".join(
                f"{uid}: {found[uid].files_found}/{n} files in {found[uid].experiment_id}"
                if uid in found
                else f"{uid}: no archived session"
                for uid, n in list(missing.items())[:5]
            )
            raise WaitTimeoutError(
                f"{len(missing)} of {len(instances)} sent studies not complete in the archive after "
                f"{timeout_seconds:g} s ({shown})",
                hint="Check the project's prearchive for a session stuck in RECEIVING, CONFLICT or ERROR.",
                reason="archive-wait-timeout",
            )
        notify(f"{len(complete)} of {len(instances)} studies archived; waiting ({remaining:.0f} s left)")
        time.sleep(min(poll_seconds, remaining))


def _archived_studies(client: XnatClient, project: str | None, instances: dict[str, int]) -> dict[str, ArchivedStudy]:
    """The archived sessions of the sent studies, with the files their scans hold."""
    found: dict[str, ArchivedStudy] = {}
    for uid, row in archived_studies(client, project).items():
        if uid not in instances:
            continue
        experiment_id = row.get("ID") or ""
        files = sum(
            int(resource.get("file_count") or 0)
            for scan in client.get_rows(f"/data/experiments/{experiment_id}/scans")
            for resource in client.get_rows(f"/data/experiments/{experiment_id}/scans/{scan.get('ID')}/resources")
        )
        found[uid] = ArchivedStudy(
            study_uid=uid,
            project=row.get("project") or "",
            subject=row.get("subject_label") or None,
            label=row.get("label") or experiment_id,
            experiment_id=experiment_id,
            uri=f"/data/experiments/{experiment_id}",
            instances_sent=instances[uid],
            files_found=files,
        )
    return found
