"""``xnat-flows emulator ...`` (owned by the emulator work)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Run the bundled XNAT emulator (HTTP + DICOM receiver).", no_args_is_help=True)
