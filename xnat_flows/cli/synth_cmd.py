"""``xnat-flows synth`` (owned by the synthetic-data work)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Literal

import typer

from xnat_flows.cli.options import counted


def synth(
    out_dir: Annotated[Path, typer.Argument(help="Directory to write the studies into (created if missing).")],
    studies: Annotated[int, typer.Option(min=1, help="Number of studies.")] = 1,
    series: Annotated[int, typer.Option(min=1, help="Series per study.")] = 3,
    instances: Annotated[int, typer.Option(min=1, help="Instances per study, spread over its series.")] = 30,
    instance_kb: Annotated[int, typer.Option(min=1, help="Approximate size of each instance in KiB.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed: the same seed writes the same bytes.")] = 0,
    modality: Annotated[str, typer.Option(help="MR or CT.")] = "MR",
    patient_id: Annotated[
        str | None, typer.Option(help="One PatientID for all studies (default: one per study).")
    ] = None,
    project: Annotated[
        str | None, typer.Option(help="Write 'Project:X' into PatientComments so XNAT routes the data (C-STORE).")
    ] = None,
    subject: Annotated[str | None, typer.Option(help="With --project: also 'Subject:Y'.")] = None,
    session: Annotated[str | None, typer.Option(help="With --project: also 'Session:Z'.")] = None,
    junk: Annotated[bool, typer.Option("--junk", help="Add DICOMDIR, hidden, text/PDF and truncated files.")] = False,
    pixels: Annotated[
        Literal["phantom", "random"],
        typer.Option(
            help="Pixel data: a noisy head phantom that compresses as real MR/CT does (~2x gzip), or random bytes."
        ),
    ] = "phantom",
) -> None:
    """Write synthetic DICOM studies laid out like a scanner export."""
    from xnat_flows.testing.synth import SOP_CLASS_BY_MODALITY, SynthRouting, write_studies

    if modality.upper() not in SOP_CLASS_BY_MODALITY:
        raise typer.BadParameter(f"expected one of {', '.join(SOP_CLASS_BY_MODALITY)}", param_hint="--modality")
    if (subject or session) and not project:
        raise typer.BadParameter("--subject/--session need --project", param_hint="--project")
    routing = SynthRouting(project, subject, session) if project else None
    started = time.perf_counter()
    manifest = write_studies(
        out_dir,
        studies=studies,
        series=series,
        instances=instances,
        instance_kb=instance_kb,
        seed=seed,
        junk=junk,
        modality=modality,
        patient_id=patient_id,
        routing=routing,
        pixels=pixels,
    )
    seconds = time.perf_counter() - started
    typer.echo(
        f"wrote {counted(len(manifest.files), 'instance')} in {counted(len(manifest.study_uids), 'study')}, "
        f"{manifest.total_bytes / 1e6:.1f} MB, {counted(len(manifest.junk), 'junk file')} to {out_dir} in {seconds:.1f} s"
    )
