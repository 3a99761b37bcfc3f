"""pytest fixtures for testing against the XNAT emulator (registered via the ``pytest11`` entry point).

Kept cheap to import (no prefect, no pydicom): every pytest run in an environment with xnat_flows
installed loads this module.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from xnat_flows.testing.emulator import XnatEmulator


@pytest.fixture
def xnat_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XnatEmulator]:
    """A fresh emulator per test (own data dir; idle rebuild after 0.5 s so lifecycles finish quickly)."""
    with XnatEmulator(tmp_path_factory.mktemp("xnat-emulator"), rebuild_idle_seconds=0.5) as emulator:
        yield emulator


@pytest.fixture(scope="session")
def xnat_emulator_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XnatEmulator]:
    """One emulator shared by the whole test session (state accumulates; use unique labels)."""
    with XnatEmulator(tmp_path_factory.mktemp("xnat-emulator-session"), rebuild_idle_seconds=0.5) as emulator:
        yield emulator
