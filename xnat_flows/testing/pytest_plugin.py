"""pytest fixtures for testing against the XNAT emulator (registered via the ``pytest11`` entry point).

Kept cheap to import: every pytest run in an environment with xnat_flows installed loads this
module, so the emulator itself is imported only when a test asks for one of its fixtures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import pytest

if TYPE_CHECKING:
    from xnat_flows.testing.emulator import XnatEmulator

T = TypeVar("T")

# Fast enough that lifecycles finish within a test, slow enough to see RECEIVING.
TEST_REBUILD_IDLE_SECONDS = 0.5


class XnatEmulatorFactory(Protocol):
    def __call__(self, data_dir: str | Path | None = None, **options: Any) -> XnatEmulator: ...


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    *,
    interval: float = 0.05,
    what: str | Callable[[], str] = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy and return that; fail the test after ``timeout`` s.

    ``what`` (a text, or a callable for a description built at the moment of failure) names what
    was awaited in the failure message.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:g} s waiting for {described}")
        time.sleep(interval)


@pytest.fixture
def xnat_emulator_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XnatEmulatorFactory]:
    """Start emulators with any ``XnatEmulator`` options; every one is stopped when the test ends.

    ``data_dir`` defaults to a fresh temp dir; pass the same one again (after ``.stop()``) to test a
    restart. ``rebuild_idle_seconds`` defaults to 0.5 s.
    """
    started: list[XnatEmulator] = []

    def start(data_dir: str | Path | None = None, **options: Any) -> XnatEmulator:
        if data_dir is None:
            data_dir = tmp_path_factory.mktemp("xnat-emulator")
        options.setdefault("rebuild_idle_seconds", TEST_REBUILD_IDLE_SECONDS)
        from xnat_flows.testing.emulator import XnatEmulator

        emulator = XnatEmulator(data_dir, **options)
        started.append(emulator)
        return emulator.start()

    yield start
    for emulator in reversed(started):
        emulator.stop()  # idempotent: a test may have stopped it already


@pytest.fixture
def xnat_emulator(xnat_emulator_factory: XnatEmulatorFactory) -> XnatEmulator:
    """A fresh emulator per test (own data dir; idle rebuild after 0.5 s so lifecycles finish quickly)."""
    return xnat_emulator_factory()


@pytest.fixture(scope="session")
def xnat_emulator_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XnatEmulator]:
    """One emulator shared by the whole test session (state accumulates; use unique labels)."""
    from xnat_flows.testing.emulator import XnatEmulator

    with XnatEmulator(
        tmp_path_factory.mktemp("xnat-emulator-session"), rebuild_idle_seconds=TEST_REBUILD_IDLE_SECONDS
    ) as emulator:
        yield emulator
