"""One retry rule: the error's ``retryable`` decides Prefect task retries as it does request retries."""

from __future__ import annotations

import socket

import pytest
from prefect import flow

from xnat_flows.client.errors import (
    AuthenticationError,
    InputError,
    TransientError,
    UnreachableError,
    XnatConnectionError,
)
from xnat_flows.models import DicomReceiverTarget
from xnat_flows.tasks import cstore as cstore_tasks
from xnat_flows.tasks.policies import retry_unless_permanent
from xnat_flows.transfer.cstore.errors import PeerUnreachableError


class _FailedState:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def result(self):
        raise self.error


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (PeerUnreachableError("127.0.0.1:1 refused the connection"), True),  # retryable = True, not a TransientError
        (TransientError("HTTP 503"), True),
        (XnatConnectionError("connection reset", retryable=True), True),
        (XnatConnectionError("connection refused", retryable=False), False),
        (UnreachableError("nothing answered"), False),
        (AuthenticationError("HTTP 401"), False),
        (InputError("bad label"), False),
        (ValueError("a bug"), False),
    ],
)
def test_the_errors_retryable_decides(error: BaseException, retried: bool) -> None:
    assert retry_unless_permanent(None, None, _FailedState(error)) is retried


@pytest.mark.usefixtures("prefect_harness")
def test_echo_receiver_retries_fire_on_an_unreachable_receiver(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    attempts = []
    real_echo = cstore_tasks.echo

    def counting_echo(*args, **kwargs):
        attempts.append(args)
        return real_echo(*args, **kwargs)

    monkeypatch.setattr(cstore_tasks, "echo", counting_echo)
    quick = cstore_tasks.echo_receiver.with_options(retry_delay_seconds=0)

    @flow
    def check() -> None:
        quick(DicomReceiverTarget(host="127.0.0.1", port=closed_port, called_aet="XNAT", calling_aet="XNATFLOWS"))

    with pytest.raises(PeerUnreachableError):
        check()
    assert len(attempts) == 1 + cstore_tasks.echo_receiver.retries
