"""``xnat-flows emulator ...`` (owned by the emulator work)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import typer

from xnat_flows.cli.options import command_group

app = command_group(help="Run the bundled XNAT emulator (HTTP + DICOM receiver).")


def _parse_codes(values: list[str]) -> dict[str, int]:
    codes = {}
    for value in values:
        project, _, code = value.partition("=")
        if not project or not code.strip().lstrip("-").isdigit():
            raise typer.BadParameter(f"expected PROJECT=CODE, got {value!r}")
        codes[project] = int(code)
    return codes


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(8080, help="HTTP port (0 = any free port)."),
    data_dir: Path | None = typer.Option(None, help="State directory (kept across restarts); temp dir if omitted."),
    user: str = typer.Option("admin", help="The one user's name."),
    password: str = typer.Option("admin", help="The one user's password."),
    project: list[str] = typer.Option(["TEST"], "--project", help="Project to create at start (repeatable)."),
    prearchive_code: list[str] = typer.Option(
        [], "--prearchive-code", help="PROJECT=CODE (0 manual, 4 auto, 5 overwrite)."
    ),
    scp_port: int | None = typer.Option(None, help="Start the DICOM receiver on this port (0 = free port)."),
    scp_aet: str = typer.Option("XNAT", help="AE title of the DICOM receiver."),
    latency_ms: int = typer.Option(0, help="Added latency per HTTP response."),
    bandwidth_mbit: float | None = typer.Option(
        None, help="Cap on bytes received and sent, in Mbit/s, shared by all connections (default: no cap)."
    ),
    rebuild_idle_seconds: float = typer.Option(1.0, help="Idle seconds before a RECEIVING session is built/archived."),
    session_idle_timeout: float = typer.Option(900.0, help="JSESSION idle expiry in seconds."),
    anonymize: bool = typer.Option(
        False, help="Enable XNAT's default site anonymization script (applied on import; see docs/emulator.md)."
    ),
) -> None:
    """Serve the emulator until SIGINT/SIGTERM."""
    from xnat_flows.testing.emulator import XnatEmulator

    emulator = XnatEmulator(
        data_dir,
        host=host,
        port=port,
        user=user,
        password=password,
        projects=tuple(project),
        scp_port=scp_port,
        scp_aet=scp_aet,
        latency_ms=latency_ms,
        bandwidth_mbit=bandwidth_mbit,
        rebuild_idle_seconds=rebuild_idle_seconds,
        session_idle_timeout=session_idle_timeout,
        prearchive_codes=_parse_codes(prearchive_code),
        anonymize=anonymize,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        emulator.start()
    except OSError as exc:  # e.g. the port is taken: one line, not a traceback
        emulator.stop()
        where = f"{host}:{port}" + (f" or DICOM port {scp_port}" if scp_port else "")
        typer.secho(f"error: cannot listen on {where}: {exc.strerror or exc}", err=True, fg=typer.colors.RED)
        typer.echo("hint: pick another --port (0 = any free port), or stop what is using it", err=True)
        raise typer.Exit(1) from None
    try:
        typer.echo(f"XNAT emulator ready at {emulator.url}")  # exactly this line: scripts parse it
        if emulator.scp_port is not None:
            typer.echo(f"DICOM receiver {scp_aet} listening on {host}:{emulator.scp_port}")
        while not stop.wait(0.5):
            pass
    finally:
        emulator.stop()
