"""The bad-input catalogue: each case gets a message that says what is wrong and what to do, its
own CLI exit code, a Failed flow run in Prefect, and leaves nothing on the server a re-run cannot finish.

Tests run as root here, so a file cannot be made unreadable with ``chmod 000``: the unreadable
cases use a FIFO (opening it would block) and a directory named like a DICOM file instead.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from xnat_flows.cli.main import app
from xnat_flows.cli.options import (
    EXIT_AUTH,
    EXIT_CONFLICT,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from xnat_flows.testing import XnatEmulator
from xnat_flows.testing.synth import write_studies
from xnat_flows.transfer.session import study_label

pytestmark = pytest.mark.e2e

PASSWORD = "bad-input-pw-41c7"
PROJECT = "BADIN"


@pytest.fixture(scope="module")
def xnat(tmp_path_factory: pytest.TempPathFactory):
    with XnatEmulator(
        tmp_path_factory.mktemp("xnat"), projects=(PROJECT,), password=PASSWORD, scp_port=0, rebuild_idle_seconds=0.3
    ) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def one_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("one-study")
    write_studies(root, series=1, instances=3, instance_kb=2, seed=21)
    return root


def _server_state(xnat: XnatEmulator) -> tuple[int, int]:
    return len(xnat.archived_experiments()), len(xnat.prearchive_sessions(include_direct_archive=True))


# -- inputs -------------------------------------------------------------------------------------------


def _missing(tmp: Path, study: Path) -> Path:
    return tmp / "no-such-directory"


def _empty(tmp: Path, study: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


def _a_file(tmp: Path, study: Path) -> Path:
    path = tmp / "IM0001.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM")
    return path


def _text_only(tmp: Path, study: Path) -> Path:
    (tmp / "notes").mkdir()
    (tmp / "notes" / "README.txt").write_text("no images here")
    (tmp / "notes" / "report.pdf").write_bytes(b"%PDF-1.4 ...")
    return tmp / "notes"


def _truncated_only(tmp: Path, study: Path) -> Path:
    """Headers intact, pixel data cut short (pydicom alone would read these without complaint)."""
    manifest = write_studies(tmp / "whole", series=1, instances=2, instance_kb=16, seed=26)
    out = tmp / "cut"
    out.mkdir()
    for index, item in enumerate(manifest.files):
        data = item.path.read_bytes()
        (out / f"IM{index}").write_bytes(data[: len(data) - 4000])
    return out


def _truncated_among_good(tmp: Path, study: Path) -> Path:
    """A good study with one instance cut short beside it: an export still being written."""
    out = tmp / "partly"
    shutil.copytree(study, out)
    victim = next(p for p in sorted(out.rglob("IM*")) if p.is_file())
    victim.write_bytes(victim.read_bytes()[:-1000])
    return out


def _fifo_only(tmp: Path, study: Path) -> Path:
    out = tmp / "fifo"
    out.mkdir()
    os.mkfifo(out / "IM0001")
    return out


def _symlink_loop_only(tmp: Path, study: Path) -> Path:
    out = tmp / "loop"
    (out / "a").mkdir(parents=True)
    (out / "a" / "back").symlink_to(out, target_is_directory=True)
    (out / "self").symlink_to(out / "self")  # a link to itself: broken
    return out


def _mixed_studies(tmp: Path, study: Path) -> Path:
    write_studies(tmp / "two", studies=2, series=1, instances=2, instance_kb=2, seed=22)
    return tmp / "two"


def _study(tmp: Path, study: Path) -> Path:
    return study


@dataclass
class Case:
    id: str
    source: Callable[[Path, Path], Path] = _study
    options: list[str] = field(default_factory=list)  # replaces/extends the defaults
    connection: str = "good"  # good | badpw | https | closed-port | unresolvable | no-url | bad-ca | url-creds
    exit_code: int = EXIT_USAGE
    words: tuple[str, ...] = ()
    flow: dict | None = None  # UploadRequest overrides for the flow variant (None: no flow variant)
    prepare: Callable[[XnatEmulator, str, Path], None] | None = None  # server state the case needs (xnat, label, tmp)


def _label_holds_another_study(xnat: XnatEmulator, label: str, tmp: Path) -> None:
    """An archived session under the label the upload names, holding another study."""
    from pydantic import SecretStr

    from xnat_flows.client.client import XnatClient
    from xnat_flows.client.credentials import Credentials
    from xnat_flows.transfer.session import upload_session
    from xnat_flows.transfer.target import UploadTarget

    write_studies(tmp / "other", series=1, instances=2, instance_kb=2, seed=27)
    creds = Credentials(url=xnat.url, username="admin", password=SecretStr(PASSWORD))
    with XnatClient(creds, token_cache=None) as client:
        assert upload_session(
            client, tmp / "other", UploadTarget(PROJECT, label, label), verify_timeout=20, poll_interval=0.1
        ).ok


CASES = [
    Case("missing-path", _missing, words=("does not exist", "Pass the directory"), flow={}),
    Case("empty-dir", _empty, words=("No DICOM files found", "it is empty"), flow={}),
    Case("path-is-a-file", _a_file, words=("is not a directory",), flow={}),
    Case("no-dicom", _text_only, words=("No DICOM files found", "not DICOM", "DICM at byte 128"), flow={}),
    Case(
        "only-truncated-dicom",
        _truncated_only,
        exit_code=EXIT_PARTIAL,
        words=("2 DICOM files", "cut short", "nothing was sent", "IM0", "IM1", "skip"),
        flow={},
    ),
    Case(
        "truncated-among-good",
        _truncated_among_good,
        exit_code=EXIT_PARTIAL,
        words=("1 DICOM files", "cut short", "nothing was sent", "--skip-truncated"),
        flow={},
    ),
    Case("only-a-fifo", _fifo_only, words=("No DICOM files found", "not a regular file")),
    Case("only-symlink-loops", _symlink_loop_only, words=("No DICOM files found", "broken symlink")),
    Case("mixed-studies", _mixed_studies, words=("holds 2 studies", "--per-study"), flow={}),
    Case(
        "project-label-space",
        options=["-P", "MY PROJECT"],
        words=("Invalid XNAT project label", "letters, digits"),
        flow={"project": "MY PROJECT"},
    ),
    Case(
        "subject-label-slash",
        options=["-S", "sub/01"],
        words=("Invalid XNAT subject label", "letters, digits"),
        flow={"subject": "sub/01"},
    ),
    Case(
        "session-label-dot",
        options=["-E", "ses.01"],
        words=("Invalid XNAT session label", "letters, digits"),
        flow={"session": "ses.01"},
    ),
    Case("session-label-empty", options=["-E", ""], words=("Invalid XNAT session label",), flow={"session": ""}),
    Case("session-label-non-ascii", options=["-E", "séance"], words=("Invalid XNAT session label",)),
    Case(
        "unknown-project",
        options=["-P", "NOPE"],
        exit_code=EXIT_NOT_FOUND,
        words=("Project 'NOPE' does not exist", "ask an XNAT admin"),
        flow={"project": "NOPE"},
    ),
    Case("wrong-password", connection="badpw", exit_code=EXIT_AUTH, words=("refused the login", "password"), flow={}),
    Case("https-to-plain-http", connection="https", exit_code=EXIT_UNREACHABLE, words=("SSL", "CA bundle"), flow={}),
    Case(
        "wrong-port",
        connection="closed-port",
        exit_code=EXIT_UNREACHABLE,
        words=("Connection refused", "Check the XNAT URL"),
        flow={},
    ),
    Case(
        "unreachable-host",
        connection="unresolvable",
        exit_code=EXIT_UNREACHABLE,
        words=("Name or service not known", "Check the XNAT URL"),
        flow={},
    ),
    Case("no-url", connection="no-url", words=("No XNAT URL given", "XNAT_URL")),
    Case("url-without-scheme", connection="no-scheme", words=("must start with http://",)),
    Case("url-with-credentials", connection="url-creds", words=("must not contain credentials",)),
    Case("bad-ca-bundle", connection="bad-ca", words=("CA bundle", "does not exist", "PEM")),
    Case("workers-zero", options=["--workers", "0"], words=("Invalid value for '--workers'",), flow={"workers": 0}),
    Case(
        "workers-negative", options=["--workers", "-3"], words=("Invalid value for '--workers'",), flow={"workers": -3}
    ),
    Case(
        "unknown-archive-format",
        options=["--archive-format", "rar"],
        words=("Invalid value for '--archive-format'", "rar"),
        flow={"archive_format": "rar"},
    ),
    Case("unknown-profile", options=["--profile", "nosuch"], connection="no-url", words=("No profile named 'nosuch'",)),
    Case(
        "label-holds-another-study",
        exit_code=EXIT_CONFLICT,
        prepare=_label_holds_another_study,
        words=("already holds another study", "nothing was sent", "--into-other-study"),
    ),
]


def _connection_args(kind: str, xnat: XnatEmulator, tmp: Path) -> tuple[list[str], dict[str, str]]:
    env = {"XNAT_USER": "admin", "XNAT_PASS": PASSWORD}
    if kind == "good":
        return ["--url", xnat.url], env
    if kind == "badpw":
        return ["--url", xnat.url], {**env, "XNAT_PASS": "wrong-password"}
    if kind == "https":
        return ["--url", xnat.url.replace("http://", "https://")], env
    if kind == "closed-port":
        import socket

        with socket.socket() as probe:  # a port nobody listens on
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        return ["--url", f"http://127.0.0.1:{port}"], env
    if kind == "unresolvable":
        return ["--url", "http://xnat.invalid"], env
    if kind == "no-url":
        return [], env
    if kind == "no-scheme":
        return ["--url", "xnat.example.org"], env
    if kind == "url-creds":
        return ["--url", f"http://admin:{PASSWORD}@127.0.0.1:{xnat.port}"], env
    if kind == "bad-ca":
        return ["--url", xnat.url.replace("http://", "https://")], {
            **env,
            "XNAT_CA_BUNDLE": str(tmp / "missing-ca.pem"),
        }
    raise AssertionError(kind)


def _flow_connection(kind: str, xnat: XnatEmulator, monkeypatch: pytest.MonkeyPatch):
    from xnat_flows.models import XnatConnection

    args, env = _connection_args(kind, xnat, Path("/nonexistent"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return XnatConnection(url=args[1] if args else None, username="admin")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli_rejects_bad_input(case: Case, xnat: XnatEmulator, one_study: Path, tmp_path: Path) -> None:
    source = case.source(tmp_path, one_study)
    args, env = _connection_args(case.connection, xnat, tmp_path)
    label = f"S_{case.id.replace('-', '_')}"
    command = ["session", "upload", str(source), "-P", PROJECT, "-S", label, "-E", label, *args, *case.options]
    if case.prepare is not None:
        case.prepare(xnat, label, tmp_path)
    before = _server_state(xnat)

    started = time.monotonic()
    outcome = CliRunner().invoke(app, command, env=env)

    assert time.monotonic() - started < 30
    assert outcome.exit_code == case.exit_code, outcome.output
    text = " ".join(outcome.output.split())  # typer's error box wraps lines
    for word in case.words:
        assert " ".join(word.split()) in text, f"{word!r} not in: {outcome.output}"
    assert _server_state(xnat) == before, "a rejected upload left something on the server"
    assert PASSWORD not in outcome.output


FLOW_WORDS = {
    "--per-study": "set per_study in the request",
    "--skip-truncated": "set skip_truncated in the request",
    "Check the XNAT URL": "Check the URL in the run's xnat-credentials Block",
}


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize(
    "case", [c for c in CASES if c.flow is not None], ids=[c.id for c in CASES if c.flow is not None]
)
def test_flow_run_fails_on_bad_input(
    case: Case, xnat: XnatEmulator, one_study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from xnat_flows.flows.upload import upload_dicom_session

    source = case.source(tmp_path, one_study)
    label = f"F_{case.id.replace('-', '_')}"
    request = {
        "source_dir": str(source),
        "project": PROJECT,
        "subject": label,
        "session": label,
        "verify_timeout_seconds": 10,
        **case.flow,
    }
    before = _server_state(xnat)

    state = upload_dicom_session(request, _flow_connection(case.connection, xnat, monkeypatch), return_state=True)

    assert state.is_failed(), state
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - the failure is the point
        message = " ".join(str(exc).split())
    else:
        raise AssertionError("a failed state without an exception")
    words = [w for w in case.words if not w.startswith("Invalid value for")] or ["validation error"]
    if case.id.startswith("workers"):
        words = ["workers"]
    if case.id == "unknown-archive-format":
        words = ["archive_format"]
    # the flow run's operator reads advice in terms of the run, never the command line's flags
    words = [FLOW_WORDS.get(word, word) for word in words]
    for word in words:
        assert word in message, f"{word!r} not in: {message}"
    assert _server_state(xnat) == before
    assert PASSWORD not in message


# -- inputs the upload survives (skipped, with the reason on stderr) -----------------------------------


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        ("fifo", lambda d: os.mkfifo(d / "IM_FIFO"), "not a regular file"),
        ("directory-named-like-a-file", lambda d: (d / "IM9999.dcm").mkdir(), None),
        ("symlink-loop", lambda d: (d / "loop").symlink_to(d, target_is_directory=True), "symlink loop"),
        ("broken-symlink", lambda d: (d / "dangling").symlink_to(d / "gone"), "broken symlink"),
        (
            "truncated-copy",
            lambda d: (d / "IM_HALF").write_bytes(
                next(p for p in sorted(d.rglob("IM*")) if p.is_file()).read_bytes()[:300]
            ),
            "truncated",
        ),
    ],
)
def test_upload_skips_what_it_cannot_read_and_says_why(
    name: str, make, reason: str | None, xnat: XnatEmulator, tmp_path: Path
) -> None:
    manifest = write_studies(tmp_path / "export", series=1, instances=3, instance_kb=2, seed=30)
    make(tmp_path / "export")
    label = f"SK_{name.replace('-', '_')}"
    command = [
        "session",
        "upload",
        str(tmp_path / "export"),
        "-P",
        PROJECT,
        "-S",
        label,
        "-E",
        label,
        "--url",
        xnat.url,
    ]

    if reason == "truncated":  # a file cut short fails the upload unless the user says to skip it
        refused = CliRunner().invoke(app, command, env={"XNAT_USER": "admin", "XNAT_PASS": PASSWORD})
        assert refused.exit_code == EXIT_PARTIAL and "--skip-truncated" in refused.output, refused.output
        command.append("--skip-truncated")
    outcome = CliRunner().invoke(app, command, env={"XNAT_USER": "admin", "XNAT_PASS": PASSWORD})

    assert outcome.exit_code == EXIT_OK, outcome.output
    if reason:
        assert reason in outcome.output
    (experiment,) = [e for e in xnat.archived_experiments(PROJECT) if e["label"] == label]
    assert sum(experiment["scans"].values()) == len(manifest.files)


def test_mixed_studies_rerun_with_per_study_finishes(xnat: XnatEmulator, tmp_path: Path) -> None:
    manifest = write_studies(tmp_path / "two", studies=2, series=1, instances=2, instance_kb=2, seed=23)
    command = ["session", "upload", str(tmp_path / "two"), "-P", PROJECT, "-S", "MIX", "-E", "MIX", "--url", xnat.url]
    env = {"XNAT_USER": "admin", "XNAT_PASS": PASSWORD}

    refused = CliRunner().invoke(app, command, env=env)
    accepted = CliRunner().invoke(app, [*command, "--per-study"], env=env)

    assert refused.exit_code == EXIT_USAGE and accepted.exit_code == EXIT_OK, accepted.output
    labels = sorted(e["label"] for e in xnat.archived_experiments(PROJECT) if e["label"].startswith("MIX"))
    assert labels == sorted(study_label("MIX", uid) for uid in manifest.study_uids)
    assert sum(
        sum(e["scans"].values()) for e in xnat.archived_experiments(PROJECT) if e["label"].startswith("MIX")
    ) == len(manifest.files)


@pytest.mark.slow
def test_twenty_thousand_tiny_files_are_skipped_in_bounded_memory(tmp_path: Path) -> None:
    """A folder of 20,000 small non-DICOM files beside five instances: every one is listed as
    skipped and the scan's memory stays bounded. (Its speed is a benchmark's: bench/bench_scan.py.)"""
    import tracemalloc

    from xnat_flows.transfer.scan import scan_directory

    write_studies(tmp_path / "big" / "dicom", series=1, instances=5, instance_kb=1, seed=24)
    for d in range(20):
        sub = tmp_path / "big" / f"junk{d:02d}"
        sub.mkdir()
        for i in range(1000):
            (sub / f"f{i:04d}.txt").write_bytes(b"x" * 16)

    tracemalloc.start()
    result = scan_directory(tmp_path / "big")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert len(result.files) == 5 and len(result.skipped) == 20_000
    assert peak < 64 * 1024 * 1024, f"scan peaked at {peak / 1e6:.0f} MB"


# -- C-STORE and resource inputs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "exit_code", "words"),
    [
        (["--called-aet", "A" * 17], EXIT_USAGE, ("17 characters long", "maximum is 16")),
        (["--calling-aet", "BAD\\AET"], EXIT_USAGE, ("backslash",)),
        (["--calling-aet", "   "], EXIT_USAGE, ("empty or only spaces",)),
        (["--subject", "S01"], EXIT_USAGE, ("--subject and --session route only together with --project",)),
        (["--project", "BAD PROJECT"], EXIT_USAGE, ("Routing project", "cannot read")),
        (["--called-aet", "NOT_XNAT"], 1, ("does not answer to the called AE title",)),
        (["--port", "CLOSED"], EXIT_UNREACHABLE, ("Connection refused", "nothing is listening")),
        (["--workers", "0"], EXIT_USAGE, ("Invalid value for '--workers'",)),
        (["--project", "BADIN"], EXIT_AUTH, ("not logged in", "xnat-flows auth login", "--no-xnat-check")),
    ],
    ids=[
        "aet-17-chars",
        "aet-backslash",
        "aet-blank",
        "subject-without-project",
        "routing-label-space",
        "wrong-called-aet",
        "closed-port",
        "workers-zero",
        "project-without-login",
    ],
)
def test_cstore_cli_rejects_bad_input(
    options: list[str], exit_code: int, words: tuple[str, ...], xnat: XnatEmulator, one_study: Path
) -> None:
    import socket

    if options[:2] == ["--port", "CLOSED"]:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            options = ["--port", str(probe.getsockname()[1])]
    command = ["session", "upload-dicom", str(one_study), "--host", "127.0.0.1", "--port", str(xnat.scp_port), *options]
    before = _server_state(xnat)

    outcome = CliRunner().invoke(app, command)

    assert outcome.exit_code == exit_code, outcome.output
    text = " ".join(outcome.output.split())
    for word in words:
        assert word in text, f"{word!r} not in: {outcome.output}"
    assert _server_state(xnat) == before


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize(
    ("receiver", "words"),
    [
        ({"called_aet": "A" * 17}, "at most 16"),
        ({"calling_aet": "BAD\\AET"}, "backslash"),
        ({"port": 70000}, "less than or equal to 65535"),
    ],
    ids=["aet-17-chars", "aet-backslash", "port-out-of-range"],
)
def test_cstore_flow_fails_on_bad_receiver(receiver: dict, words: str, xnat: XnatEmulator, one_study: Path) -> None:
    from xnat_flows.flows.cstore import send_dicom

    target = {"host": "127.0.0.1", "port": xnat.scp_port, **receiver}
    state = send_dicom({"source_dir": str(one_study)}, target, return_state=True)

    assert state.is_failed()
    with pytest.raises(Exception) as raised:
        state.result()
    assert words in " ".join(str(raised.value).split())


def test_resource_upload_never_sends_files_outside_the_directory(xnat: XnatEmulator, tmp_path: Path) -> None:
    secret = tmp_path / "outside.txt"
    secret.write_text("not for XNAT")
    folder = tmp_path / "derived"
    folder.mkdir()
    (folder / "report.txt").write_text("results")
    (folder / "escape.txt").symlink_to(secret)
    (folder / "up").symlink_to(tmp_path, target_is_directory=True)
    manifest = write_studies(tmp_path / "export", series=1, instances=2, instance_kb=2, seed=25)
    env = {"XNAT_USER": "admin", "XNAT_PASS": PASSWORD}
    runner = CliRunner()
    landed = runner.invoke(
        app,
        ["session", "upload", str(tmp_path / "export"), "-P", PROJECT, "-S", "RES", "-E", "RES", "--url", xnat.url],
        env=env,
    )
    assert landed.exit_code == 0, landed.output

    outcome = runner.invoke(
        app, ["resource", "upload", "RES", "NOTES", str(folder), "-P", PROJECT, "--url", xnat.url], env=env
    )

    assert outcome.exit_code == 0, outcome.output
    assert "escape.txt" in outcome.output and "not sent" in outcome.output
    files = xnat.archived_files("RES")
    sent = {name.rsplit("/", 1)[-1] for name in files if "/NOTES/" in name}
    assert sent == {"report.txt"}, sent
    assert len([n for n in files if "/DICOM/" in n]) == len(manifest.files)
