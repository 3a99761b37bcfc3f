"""Suite-wide fixtures: an isolated profile directory, Prefect's test harness, a real Prefect server."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest

_RUN_PREFECT_HOME = [""]  # the PREFECT_HOME pytest_configure made for this process, removed at its end


def pytest_configure(config: pytest.Config) -> None:
    # Prefect servers the suite starts (the test harness's, `prefect server start`, a CLI --flow
    # run's temporary one) inherit this: no telemetry attempts, whose failures (no network) print
    # lines into the test run's terminal. A value set by the caller wins.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # Prefect's home for this run (flow results, the memo store, a CLI's database): never the
    # developer's own ~/.prefect, which the in-process flow runs filled with pickled results.
    # Set before anything imports prefect, whose settings are read then; each xdist worker gets its own.
    if "prefect" not in sys.modules:
        os.environ["PREFECT_HOME"] = _RUN_PREFECT_HOME[0] = tempfile.mkdtemp(prefix="xnat-flows-tests-prefect-home-")
    # CI installs dcmtk and sets this, so the C-STORE tests against a peer nobody here wrote
    # cannot silently skip there; elsewhere they skip with a reason when dcmtk is missing.
    if os.environ.get("XNAT_FLOWS_REQUIRE_DCMTK") and not (shutil.which("storescp") and shutil.which("storescu")):
        raise pytest.UsageError("XNAT_FLOWS_REQUIRE_DCMTK is set but dcmtk (storescp/storescu) is not on PATH")
    # Under -n with --dist loadfile, modules start in the order pytest_collection_modifyitems gives them
    # (longest first), not in xdist's default "most tests first" (its --no-loadscope-reorder).
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


# The modules that take longest (``--durations=0`` of a whole run, summed per module), started first.
# Under ``--dist loadfile`` a module runs whole on one worker, so a long one started late ends the
# suite alone while the other workers idle; pytest_configure turns xdist's own reordering off so this
# order is kept. Then the other modules with a slow test, then the rest.
RUN_FIRST = (
    "orchestration/test_deployments_e2e.py",
    "flows/test_upload_flow.py",
    "orchestration/test_deployment_files.py",
    "cli/test_login_once.py",
    "orchestration/test_inbox_flow.py",
    "reliability/test_secrets.py",
    "cli/test_demo_cmd.py",
    "cli/test_readme.py",
    "orchestration/test_dask_scale_out.py",
    "reliability/test_bad_input.py",
    "reliability/test_faults.py",
    "flows/test_cstore_flow.py",
)
# Twenty flow runs on a Prefect server of their own: started among the longest e2e modules (each
# with its own server) it passed in 81 s alone but outran its 240 s bound once in CI. Handed out
# after the longest and the slow modules, it starts once the servers of those are up and runs beside
# light modules; handed out last it ran alone at the end, ~60 s of the suite's wall time
# (bench/suite_schedule.py on a --durations=0 log of 2026-12-04: 394 s last, 333 s here).
RUN_AFTER_SLOW = ("reliability/test_load.py",)
_TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest modules first (``RUN_FIRST``), then modules with a slow test; each module's tests stay
    together and in order (a stable sort by a per-module key), so module-scoped fixtures are shared as before."""
    first = {name: rank for rank, name in enumerate(RUN_FIRST)}
    slow_modules = {item.path for item in items if item.get_closest_marker("slow")}

    def rank(item: pytest.Item) -> tuple[int, int]:
        try:
            name = item.path.resolve().relative_to(_TESTS).as_posix()
        except ValueError:  # a test file outside tests/ given on the command line
            return (2, 0)
        if name in RUN_AFTER_SLOW:
            return (1, 1)
        if name in first:
            return (0, first[name])
        return (1, 0) if item.path in slow_modules else (2, 0)

    items.sort(key=rank)


@pytest.hookimpl(tryfirst=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop Prefect's temporary API servers (a flow run without PREFECT_API_URL starts one) while
    pytest's streams are still open: Prefect's own exit handler stops them later and its "Stopping
    temporary server" line then meets a closed stream ("--- Logging error --- ValueError: I/O
    operation on closed file" at the end of the run). Then the run's PREFECT_HOME goes."""
    try:
        _stop_temporary_prefect_servers()
    finally:
        if _RUN_PREFECT_HOME[0]:
            shutil.rmtree(_RUN_PREFECT_HOME[0], ignore_errors=True)


def _stop_temporary_prefect_servers() -> None:
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
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_KEY", raising=False)
    with contextlib.ExitStack() as stack:
        if PREFECT_API_URL.value() is None:
            # No API (no harness in this test): the worker still opens an orchestration client, and
            # without an API URL that starts Prefect's temporary server (~14 s), never used here.
            stack.enter_context(temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}))
        worker = EventsWorker.instance(AssertingEventsClient)
        monkeypatch.setattr(EventsWorker, "instance", lambda *_: worker)
        try:
            yield worker
        finally:
            worker.drain()


@pytest.fixture(scope="session")
def prefect_db_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Prefect database already migrated to the installed Prefect's schema, made once per test run
    (xdist workers share it) and copied into every Prefect home the suite starts a server on.

    A server on a new database runs every migration first: measured 15-17 s of CPU per start against
    8 s on a copy of a migrated one, and the suite starts a dozen servers on 2 cores."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the run's directory, above each worker's own
    template = shared / "prefect-template.db"
    with open(shared / "prefect-template.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first worker migrates, the others wait for it (<= 300 s)
        if not template.exists():
            home = shared / "prefect-template-home"
            home.mkdir(exist_ok=True)
            migrated = home / "prefect.db"
            subprocess.run(
                [_prefect_executable(), "server", "database", "upgrade", "-y"],
                env={
                    **os.environ,
                    "PREFECT_HOME": str(home),
                    "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{migrated}",
                },
                capture_output=True,
                check=True,
                timeout=300,
            )
            # SQLite's backup API: one self-contained file, whatever the journal mode left beside it.
            staged = shared / "prefect-template.db.partial"
            with (
                contextlib.closing(sqlite3.connect(migrated)) as source,
                contextlib.closing(sqlite3.connect(staged)) as copy,
            ):
                source.backup(copy)
            staged.rename(template)
    return template


def seed_prefect_database(template: Path, database: Path) -> None:
    """Put a copy of the migrated ``template`` where a Prefect server will open its database."""
    database.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, database)


@pytest.fixture
def seeded_prefect_home(tmp_path: Path, prefect_db_template: Path) -> Path:
    """A ``PREFECT_HOME`` for a child process whose ``--flow`` run starts Prefect's temporary server:
    its database already migrated, as on a user's second run."""
    home = tmp_path / "prefect-home"
    seed_prefect_database(prefect_db_template, home / "prefect.db")
    return home


@pytest.fixture(scope="session")
def prefect_harness(prefect_db_template: Path) -> Iterator[None]:
    """Prefect's temporary API and database, once per test session (it costs ~10 s to start)."""
    import prefect.testing.utilities
    from prefect.testing.utilities import prefect_test_harness

    def seeded_mkdtemp() -> str:
        # The harness opens <mkdtemp()>/prefect-test.db: start it on a migrated copy.
        directory = tempfile.mkdtemp()
        seed_prefect_database(prefect_db_template, Path(directory) / "prefect-test.db")
        return directory

    with (
        mock.patch.object(prefect.testing.utilities, "mkdtemp", seeded_mkdtemp),
        prefect_test_harness(server_startup_timeout=120),
    ):
        yield


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _prefect_executable() -> str:
    return shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"


@contextlib.contextmanager
def _own_prefect_server(home: Path, template: Path) -> Iterator[str]:
    """``prefect server start`` on a free loopback port with its own SQLite database under ``home``
    (a copy of the migrated ``template``)."""
    seed_prefect_database(template, home / "prefect.db")
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_DATABASE_TIMEOUT": "60",
    }
    prefect = _prefect_executable()
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
def prefect_server_url(tmp_path_factory: pytest.TempPathFactory, prefect_db_template: Path) -> Iterator[str]:
    """A real ``prefect server start`` on loopback (SQLite).

    CI starts one and passes it in ``XNAT_FLOWS_TEST_PREFECT_API_URL``; elsewhere this fixture
    starts its own and stops it at the end.
    """
    given = os.environ.get("XNAT_FLOWS_TEST_PREFECT_API_URL")
    if given:
        yield given
        return
    with _own_prefect_server(tmp_path_factory.mktemp("prefect-server-home"), prefect_db_template) as url:
        yield url


@pytest.fixture(scope="module")
def module_prefect_server_url(tmp_path_factory: pytest.TempPathFactory, prefect_db_template: Path) -> Iterator[str]:
    """A real Prefect server of one test module's own, for deployments that must not meet another
    module's on the shared server (their automations would react to its events)."""
    with _own_prefect_server(tmp_path_factory.mktemp("module-prefect-server-home"), prefect_db_template) as url:
        yield url


@pytest.fixture
def private_prefect_server_url(tmp_path_factory: pytest.TempPathFactory, prefect_db_template: Path) -> Iterator[str]:
    """A real Prefect server of this test's own, for a test whose load would make SQLite answer
    "database is locked" to the other modules sharing CI's server under xdist."""
    with _own_prefect_server(tmp_path_factory.mktemp("private-prefect-server-home"), prefect_db_template) as url:
        yield url
