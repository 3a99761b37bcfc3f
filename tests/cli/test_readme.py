"""The README's console blocks, run as written against the emulator, in a fresh HOME, on a terminal.

Each ``$ `` line (with its ``\\`` continuations) runs in bash on a pseudo-terminal of its own, as a
person would type it; password prompts are answered there. What differs from a person's run is
this mapping, and nothing else:

- ``make demo`` / ``make test``: not run here (``test_demo_cmd.py`` runs the demo; CI runs ``make test``).
- ``.venv/bin/``: the virtual environment running these tests.
- ``https://xnat.example.org``: the emulator's URL, as the README says to rehearse; its user
  ``me`` is the emulator's ``admin`` (password ``admin``), as the README says. In the deployments
  block the emulator's user is the README's ``svc-uploader``.
- ``--port 8080`` and ``http://127.0.0.1:8080``: a free port; ``/data/export`` and
  ``/srv/xnat-inbox``: folders under the test's temporary directory.
- A line ending in ``&`` is started in the background and stopped when the test ends.
  ``prefect server start`` is a Prefect server of the test's own (``private_prefect_server_url``);
  ``prefect worker start`` polls once (``--run-once``) instead of serving forever.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cli_helpers import run_on_terminal

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
BIN = str(Path(sys.executable).parent)
PASSWORD = "admin"

pytestmark = [pytest.mark.e2e]


def console_blocks(text: str) -> list[list[str]]:
    """The commands of each ```console block: ``$ `` lines with their continuation lines joined."""
    blocks = []
    for body in re.findall(r"```console\n(.*?)```", text, flags=re.S):
        commands: list[str] = []
        pending = ""
        for line in body.splitlines():
            if pending:
                pending += " " + line.strip()
            elif line.startswith("$ "):
                pending = line[2:]
            else:
                continue
            if pending.endswith("\\"):
                pending = pending[:-1].rstrip()
                continue
            commands.append(pending)
            pending = ""
        blocks.append(commands)
    return blocks


def _block_with(blocks: list[list[str]], needle: str) -> list[str]:
    (block,) = [b for b in blocks if any(needle in command for command in b)]
    return block


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _without_comment(command: str) -> str:
    """The command without its trailing ``# ...`` comment (bash would ignore it; kept out of logs)."""
    return re.sub(r"\s+#[^'\"]*$", "", command)


class Shell:
    """Runs README lines one by one, each in bash on its own terminal, with the README's mapping."""

    def __init__(self, cwd: Path, env: dict[str, str], mapping: dict[str, str]) -> None:
        self.cwd, self.env, self.mapping = cwd, env, mapping
        self.background: list[subprocess.Popen] = []
        self.transcript: list[tuple[str, int, str]] = []

    def map(self, command: str) -> str:
        command = _without_comment(command).replace(".venv/bin/", BIN + "/")
        for old, new in self.mapping.items():
            command = command.replace(old, new)
        return command

    def run(self, command: str, timeout: float = 180) -> str:
        mapped = self.map(command)
        if mapped.endswith("&"):
            process = subprocess.Popen(
                ["bash", "-c", "exec " + mapped[:-1].strip()],
                cwd=self.cwd,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.background.append(process)
            self.transcript.append((command, 0, "(started in the background)"))
            return ""
        code, output = run_on_terminal(
            ["bash", "-c", mapped], self.env, {"Password for": PASSWORD, "XNAT password:": PASSWORD},
            cwd=self.cwd, timeout=timeout,
        )  # fmt: skip
        self.transcript.append((command, code, output))
        assert code == 0, f"README line failed (exit {code}):\n$ {command}\n{output}"
        assert "Traceback" not in output, output
        return output

    def stop(self) -> None:
        for process in self.background:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture
def fresh_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XNAT_", "PREFECT_"))}
    return env | {"HOME": str(home), "PREFECT_HOME": str(home / ".prefect"), "TERM": "dumb"}


def test_from_the_demo_to_your_xnat_runs_as_written(tmp_path: Path, fresh_env: dict[str, str]) -> None:
    blocks = console_blocks(README.read_text())
    rehearsal = _block_with(blocks, "emulator serve --port 8080")
    walkthrough = _block_with(blocks, "auth login --url https://xnat.example.org")
    port = _free_port()
    work = tmp_path / "work"
    work.mkdir()
    shell = Shell(
        work,
        fresh_env,
        {
            "--port 8080": f"--port {port}",
            "http://127.0.0.1:8080": f"http://127.0.0.1:{port}",
            "https://xnat.example.org": f"http://127.0.0.1:{port}",
            "--username me": "--username admin",
            "/data/export": str(tmp_path / "data" / "export"),
        },
    )
    try:
        for command in rehearsal:
            shell.run(command)
            if "emulator serve" in command:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    try:
                        if httpx.get(f"http://127.0.0.1:{port}/data/JSESSION", timeout=2).status_code:
                            break
                    except httpx.HTTPError:
                        time.sleep(0.3)
        for command in walkthrough:
            if not command.startswith("make "):
                shell.run(command)
    finally:
        shell.stop()
    said = "\n".join(output for _, _, output in shell.transcript)
    assert "Logged in to" in said and "XNAT_E00001" in said
    prearchive = next(out for cmd, _, out in shell.transcript if "prearchive list" in cmd)
    assert "prearchive is empty" in prearchive and "Direct-Archive" in prearchive and "--prearchive" in prearchive
    resource = next(out for cmd, _, out in shell.transcript if "resource upload" in cmd)
    assert "/resources/BIDS" in resource
    assert "Logged out" in shell.transcript[-1][2]


@pytest.mark.slow
@pytest.mark.prefect_server
def test_the_deployments_block_runs_as_written(
    tmp_path: Path, fresh_env: dict[str, str], private_prefect_server_url: str, xnat_emulator_factory
) -> None:
    """On a Prefect server of its own: the deploy replaces deployments of the same names, which
    other tests sharing a server use."""
    prefect_server_url = private_prefect_server_url
    xnat = xnat_emulator_factory(tmp_path / "xnat", user="svc-uploader", password=PASSWORD, projects=("STUDY1",))
    block = _block_with(console_blocks(README.read_text()), "prefect --no-prompt deploy --all")
    inbox = tmp_path / "srv" / "xnat-inbox"
    shell = Shell(
        REPO_ROOT,  # "run from the repository root": prefect.yaml is there
        fresh_env,
        {
            "http://127.0.0.1:4200/api": prefect_server_url,
            "https://xnat.example.org": xnat.url,
            "/srv/xnat-inbox": str(inbox),
            "worker start --pool xnat-process": "worker start --pool xnat-process --run-once",
        },
    )
    api = httpx.Client(base_url=prefect_server_url.rstrip("/") + "/", timeout=30)
    try:
        for command in block:
            if "prefect server start" in command:
                continue  # the suite's server stands in for it
            if command.startswith("export "):
                name, _, value = shell.map(command).removeprefix("export ").partition("=")
                shell.env[name] = value
                continue
            shell.run(command, timeout=300)
        assert inbox.is_dir()
        deployment = api.get("deployments/name/ingest-inbox/inbox-ingest").json()
        assert deployment["parameters"]["inbox_dir"] == str(inbox)
        assert deployment["schedules"][0]["active"] is True
        saved = api.post("block_documents/filter", json={}).json()
        assert "xnat-example-org-svc-uploader" in [b["name"] for b in saved]
    finally:
        shell.stop()
        api.close()
