"""A thread pool for parallel uploads that stops promptly on Ctrl-C.

Used by the DICOM-zip batches (``session.upload_batches``) and the gradual-DICOM instances
(``upload.upload_gradual``). On Ctrl-C, ``SystemExit`` or a cancelled run, ``on_interrupt`` runs
first (``XnatClient.cancel``: streams stop and blocked sockets are shut down, so the requests in
flight end within moments), work not yet started is dropped, and the pool waits (at most
``stop_timeout``) for the work in flight to end, its done callbacks included, so what it
delivered is recorded before the interrupt propagates. On any other error queued work is dropped
too and the work in flight ends normally, then the error propagates.

Not ``ThreadPoolExecutor``, for two reasons that matter only on Ctrl-C: its ``shutdown`` waits
with ``Thread.join``, and in CPython 3.11 a join interrupted by Ctrl-C marks the still-running
thread as finished (bpo-45274's fix), so the next join returns while it is still uploading; and
it starts its threads inside ``submit``, where a Ctrl-C loses the future of work that will run.
Here the threads start up front and each sets an event as it ends, which is what the pool waits
on (as ``cstore.send._run_workers`` does for the C-STORE associations).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

_Result = TypeVar("_Result")
_Work = tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class InterruptiblePool(Executor):
    """An ``Executor`` whose threads start up front and say when they end; made by ``interruptible_pool``."""

    def __init__(self, workers: int, name: str) -> None:
        self._workers, self._name = max(1, workers), name
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._unfinished: set[Future[Any]] = set()  # what runs or waits, not all ever submitted
        self._ended: list[threading.Event] = []

    def start(self) -> None:
        """Start the worker threads."""
        for n in range(self._workers):
            ended = threading.Event()
            threading.Thread(target=self._worker, args=(ended,), name=f"{self._name}-{n}", daemon=True).start()
            # Listed once started: a start cut short by Ctrl-C leaves at most one thread unlisted
            # (``shutdown`` ends it too), never a listed one that will not run and be waited for.
            self._ended.append(ended)

    def submit(self, fn: Callable[..., _Result], /, *args: Any, **kwargs: Any) -> Future[_Result]:
        """Queue ``fn(*args, **kwargs)`` for a worker, as ``Executor.submit``.

        Args:
            fn: The callable to run.
            *args: Its positional arguments.
            **kwargs: Its keyword arguments.

        Returns:
            The future of its result.
        """
        future: Future[_Result] = Future()
        with self._lock:  # tracked before it is queued: an interrupt cannot lose it
            self._unfinished.add(future)
        future.add_done_callback(self._finished)
        self._work.put((future, fn, args, kwargs))
        return future

    def _finished(self, future: Future[Any]) -> None:
        with self._lock:
            self._unfinished.discard(future)

    def _worker(self, ended: threading.Event) -> None:
        try:
            while (work := self._work.get()) is not None:
                future, fn, args, kwargs = work
                if not future.set_running_or_notify_cancel():  # dropped by shutdown(cancel_futures=True)
                    continue
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # noqa: BLE001 - handed to whoever reads the future
                    future.set_exception(exc)
                else:
                    future.set_result(result)  # runs the done callbacks here, before this worker moves on
        finally:
            ended.set()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False, timeout: float | None = None) -> None:
        """As ``Executor.shutdown``; ``wait`` waits on the workers' end events (at most ``timeout``).

        Args:
            wait: Wait until every worker has ended.
            cancel_futures: Drop what is queued and not yet running.
            timeout: The longest wait, in seconds (None: no bound).
        """
        if cancel_futures:
            with self._lock:
                unfinished = list(self._unfinished)
            for future in unfinished:
                future.cancel()  # a no-op for one already running
        for _ in range(len(self._ended) + 1):  # one more for a worker whose start Ctrl-C cut short
            self._work.put(None)  # after whatever is queued: each worker ends once the queue is empty
        if not wait:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        for ended in self._ended:
            while not ended.wait(0.5):  # short waits keep the main thread responsive to Ctrl-C
                if deadline is not None and time.monotonic() >= deadline:
                    return


@contextlib.contextmanager
def interruptible_pool(
    workers: int, name: str, *, on_interrupt: Callable[[], None], stop_timeout: float = 60.0
) -> Iterator[InterruptiblePool]:
    """A pool whose block waits for everything submitted and its done callbacks.

    ``with interruptible_pool(4, "gradual", on_interrupt=client.cancel) as pool: pool.submit(...)``;
    the module's docstring says what Ctrl-C does.

    Args:
        workers: Worker threads.
        name: The threads' name prefix.
        on_interrupt: Called on Ctrl-C (or another BaseException) before queued work is dropped.
        stop_timeout: How long to wait for the work in flight after an interrupt.

    Yields:
        The started pool.
    """
    pool = InterruptiblePool(workers, name)
    try:
        pool.start()
        yield pool
        pool.shutdown(wait=True)
    except BaseException as exc:
        interrupted = not isinstance(exc, Exception)  # Ctrl-C, SystemExit, a cancelled run
        if interrupted:
            on_interrupt()
        pool.shutdown(wait=True, cancel_futures=True, timeout=stop_timeout if interrupted else None)
        raise
