"""Retry and concurrency policy shared by every XNAT task."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple, TypedDict

from prefect import Task
from prefect.cache_policies import CachePolicy
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State, TaskRun
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound

from xnat_flows.client.errors import XnatConnectionError, XnatError
from xnat_flows.client.urls import server_host


class ResultOptions(TypedDict):
    """``@task`` options on caching and results, typed so that ``@task(**options)`` matches Prefect's signature.

    Kept apart from ``RetryOptions`` so that the two combine.
    """

    cache_policy: CachePolicy
    persist_result: bool


class RetryOptions(TypedDict):
    """``@task`` options on retries, typed like ``ResultOptions``."""

    retries: int
    retry_delay_seconds: float | list[float] | Callable[[int], list[float]]
    retry_jitter_factor: float
    retry_condition_fn: Callable[[Task[..., Any], TaskRun, State[Any]], bool]


def retry_unless_permanent(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect ``retry_condition_fn``: retry only failures that a later attempt can fix.

    The error decides, through its ``retryable`` attribute (the same one the client's request
    retries read; see the tree in ``client/errors.py``). The library already retries each request
    with backoff; a task retry covers a longer outage. Permanent answers (bad labels, 403, 404,
    XNAT's permanent 400 messages, bad local input, an unknown host) fail at once with the server's
    message instead of burning retries; a refused connection (XNAT down) is retried, as it is
    transient at the task's time scale.

    Args:
        task: The task (Prefect's argument; unused).
        task_run: The task run (Prefect's argument; unused).
        state: The failed attempt's state, whose exception decides.

    Returns:
        True to retry.
    """
    try:
        state.result()
    except XnatConnectionError as exc:
        # A refused connection: XNAT down or restarting. The client does not retry it (a command
        # fails at once); a task retry, seconds to minutes later, may find it back up.
        return exc.retryable or exc.refused
    except XnatError as exc:
        return exc.retryable
    except Exception:  # noqa: BLE001 - any other failure is not worth a retry
        return False
    return False


def upload_limit_name(url: str) -> str:
    """Global concurrency limit that caps concurrent uploads to one XNAT server across all runs.

    Args:
        url: The XNAT server's URL.

    Returns:
        ``xnat-uploads:HOST:PORT``.
    """
    return f"xnat-uploads:{server_host(url)}"


class ServerCheck(NamedTuple):
    """What a flow learns about its server before uploading: its URL, version and upload limit."""

    url: str  # the server's base URL as resolved (argument, Block, environment or profile)
    version: str | None
    concurrency_limit: str | None  # the global limit to hold while uploading, when the site has one


def _existing_limit(name: str) -> int | None:
    """The slot count of a global concurrency limit, or None when the site has not created it."""
    try:
        with get_client(sync_client=True) as client:
            return int(client.read_global_concurrency_limit_by_name(name).limit)
    except ObjectNotFound:
        return None


def existing_upload_limit(url: str) -> str | None:
    """The name of the server's upload limit if it exists (so tasks do not warn on every call).

    Args:
        url: The XNAT server's URL.

    Returns:
        The limit's name, or None when the site has not created it.
    """
    name = upload_limit_name(url)
    return name if _existing_limit(name) is not None else None


def receiver_limit_name(host: str, port: int) -> str:
    """Global concurrency limit that caps concurrent C-STORE associations to one DICOM receiver.

    Args:
        host: The receiver's host.
        port: The receiver's port.

    Returns:
        ``xnat-cstore:HOST:PORT``.
    """
    return f"xnat-cstore:{host}:{port}"


class ReceiverLimit(NamedTuple):
    """A receiver's global concurrency limit: its name and size."""

    name: str
    slots: int  # the limit's size: no run may hold more associations than this


def existing_receiver_limit(host: str, port: int) -> ReceiverLimit | None:
    """The receiver's association limit, when the site created one.

    Args:
        host: The receiver's host.
        port: The receiver's port.

    Returns:
        The limit's name and slots, or None.
    """
    name = receiver_limit_name(host, port)
    slots = _existing_limit(name)
    return ReceiverLimit(name, slots) if slots is not None else None


@contextmanager
def upload_slot(limit_name: str | None) -> Iterator[None]:
    """Hold one slot of the XNAT server's global concurrency limit while an upload runs.

    Sites cap a server with ``prefect gcl create xnat-uploads:HOST:PORT --limit 4``; every flow
    run on every worker then shares those slots. Without such a limit uploads are not throttled.

    Args:
        limit_name: The limit (``existing_upload_limit``), or None for none.

    Yields:
        Nothing: the slot is held until the block ends.
    """
    if limit_name is None:
        yield
        return
    with concurrency(limit_name, occupy=1, strict=True):
        yield


@contextmanager
def association_slots(limit: ReceiverLimit | None, workers: int) -> Iterator[int]:
    """Hold one slot of the receiver's limit per association.

    Sites cap a receiver with ``prefect gcl create xnat-cstore:HOST:PORT --limit 8``; a run asking
    for more associations than the whole limit is given the whole limit instead of waiting forever.

    Args:
        limit: The receiver's limit, or None for none.
        workers: Associations the run asks for.

    Yields:
        How many associations to open.
    """
    if limit is None:
        yield workers
        return
    occupy = max(1, min(workers, limit.slots))
    with concurrency(limit.name, occupy=occupy, strict=True):
        yield occupy


def processing_limit_name(url: str) -> str:
    """Global concurrency limit that caps concurrent processing steps (download, tool, attach) on one XNAT server.

    Args:
        url: The XNAT server's URL.

    Returns:
        ``xnat-processing:HOST:PORT``.
    """
    return f"xnat-processing:{server_host(url)}"


def existing_processing_limit(url: str) -> str | None:
    """The name of the server's processing limit if the site created one (``prefect gcl create``).

    Args:
        url: The XNAT server's URL.

    Returns:
        The limit's name, or None.
    """
    name = processing_limit_name(url)
    return name if _existing_limit(name) is not None else None
