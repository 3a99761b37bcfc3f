"""Secret hygiene: how a password may be given, and proof that neither the password nor the session
token ends up anywhere but the user's profile (tokens.json, mode 0600)."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xnat_flows.cli.main import app
from xnat_flows.testing import XnatEmulator
from xnat_flows.testing.synth import write_studies

pytestmark = pytest.mark.e2e

SENTINEL_PASSWORD = "Sentinel-Pw-9f27c1e4"
WARNING = "visible to other users of this machine"


@pytest.fixture
def xnat(tmp_path: Path, xnat_emulator_factory) -> XnatEmulator:
    return xnat_emulator_factory(
        tmp_path / "server",
        projects=("SEC",),
        password=SENTINEL_PASSWORD,
        scp_port=0,
        rebuild_idle_seconds=0.3,
        prearchive_codes={"HOLD": 0},
    )


def _whoami(xnat: XnatEmulator, *args: str, env: dict[str, str] | None = None, stdin: str | None = None):
    return CliRunner().invoke(
        app, ["whoami", "--url", xnat.url, "--username", "admin", *args], env=env or {}, input=stdin
    )


# -- the ways in ---------------------------------------------------------------------------------------------


def test_password_on_the_command_line_works_but_warns(xnat: XnatEmulator) -> None:
    outcome = _whoami(xnat, "--password", SENTINEL_PASSWORD)

    assert outcome.exit_code == 0, outcome.output
    assert "admin" in outcome.output
    assert WARNING in outcome.output and "--password-stdin" in outcome.output


def test_password_from_stdin_is_quiet(xnat: XnatEmulator) -> None:
    outcome = _whoami(xnat, "--password-stdin", stdin=SENTINEL_PASSWORD + "\n")

    assert outcome.exit_code == 0, outcome.output
    assert WARNING not in outcome.output and SENTINEL_PASSWORD not in outcome.output


def test_password_stdin_without_input_is_a_usage_error(xnat: XnatEmulator) -> None:
    outcome = _whoami(xnat, "--password-stdin", stdin="")

    assert outcome.exit_code == 2
    assert "standard input held no password" in outcome.output


def test_password_and_password_stdin_together_are_refused(xnat: XnatEmulator) -> None:
    outcome = _whoami(xnat, "--password", SENTINEL_PASSWORD, "--password-stdin", stdin=SENTINEL_PASSWORD + "\n")

    assert outcome.exit_code == 2 and "not both" in outcome.output


def test_password_from_the_environment_is_quiet(xnat: XnatEmulator) -> None:
    outcome = _whoami(xnat, env={"XNAT_PASS": SENTINEL_PASSWORD})

    assert outcome.exit_code == 0, outcome.output
    assert WARNING not in outcome.output


def test_a_wrong_password_fails_even_with_a_cached_session(xnat: XnatEmulator) -> None:
    assert _whoami(xnat, env={"XNAT_PASS": SENTINEL_PASSWORD}).exit_code == 0  # caches a session

    outcome = _whoami(xnat, env={"XNAT_PASS": "not-the-password"})

    assert outcome.exit_code == 3, outcome.output  # authentication failed, not "admin"
    assert _whoami(xnat).exit_code == 0  # no password given: the cached session still serves


def test_password_from_the_prompt_is_quiet(xnat: XnatEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    from xnat_flows.client import credentials

    asked: list[str] = []
    monkeypatch.setattr(credentials, "_is_interactive", lambda: True)
    monkeypatch.setattr(credentials.getpass, "getpass", lambda prompt: asked.append(prompt) or SENTINEL_PASSWORD)

    outcome = _whoami(xnat)

    assert outcome.exit_code == 0, outcome.output
    assert asked and "Password for admin@" in asked[0]
    assert WARNING not in outcome.output


@pytest.mark.usefixtures("prefect_harness")
def test_password_from_a_block_is_quiet_and_stored_encrypted(xnat: XnatEmulator) -> None:
    from xnat_flows.blocks import XnatCredentials
    from xnat_flows.client import XnatClient
    from xnat_flows.models import XnatConnection
    from xnat_flows.tasks.connection import credentials_for

    XnatCredentials(url=xnat.url, username="admin", password=SENTINEL_PASSWORD).save("sec-block", overwrite=True)

    with XnatClient(credentials_for(XnatConnection(credentials_block="sec-block"))) as client:
        assert client.whoami() == "admin"
    assert SENTINEL_PASSWORD not in repr(XnatCredentials.load("sec-block"))


# -- the sweep --------------------------------------------------------------------------------------------


def _check_texts(secrets: list[str], sources: dict[str, list[str]]) -> None:
    for name, texts in sources.items():
        for secret in secrets:
            leaked = [t[:200] for t in texts if secret in t]
            assert not leaked, f"{'password' if secret == SENTINEL_PASSWORD else 'token'} in a {name}: {leaked[:2]}"


class _Everything(logging.Handler):
    """Every log record of every logger, formatted with its arguments and exception text."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(self.format(record) + repr(record.args) + repr(getattr(record, "__dict__", {})))


def _files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


def _holds(path: Path, needle: bytes) -> bool:
    try:
        return needle in path.read_bytes()
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_no_password_or_token_leaks_anywhere(
    xnat: XnatEmulator, tmp_path: Path, isolated_profile: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every CLI command and flow, logging at INFO for every logger (what a worker runs with)."""
    _sweep(xnat, tmp_path, isolated_profile, monkeypatch, logging.INFO)


@pytest.mark.usefixtures("prefect_harness")
def test_no_token_in_debug_logs_of_the_http_stack(
    xnat: XnatEmulator, tmp_path: Path, isolated_profile: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _sweep(xnat, tmp_path, isolated_profile, monkeypatch, logging.DEBUG, quick=True)


def _sweep(
    xnat: XnatEmulator,
    tmp_path: Path,
    isolated_profile: Path,
    monkeypatch: pytest.MonkeyPatch,
    level: int,
    quick: bool = False,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_HOME, get_current_settings

    from xnat_flows.blocks import XnatCredentials
    from xnat_flows.flows import attach_resource, send_dicom, upload_dicom_session
    from xnat_flows.flows.prearchive import archive_prearchive_session
    from xnat_flows.flows.upload import UploadIncompleteError
    from xnat_flows.models import DicomReceiverTarget, SendDicomRequest, UploadRequest, XnatConnection

    issued: list[str] = []
    original_login = xnat.sessions.login
    monkeypatch.setattr(xnat.sessions, "login", lambda username: issued.append(original_login(username)) or issued[-1])
    handler = _Everything()
    root_logger = logging.getLogger()
    root_logger.addHandler(handler)
    previous_level = root_logger.level
    root_logger.setLevel(level)
    monkeypatch.setenv("XNAT_PASS", SENTINEL_PASSWORD)  # restored afterwards (the --flow CLI sets it too)
    errors: list[str] = []
    outputs: list[str] = []
    runner = CliRunner()
    work = tmp_path / "work"
    try:
        export = work / "export"
        write_studies(export, series=2, instances=4, instance_kb=2, seed=41)
        held = work / "held"
        write_studies(held, series=1, instances=2, instance_kb=2, seed=42)
        (work / "notes").mkdir()
        (work / "notes" / "readme.txt").write_text("derived data")
        url = ["--url", xnat.url, "--username", "admin"]
        stdin = SENTINEL_PASSWORD + "\n"

        # Every CLI command that talks to XNAT, the password given every way.
        commands = [
            (["auth", "login", *url, "--password-stdin"], stdin, {}),
            (["whoami", *url], None, {}),
            (["whoami", *url, "--password", SENTINEL_PASSWORD], None, {}),
            (
                ["session", "upload", str(export), "-P", "SEC", "-S", "S1", "-E", "E1", *url, "--password-stdin"],
                stdin,
                {},
            ),
            (
                ["session", "upload", str(export), "-P", "SEC", "-S", "S2", "-E", "E2", "--gradual", *url],
                None,
                {"XNAT_PASS": SENTINEL_PASSWORD},
            ),
            (
                [
                    "session",
                    "upload",
                    str(export),
                    "-P",
                    "SEC",
                    "-S",
                    "S3",
                    "-E",
                    "E3",
                    "--flow",
                    *url,
                    "--password-stdin",
                ],
                stdin,
                {},
            ),
            (
                [
                    "session",
                    "upload",
                    str(held),
                    "-P",
                    "HOLD",
                    "-S",
                    "S4",
                    "-E",
                    "E4",
                    "--prearchive",
                    "--no-verify",
                    *url,
                ],
                None,
                {},
            ),
            (["session", "upload", str(export), "-P", "NOPE", "-S", "S5", "-E", "E5", *url], None, {}),  # fails
            (
                [
                    "session",
                    "upload-dicom",
                    str(export),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(xnat.scp_port),
                    "-P",
                    "SEC",
                    "-S",
                    "S6",
                    "-E",
                    "E6",
                ],
                None,
                {},
            ),
            (["prearchive", "list", "--project", "HOLD", *url, "--password-stdin"], stdin, {}),
            (
                ["resource", "upload", "E1", "NOTES", str(work / "notes"), "-P", "SEC", *url, "--password-stdin"],
                stdin,
                {},
            ),
            (["whoami", *url, "--password", "a-wrong-password"], None, {}),  # fails
            (["auth", "logout", *url], None, {}),
        ]
        if quick:
            commands = commands[:3]
        for command, given_stdin, env in commands:
            outcome = runner.invoke(app, command, input=given_stdin, env=env)
            outputs.append(outcome.output + repr(outcome.exception or ""))
        codes = [runner.invoke(app, ["whoami", *url]).exit_code]

        if quick:
            _check_texts([SENTINEL_PASSWORD, *issued], {"log record": handler.texts})
            return
        # Every flow, with the password from the environment and from a Block; one that fails.
        XnatCredentials(url=xnat.url, username="admin", password=SENTINEL_PASSWORD).save("sweep", overwrite=True)
        by_env = XnatConnection(url=xnat.url, username="admin")
        by_block = XnatConnection(credentials_block="sweep")
        results = [
            upload_dicom_session(
                UploadRequest(
                    source_dir=str(export), project="SEC", subject="F1", session="F1", verify_timeout_seconds=20
                ),
                by_block,
            ),
            upload_dicom_session(
                UploadRequest(
                    source_dir=str(export),
                    project="SEC",
                    subject="F2",
                    session="F2",
                    transport="gradual-dicom",
                    verify_timeout_seconds=20,
                ),
                by_env,
            ),
            send_dicom(
                SendDicomRequest(
                    source_dir=str(export), routing_project="SEC", routing_subject="F3", routing_session="F3"
                ),
                DicomReceiverTarget(host="127.0.0.1", port=xnat.scp_port),
            ),
            attach_resource(
                {"session": "F1", "project": "SEC", "label": "NOTES", "path": str(work / "notes")}, by_block
            ),
        ]
        (row,) = [r for r in xnat.prearchive_sessions() if r["project"] == "HOLD"]
        results.append(
            archive_prearchive_session(
                {
                    "project": "HOLD",
                    "timestamp": row["timestamp"],
                    "folder": row["folder"] if "folder" in row else row["folderName"],
                },
                by_env,
            )
        )
        xnat.faults.add(
            method="POST", path="/data/services/import", status=400, message="Unable to identify subject.", times=None
        )
        try:
            upload_dicom_session(
                UploadRequest(source_dir=str(export), project="SEC", subject="F4", session="F4"), by_env
            )
        except UploadIncompleteError as exc:
            errors.append(str(exc) + repr(exc) + repr(exc.__dict__))
        xnat.faults.clear()
        with pytest.raises(Exception) as bad_project:
            upload_dicom_session(
                UploadRequest(source_dir=str(export), project="NOPE", subject="F5", session="F5"), by_block
            )
        errors.append(str(bad_project.value) + repr(bad_project.value))
        outputs.extend(repr(r) for r in results)

        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs()
            task_runs = client.read_task_runs()
            logs = client.read_logs()
            artifacts = client.read_artifacts()
        prefect_texts = (
            [repr(r.parameters) + repr(r.state) + repr(r.state.message if r.state else "") for r in runs]
            + [repr(t.task_inputs) + repr(t.state) for t in task_runs]
            + [log.message for log in logs]
            + [repr(a.data) + repr(a.description) for a in artifacts]
        )
        settings = get_current_settings()
        prefect_dirs = {Path(PREFECT_HOME.value()).expanduser()}
        db_url = str(
            settings.server.database.connection_url.get_secret_value()
            if hasattr(settings.server.database.connection_url, "get_secret_value")
            else settings.server.database.connection_url or ""
        )
        if "sqlite" in db_url:
            prefect_dirs.add(Path(db_url.split(":///", 1)[-1]).parent)
    finally:
        root_logger.removeHandler(handler)
        root_logger.setLevel(previous_level)

    tokens = list(issued)
    assert tokens, "the sweep should have opened JSESSIONs"
    assert codes == [0]
    assert len(runs) >= 8 and logs and artifacts
    secrets = [SENTINEL_PASSWORD, *tokens]
    _check_texts(
        secrets, {"log record": handler.texts, "CLI output": outputs, "exception": errors, "Prefect API": prefect_texts}
    )

    # Files: nothing outside the profile holds a secret; inside, only tokens.json (0600) holds tokens.
    server_dir = xnat.data_dir.resolve()
    scanned = [p for root in {work, *prefect_dirs} if root.exists() for p in _files_under(root)]
    scanned += [p for p in _files_under(tmp_path) if server_dir not in p.resolve().parents]
    assert len(scanned) > 10
    assert any(p.suffix in (".db", ".sqlite3", ".sqlite") for p in scanned), (
        f"Prefect's database not scanned: {prefect_dirs}"
    )
    for path in scanned:
        for secret in secrets:
            assert not _holds(path, secret.encode()), f"secret found in {path}"
    for path in _files_under(isolated_profile):
        assert not _holds(path, SENTINEL_PASSWORD.encode()), f"password stored in {path}"
        if any(_holds(path, t.encode()) for t in tokens):
            assert path.name == "tokens.json", f"token stored in {path}"
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(isolated_profile.stat().st_mode) in (0o700, stat.S_IMODE(isolated_profile.stat().st_mode))
