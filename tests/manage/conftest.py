"""Fixtures for the prearchive/resource tests: a client on a scripted transport, and one on the emulator."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from manage_helpers import emulator_client
from pydantic import SecretStr

from xnat_flows.client.client import XnatClient
from xnat_flows.client.credentials import Credentials
from xnat_flows.client.retry import RetryPolicy

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def scripted_client() -> Iterator[Callable[[Handler], XnatClient]]:
    """``scripted_client(handler)``: an XnatClient whose requests are answered by ``handler``."""
    clients: list[XnatClient] = []

    def make(handler: Handler) -> XnatClient:
        credentials = Credentials(url="http://xnat.test", username="u", token=SecretStr("TESTTOKEN0001"))
        client = XnatClient(
            credentials, transport=httpx.MockTransport(handler), token_cache=None, retry=RetryPolicy(sleep=lambda s: None)
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def manual_xnat(xnat_emulator, monkeypatch):
    """The emulator with project TEST on prearchive code 0 (sessions stay in the prearchive) and a
    project OTHER to move sessions to; XNAT_* variables point flows and the CLI at it."""
    with emulator_client(xnat_emulator) as client:
        client.request("PUT", "/data/projects/OTHER")
        client.request("PUT", "/data/projects/OTHER/prearchive_code/0")
        client.request("PUT", "/data/projects/TEST/prearchive_code/0")
    monkeypatch.setenv("XNAT_URL", xnat_emulator.url)
    monkeypatch.setenv("XNAT_USER", "admin")
    monkeypatch.setenv("XNAT_PASS", "admin")
    return xnat_emulator


@pytest.fixture
def client(manual_xnat) -> Iterator[XnatClient]:
    with emulator_client(manual_xnat) as client:
        yield client


