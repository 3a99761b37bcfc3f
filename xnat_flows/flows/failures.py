"""How our flows fail: with the cause said once, in one line, and no traceback for errors we know.

Prefect logs an exception that leaves a flow function with its traceback ("Encountered exception
during execution"), and again as the final state; the task that raised it has already logged it,
and a parent flow that re-raises logs it once more. For our own errors (``XnatError``: the message
says what went wrong and what to do) a flow returns ``failed_run(exc)`` instead (Prefect's idiom
of returning a final state): the run ends Failed with that one line as its state message (what
the runs list, the run page and the "run failed" notification show), the traceback stays out of
the log, and a caller of the flow (a parent flow, a test, ``.result()``) still gets ``exc`` raised.
Errors we do not know (bugs) are still raised, so their traceback is logged once.
"""

from __future__ import annotations

from typing import Any

from prefect.states import Failed, State


def failed_run(exc: BaseException) -> Any:
    """The final state of a flow run stopped by ``exc``: Failed, ``Type: message`` as its message.

    Typed ``Any`` so that a flow keeps its result type: whoever calls the flow gets the result or,
    from this state, ``exc`` raised (only ``return_state=True`` callers see the state itself)."""
    state: State[Any] = Failed(message=f"{type(exc).__name__}: {exc}", data=exc)
    return state
