"""The de-identification options every upload command shares (``session upload``, ``session
upload-dicom``, ``inbox``), declared once, and the one function that turns them into an
anonymizer before anything is scanned or sent (docs/anonymization.md)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from xnat_flows.client.client import XnatClient
    from xnat_flows.transfer.deidentify import Anonymizer

AnonScriptOption = Annotated[
    Path | None,
    typer.Option(
        "--anon-script",
        exists=True,
        dir_okay=False,
        readable=True,
        help="De-identify every file with this DicomEdit 6 script as it is sent (the originals are not changed).",
    ),
]
AnonProfileOption = Annotated[
    str | None,
    typer.Option(
        "--anon-profile",
        help="De-identify with DICOM's Basic Profile: basic[,option...] (e.g. basic,retain-uids).",
    ),
]
AnonFromServerOption = Annotated[
    bool,
    typer.Option(
        "--anon-from-server",
        help="De-identify with XNAT's own enabled site and project scripts before sending "
        "(XNAT is then asked not to apply them again).",
    ),
]

AnonAllowUrlOption = Annotated[
    list[str] | None,
    typer.Option(
        "--anon-allow-url",
        metavar="PREFIX",
        help="Let a script's getURL fetch values from URLs starting with PREFIX (repeatable); a request "
        "carries what its URL holds. Without it a script calling getURL is refused.",
    ),
]

AnonRequireCleanOption = Annotated[
    bool,
    typer.Option(
        "--anon-require-clean",
        help="Before sending, try the rules on every file (as `xnat-flows anon check`) and send nothing if an "
        "identifying attribute survives them or a file cannot be de-identified.",
    ),
]
AnonAllowOption = Annotated[
    list[str] | None,
    typer.Option(
        "--anon-allow",
        metavar="NAME",
        help="With --anon-require-clean: an identifying attribute the site keeps on purpose (repeatable): a "
        "keyword (StudyDate), a tag (0008,0020), 'private', or a profile option (retain-uids).",
    ),
]


def anonymizer_from_options(
    script: Path | None,
    profile: str | None,
    from_server: bool,
    *,
    allowed_urls: list[str] | None = None,
    project: str | None,
    open_client: Callable[[], AbstractContextManager[XnatClient]],
) -> Anonymizer | None:
    """The anonymizer the options ask for, every script compiled (an error stops here, exit 2,
    with line and column); None without any of the options."""
    from xnat_flows.client.errors import InputError
    from xnat_flows.transfer.deidentify import build_anonymizer

    server_scripts: list[tuple[str, str]] = []
    if from_server:
        from xnat_flows.client.anon_scripts import scripts_to_apply

        with open_client() as client:
            server_scripts = scripts_to_apply(client, project)
    user_script = None
    if script is not None:
        try:
            user_script = (str(script), script.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"Cannot read the script {script}: {exc}") from None
    return build_anonymizer(
        server_scripts=server_scripts, script=user_script, profile=profile, allowed_urls=allowed_urls or ()
    )
