"""Fixtures for the emulator tests: a fresh emulator and an authenticated httpx client."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from xnat_flows.testing import XnatEmulator


@pytest.fixture
def emulator(tmp_path, xnat_emulator_factory) -> XnatEmulator:
    return xnat_emulator_factory(tmp_path / "xnat", rebuild_idle_seconds=0.3)


@pytest.fixture
def client(emulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.url, auth=("admin", "admin"), timeout=30) as http:
        yield http
