"""The upload pool: everything submitted is finished (done callbacks included) when the block
ends, and Ctrl-C drops queued work, cancels the client and still waits for the work in flight."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import Future

import pytest

from xnat_flows.transfer.pool import interruptible_pool


def test_leaving_the_block_waits_for_every_done_callback() -> None:
    recorded: list[int] = []

    def record(future: Future[int]) -> None:
        time.sleep(0.05)  # a slow journal write: the future already counts as done while this runs
        recorded.append(future.result())

    with interruptible_pool(2, "test", on_interrupt=lambda: None) as pool:
        for n in range(4):
            pool.submit(lambda n=n: n).add_done_callback(record)
    assert sorted(recorded) == [0, 1, 2, 3]


def test_an_interrupt_drops_queued_work_and_waits_for_the_work_in_flight() -> None:
    cancel = threading.Event()
    started = threading.Event()
    finished: list[str] = []

    def upload(name: str) -> str:
        started.set()
        cancel.wait(5)  # a request that ends once the client is cancelled
        time.sleep(0.05)
        finished.append(name)
        return name

    outcomes: list[str] = []
    with pytest.raises(KeyboardInterrupt), interruptible_pool(1, "test", on_interrupt=cancel.set) as pool:
        for name in ("first", "queued"):
            future = pool.submit(upload, name)
            future.add_done_callback(lambda f: outcomes.append("dropped" if f.cancelled() else f.result()))
        assert started.wait(5)
        raise KeyboardInterrupt
    assert cancel.is_set()
    assert finished == ["first"]
    assert sorted(outcomes) == ["dropped", "first"]


def test_an_error_drops_queued_work_without_cancelling_the_client() -> None:
    cancelled: list[bool] = []
    ran: list[str] = []
    with pytest.raises(ValueError), interruptible_pool(1, "test", on_interrupt=lambda: cancelled.append(True)) as pool:
        gate = threading.Event()
        pool.submit(gate.wait, 5)
        pool.submit(ran.append, "queued")
        gate.set()
        raise ValueError("a bug in the caller")
    assert not cancelled
    assert ran in ([], ["queued"])  # the queued one may have started before the error; never after


def test_ctrl_c_while_waiting_at_the_end_still_waits_for_the_work_in_flight() -> None:
    """A real SIGINT reaches the main thread while it waits for the last upload: the upload is told
    to stop (``on_interrupt``) and its end is waited for, not abandoned. (``ThreadPoolExecutor``'s
    shutdown, interrupted and called again as the uploads did, returns at once on CPython 3.11:
    the interrupted ``Thread.join`` marked the running thread as finished.)"""
    cancel = threading.Event()
    body_left = threading.Event()
    recorded: list[str] = []

    def upload() -> None:
        assert body_left.wait(5)  # the main thread has left the block's body: it is at the final wait
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C
        cancel.wait(5)
        time.sleep(0.2)  # what the upload still does after it was told to stop
        recorded.append("done")

    # pytest-xdist workers ignore SIGINT; Python's own handler turns it into KeyboardInterrupt.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), interruptible_pool(2, "test", on_interrupt=cancel.set) as pool:
            pool.submit(upload)
            body_left.set()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert cancel.is_set()
    assert recorded == ["done"]
