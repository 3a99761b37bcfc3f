"""What to do, in a flow run operator's terms: the run's Blocks, parameters and deployments.

The library's errors carry facts (``XnatError.reason``, status, URL, the server's message) and a
hint any reader understands; ``for_operator`` replaces the hint where the operator of a flow run
acts otherwise than a person at the command line would (a Block's field instead of a flag, a run
parameter instead of an option). Tasks raise through ``speaks_to_operator`` and flows end with
``flows.failures.failed_run``, so every message a run shows is worded here, once, at the boundary;
nothing below the Prefect layer knows who reads it. The command line has its own table
(``cli.hints``).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from xnat_flows.client.errors import (
    AuthenticationError,
    UnreachableError,
    UnsupportedServerError,
    XnatConnectionError,
    XnatError,
    reworded,
)
from xnat_flows.transfer.cstore.errors import DicomNetworkError
from xnat_flows.transfer.scan import IncompleteExportError

# Where a prearchive session's status is seen, and how a CONFLICT entry is archived, from a run.
STATUS_SHOWN_BY = "XNAT's prearchive page (Upload > Go To Prearchive)"
ARCHIVE_CONFLICT_WITH = (
    "find it in the project's prearchive (XNAT: Upload > Go To Prearchive) and archive it with the "
    "archive-prearchive deployment, overwrite 'delete'"
)

CHECK_DELIVERED_WITH = "give the run XNAT credentials"

_BLOCK_URL = (
    "Check the URL in the run's xnat-credentials Block, the worker's network and (for TLS errors) the Block's CA bundle"
)

BY_REASON: dict[str, str] = {
    "unknown-project": "Check the project in the run's parameters (case-sensitive), or ask an XNAT admin to create it",
    "no-password": "Pick an xnat-credentials Block (with user and password) in the run's connection parameter, or "
    "give the Block of this deployment a user and password",
    "session-ended": "Give the run's xnat-credentials Block a user and password, so the run can log in again",
    "no-url": "Pick an xnat-credentials Block in the run's connection parameter (or redeploy with "
    "XNAT_CREDENTIALS_BLOCK naming one)",
    "ca-bundle": "Point the CA bundle of the run's xnat-credentials Block at a PEM file on the worker host",
    "unknown-profile": "Pick an xnat-credentials Block in the run's connection parameter instead of a profile",
    "archive-wait-timeout": "Check the project's prearchive (XNAT: Upload > Go To Prearchive) for a session stuck in "
    "RECEIVING, CONFLICT or ERROR, or give the run a longer verify timeout.",
    "prearchive-still-building": "XNAT builds a session once no file has arrived for a while; give the run a longer "
    "wait_seconds or check the upload.",
    "prearchive-conflict": "Choose how to merge it in the run's overwrite parameter: 'append' adds scans and files, "
    "'delete' also replaces overlapping files",
    "prearchive-session-missing": "Look up the right timestamp and folder name in the project's prearchive (XNAT: "
    "Upload > Go To Prearchive) and give them in the run's session parameter.",
    "import-redirected": "An authentication or proxy problem (a login page or single sign-on in front of XNAT): "
    "check that the URL in the run's xnat-credentials Block is XNAT's base URL and that its user and password work",
    "several-studies": "Upload each study as its own session: set per_study in the request, or point source_dir at "
    "one study's directory",
    "other-subject": "Check the request's subject: to add to that session give its subject, to keep this upload "
    "apart give it a session label of its own",
    "per-study-other-label": "Set the request's session to {label} (with per_study) to complete that session",
    "other-subject-receiving": "Check the request's subject, or give this upload a session label of its own",
    "other-study": "Choose a session label of its own (the request's session, or per_study), or, if the two studies "
    "must share one session, set allow_other_study in the request",
    "receiver-port": "Check the port in the run's receiver parameter or its xnat-dicom-receiver Block (XNAT's "
    "receiver is usually 8104, the DICOM standard port is 104) and that the receiver is running",
    "called-aet": "Set called_aet in the run's receiver parameter (or its xnat-dicom-receiver Block) to the "
    "receiver's own AE title (XNAT lists its receivers at /xapi/dicomscp; the default is XNAT)",
    "no-echo": "The send-dicom flow checks the receiver with C-ECHO before sending: use a receiver that answers it, "
    "or send from the command line without the check",
    "no-dicom-files": "Point the request's source_dir at the folder that holds the DICOM export",
    "no-anon-script": "Turn off the request's de-identification 'XNAT's own scripts', or give a script or the "
    "Basic Profile",
    "identifiers-survive": "The run's anon-check artifact lists what survives: change the rules, or list what the "
    "site keeps on purpose in the request's deidentify.allow (the anon-check task: its allow)",
}

BY_CLASS: dict[type[XnatError], str] = {
    AuthenticationError: "Check the user name and password in the xnat-credentials Block of the run's connection "
    "parameter (Prefect UI: Blocks), or pick another Block; if the account has too many open sessions, ask an admin "
    "to end them",
    XnatConnectionError: _BLOCK_URL,
    UnreachableError: _BLOCK_URL,
    UnsupportedServerError: "Upgrade XNAT, or upload through the prearchive instead (direct_archive: false in the "
    "request)",
    IncompleteExportError: "Wait until the export has finished writing and run again; to send the other files "
    "without the cut ones, set skip_truncated in the request",
    DicomNetworkError: "Check the host, port and AE title in the run's receiver parameter or its "
    "xnat-dicom-receiver Block (XNAT: Administer > Site Administration > DICOM SCP)",
}


def operator_hint(exc: XnatError) -> str:
    """The hint for a flow run's operator.

    By the error's reason, else by its class when the hint is the class's own, else the hint the
    error carries.

    Args:
        exc: The error.

    Returns:
        The hint in the terms of a run's Blocks and parameters.
    """
    return reworded(exc, BY_REASON, BY_CLASS)


def for_operator(exc: XnatError) -> XnatError:
    """``exc`` with its hint in a flow run operator's terms (the same error, for raising on).

    Args:
        exc: The error.

    Returns:
        ``exc``, its hint replaced.
    """
    exc.hint = operator_hint(exc)
    return exc


class _SayFailuresOnce(logging.Filter):
    """Prefect's lines that repeat or bury the failure of one of our errors.

    The task's and the run's final state already say it in one line each:

    * the final "Finished in state Failed(...)" of a flow run is raised to ERROR (Prefect logs it
      at INFO: a log view filtered to errors showed nothing of a failed run);
    * "Task run failed with exception ... - Retries are exhausted" (or, for a task without retries,
      "Task run failed with exception ...") and its traceback: the task's "Finished in state
      Failed(...)" line says the same, at ERROR, and the "Retry n/m" lines before it show the retries;
    * "Engine execution exited with unexpected exception" and its ~70-line traceback, which a
      worker's engine logs when it re-raises the error of a run that already failed with it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if record.levelno < logging.ERROR and message.startswith("Finished in state Failed"):
            record.levelno, record.levelname = logging.ERROR, logging.getLevelName(logging.ERROR)
        known = record.exc_info is not None and isinstance(record.exc_info[1], XnatError)
        repeat = message == "Engine execution exited with unexpected exception" or message.startswith(
            "Task run failed with "
        )
        return not (known and repeat)


_filter = _SayFailuresOnce()
_filter_lock = threading.Lock()


def say_failures_once() -> None:
    """Install ``_SayFailuresOnce`` on Prefect's task-run and flow-run loggers.

    Once per process; called where one of our errors first meets Prefect: a task's boundary, a
    flow's final state.
    """
    with _filter_lock:
        for name in ("prefect.task_runs", "prefect.flow_runs"):
            logger = logging.getLogger(name)
            if _filter not in logger.filters:
                logger.addFilter(_filter)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def speaks_to_operator(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """A task body whose ``XnatError`` leaves worded for the flow run's operator (``for_operator``).

    Prefect logs and stores the message as the task's state when the exception leaves the task.

    Args:
        fn: The task's function.

    Returns:
        The wrapped function.
    """

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except XnatError as exc:
            say_failures_once()
            for_operator(exc)
            raise

    return wrapper
