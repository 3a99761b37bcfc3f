"""Suite-wide fixtures: an isolated profile directory, Prefect's test harness, a real Prefect server."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Prefect servers the suite starts (the test harness's, `prefect server start`, a CLI --flow
    # run's temporary one) inherit this: no telemetry attempts, whose failures (no network) print
    # lines into the test run's terminal. A value set by the caller wins.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # CI installs dcmtk and sets this, so the C-STORE tests against a peer nobody here wrote
    # cannot silently skip there; elsewhere they skip with a reason when dcmtk is missing.
    if os.environ.get("XNAT_FLOWS_REQUIRE_DCMTK") and not (shutil.which("storescp") and shutil.which("storescu")):
        raise pytest.UsageError("XNAT_FLOWS_REQUIRE_DCMTK is set but dcmtk (storescp/storescu) is not on PATH")


@pytest.hookimpl(tryfirst=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop Prefect's temporary API servers (a flow run without PREFECT_API_URL starts one) while
    pytest's streams are still open: Prefect's own exit handler stops them later and its "Stopping
    temporary server" line then meets a closed stream ("--- Logging error --- ValueError: I/O
    operation on closed file" at the end of the run)."""
    server_module = sys.modules.get("prefect.server.api.server")
    if server_module is None:
        return
    logger = server_module.subprocess_server_logger
    level = logger.level
    logger.setLevel(logging.WARNING)  # its "Stopping temporary server" line is noise at the end of a run
    try:
        for server in list(server_module.SubprocessASGIServer._instances.values()):
            server.stop()
    finally:
        logger.setLevel(level)


@pytest.fixture(autouse=True)
def isolated_profile(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own xnat-flows profile dir and no XNAT_* variables from the caller's shell."""
    home = tmp_path_factory.mktemp("xnat-flows-home")
    monkeypatch.setenv("XNAT_FLOWS_HOME", str(home))
    for name in (
        "XNAT_URL",
        "XNAT_USER",
        "XNAT_PASS",
        "XNAT_TOKEN",
        "XNAT_PROFILE",
        "XNAT_VERIFY_SSL",
        "XNAT_CA_BUNDLE",
    ):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def retry_sleeps() -> list[float]:
    """The backoffs ``scripted_client`` clients asked for, recorded instead of slept."""
    return []


@pytest.fixture
def scripted_client(retry_sleeps: list[float]) -> Iterator[Callable[..., Any]]:
    """``scripted_client(handler, ...)``: an ``XnatClient`` whose requests ``handler`` answers (httpx.MockTransport).

    Retries do not sleep: their backoffs land in ``retry_sleeps``. Keyword options: ``token``,
    ``password``, ``cache`` (a ``TokenCache``), ``url``, ``username``.
    """
    from pydantic import SecretStr

    from xnat_flows.client.client import XnatClient
    from xnat_flows.client.credentials import Credentials
    from xnat_flows.client.retry import RetryPolicy

    clients: list[XnatClient] = []

    def make(
        handler: Callable[[httpx.Request], httpx.Response],
        *,
        token: str | None = "TESTTOKEN0001",
        password: str | None = None,
        cache: Any = None,
        url: str = "http://xnat.test",
        username: str = "u",
    ) -> XnatClient:
        credentials = Credentials(
            url=url,
            username=username,
            password=SecretStr(password) if password else None,
            token=SecretStr(token) if token else None,
        )
        client = XnatClient(
            credentials,
            transport=httpx.MockTransport(handler),
            token_cache=cache,
            retry=RetryPolicy(sleep=retry_sleeps.append),
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def events_worker(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Events go to Prefect's asserting client (kept in memory) instead of an API, also those of
    flows run on the harness meanwhile: ``events_worker.wait_until_empty()``, then ``events_worker._client.events``."""
    from prefect.events.clients import AssertingEventsClient
    from prefect.events.worker import EventsWorker

    monkeypatch.delenv("PREFECT_API_KEY", raising=False)
    worker = EventsWorker.instance(AssertingEventsClient)
    monkeypatch.setattr(EventsWorker, "instance", lambda *_: worker)
    try:
        yield worker
    finally:
        worker.drain()


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """Prefect's temporary API and database, once per test session (it costs ~10 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _own_prefect_server(home: Path) -> Iterator[str]:
    """``prefect server start`` on a free loopback port with its own SQLite database under ``home``."""
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_DATABASE_TIMEOUT": "60",
    }
    prefect = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
    log = open(home / "server.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None:
                raise RuntimeError(f"prefect server exited: {(home / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        else:
            raise RuntimeError("prefect server did not become healthy within 120 s")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="session")
def prefect_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``prefect server start`` on loopback (SQLite).

    CI starts one and passes it in ``XNAT_FLOWS_TEST_PREFECT_API_URL``; elsewhere this fixture
    starts its own and stops it at the end.
    """
    given = os.environ.get("XNAT_FLOWS_TEST_PREFECT_API_URL")
    if given:
        yield given
        return
    with _own_prefect_server(tmp_path_factory.mktemp("prefect-server-home")) as url:
        yield url


@pytest.fixture
def private_prefect_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prefect server of this test's own, for a test whose load would make SQLite answer
    "database is locked" to the other modules sharing CI's server under xdist."""
    with _own_prefect_server(tmp_path_factory.mktemp("private-prefect-server-home")) as url:
        yield url
