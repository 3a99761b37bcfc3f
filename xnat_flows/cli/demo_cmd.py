"""``xnat-flows demo``: the README's main job, on the embedded default.

Starts the bundled XNAT emulator, writes a synthetic scanner export, uploads it through the
``upload-dicom-session`` Prefect flow (on Prefect's local API: nothing to start by hand),
verifies it, and prints where it landed and how fast it went.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Literal

import typer


def demo(
    workers: Annotated[int, typer.Option(min=1, max=64, help="Parallel uploads (batches).")] = 4,
    instances: Annotated[int, typer.Option(min=1, help="DICOM instances in the synthetic study.")] = 600,
    instance_kb: Annotated[int, typer.Option(min=1, help="Approximate size of each instance (KiB).")] = 128,
    transport: Annotated[
        Literal["dicom-zip", "gradual-dicom"], typer.Option(help="REST import handler.")
    ] = "dicom-zip",
    archive_format: Annotated[Literal["tar", "zip"], typer.Option(help="Archive format of each batch.")] = "tar",
) -> None:
    """Upload a synthetic study to the emulator via Prefect.

    Starts the bundled emulator, uploads through the upload-dicom-session flow and verifies it.
    """
    with tempfile.TemporaryDirectory(prefix="xnat-flows-demo-") as tmp:
        work = Path(tmp)
        # A private profile: the demo's token must not land in (or come from) the user's own.
        os.environ["XNAT_FLOWS_HOME"] = str(work / "profile")
        isolate_prefect(work / "prefect")
        from xnat_flows.cli.prefect_server import quiet_prefect_for_cli_runs

        quiet_prefect_for_cli_runs()

        from pydantic import SecretStr

        from xnat_flows.client.credentials import keep_password_in_process
        from xnat_flows.testing import XnatEmulator
        from xnat_flows.testing.synth import write_studies

        export = work / "scanner-export"
        manifest = write_studies(export, studies=1, series=4, instances=instances, instance_kb=instance_kb, seed=2026)
        typer.echo(
            f"Synthetic scanner export: {len(manifest.files)} instances, {manifest.total_bytes / 1e6:.1f} MB in {export}"
        )
        with XnatEmulator(data_dir=work / "xnat", projects=("DEMO",), password="demo-password") as xnat:
            url = xnat.url
            typer.echo(f"XNAT emulator (XNAT 1.9 REST API) at {url}, project DEMO")
            # The password reaches the flow in this process's memory: never a flow-run parameter,
            # never the environment (Prefect's temporary server child would inherit it).
            keep_password_in_process(url, "admin", SecretStr("demo-password"))

            from xnat_flows.cli.prefect_server import ephemeral_server_dies_with_this_process
            from xnat_flows.flows.upload import upload_dicom_session
            from xnat_flows.models import UploadRequest, XnatConnection

            request = UploadRequest(
                source_dir=str(export),
                project="DEMO",
                subject="DEMO_S01",
                session="DEMO_S01_MR1",
                transport=transport,
                workers=workers,
                archive_format=archive_format,
            )
            typer.echo(
                "Starting Prefect's temporary API server for the flow run (its own database in "
                f"{work / 'prefect'}; 10-30 s)..."
            )
            with ephemeral_server_dies_with_this_process():
                result = upload_dicom_session(request, XnatConnection(url=xnat.url, username="admin"))

        typer.echo("")
        for session in result.sessions:
            typer.echo(f"Session {session.project}/{session.subject}/{session.session}")
            typer.echo(f"  landed at   {url}{session.session_uri} (experiment {session.experiment_id})")
            typer.echo(
                f"  verified    {session.verified} ({session.files_sent} files sent; missing: {session.missing or 'none'})"
            )
        typer.echo(
            f"  throughput  {result.bytes_sent / 1e6:.1f} MB in {result.upload_seconds:.2f} s = {result.throughput_mb_s:.1f} MB/s "
            f"({transport}, {workers} workers, {archive_format}); whole flow run {result.seconds:.1f} s"
        )
        typer.echo(
            f"The XNAT emulator and Prefect's temporary server have stopped; their data (archive, prearchive, "
            f"flow-run database) was in {work} and is removed with it."
        )
        typer.echo(
            "Next: your own XNAT (README, 'From the demo to your XNAT'), or `xnat-flows emulator serve` to keep one running."
        )
        if not result.ok:
            raise typer.Exit(6)


def isolate_prefect(home: Path) -> None:
    """The demo's flow run goes to a Prefect home and temporary server of its own, never to the
    user's ~/.prefect database or configured server (where a run against an emulator that is gone
    would stay listed). Its console shows the flow run's own lines, not every task's or the
    temporary server's (set before Prefect is imported: it configures logging then)."""
    for name in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH"):
        os.environ.pop(name, None)
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"  # "Starting temporary server ..." and the like
    os.environ["PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL"] = "INFO"
    os.environ["PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL"] = "WARNING"
    os.environ["PREFECT_SERVER_LOGGING_LEVEL"] = "WARNING"
