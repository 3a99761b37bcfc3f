"""Fixtures for the emulator tests: a fresh emulator and an authenticated httpx client."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from xnat_flows.testing import XnatEmulator


@pytest.fixture
def emulator(tmp_path) -> Iterator[XnatEmulator]:
    with XnatEmulator(tmp_path / "xnat", rebuild_idle_seconds=0.3) as xnat:
        yield xnat


@pytest.fixture
def client(emulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.url, auth=("admin", "admin"), timeout=30) as http:
        yield http
