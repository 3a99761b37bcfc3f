"""How our flows fail: what failed, against which server and Block, and what to do.

Said once, at ERROR, with no traceback for errors we know.

Prefect logs an exception that leaves a flow function with its traceback ("Encountered exception
during execution"), and again as the final state; the task that raised it has already logged it,
and a parent flow that re-raises logs it once more. For our own errors (``XnatError``) a flow
returns ``failed_run(exc)`` instead (Prefect's idiom of returning a final state): the run ends
Failed with one line as its state message (what the runs list, the run page and the "run failed"
notification show) and a caller of the flow (a parent flow, a test, ``.result()``) still gets
``exc`` raised.

Lines of Prefect's own would still repeat or bury it: ``tasks.hints.say_failures_once`` filters
them (see there). Errors we do not know (bugs) keep Prefect's logging and traceback.
"""

from __future__ import annotations

from typing import Any

from prefect.context import FlowRunContext
from prefect.states import Failed, State

from xnat_flows.client.errors import XnatError
from xnat_flows.client.urls import public_base_url
from xnat_flows.tasks.hints import for_operator, say_failures_once
from xnat_flows.transfer.cstore.errors import DicomNetworkError


def failed_run(exc: BaseException) -> Any:
    """The final state of a flow run stopped by ``exc``.

    Failed, with one line saying what failed, against which server and Block (read from the run's
    ``connection`` and ``receiver`` parameters), and what to do, in the operator's terms.

    Typed ``Any`` so that a flow keeps its result type: whoever calls the flow gets the result or,
    from this state, ``exc`` raised (only ``return_state=True`` callers see the state itself).

    Args:
        exc: What stopped the run.

    Returns:
        A Failed state carrying ``exc`` and the line for the operator (any exception that is not an
        ``XnatError``: its type and message).
    """
    say_failures_once()
    if not isinstance(exc, XnatError):
        return Failed(message=f"{type(exc).__name__}: {exc}", data=exc)
    for_operator(exc)
    text = exc.message
    if exc.server_message and exc.server_message not in text:
        text += f" — XNAT said: {exc.server_message}"
    where = _against(exc)
    if where:
        text += f" [{where}]"
    if exc.hint:
        text += f". What to do: {exc.hint}"
    state: State[Any] = Failed(message=f"{type(exc).__name__}: {text}", data=exc)
    return state


def _against(exc: XnatError) -> str:
    """The server (and Block) the run worked against, from its parameters.

    The DICOM receiver for a C-STORE error, else the XNAT of its connection.

    Returns:
        The server and Block in words, or "" when they cannot be told.
    """
    context = FlowRunContext.get()
    parameters: dict[str, Any] = dict(context.parameters or {}) if context is not None else {}
    try:
        if isinstance(exc, DicomNetworkError) and parameters.get("receiver") is not None:
            return _receiver(parameters["receiver"])
        return _xnat(parameters.get("connection"), exc.url)
    except Exception:  # noqa: BLE001 - naming the server must never hide the failure itself
        return ""


def _xnat(connection: Any, url: str | None) -> str:
    block = getattr(connection, "credentials", None)
    if block is not None:
        name = getattr(block, "_block_document_name", None)
        named = f"xnat-credentials Block {name!r}" if name else "an unsaved xnat-credentials Block"
        return f"XNAT {public_base_url(block.url)} via {named}"
    given = getattr(connection, "url", "") or url
    if given:
        return f"XNAT {public_base_url(given)} with credentials from the worker's environment or profile (no Block)"
    return "no xnat-credentials Block in the run's connection parameter"


def _receiver(target: Any) -> str:
    from xnat_flows.tasks.cstore import receiver_address

    address = receiver_address(target)
    block = getattr(target, "block", None)
    name = getattr(block, "_block_document_name", None) if block is not None else None
    named = f", xnat-dicom-receiver Block {name!r}" if name else ""
    return f"DICOM receiver {address.called_aet}@{address.host}:{address.port}{named}"
