"""Fixtures for the prearchive/resource tests: a client on the emulator (``scripted_client`` is suite-wide)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from manage_helpers import emulator_client

from xnat_flows.client.client import XnatClient


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
