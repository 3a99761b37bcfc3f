"""XNAT's own anonymization scripts, read from its configuration service.

XNAT keeps its DicomEdit scripts in the configuration service under the tool ``anon``
(xnat-web ``DicomEdit.ToolName``): the site-wide script at the path ``script``, a project's at
``/projects/{project}`` in that project's scope (``DicomEdit.buildScriptPath``). The REST face of
the service (xnat-web ``ConfigResource``) answers ``GET /data/config/anon/script?format=json``
and ``GET /data/projects/{P}/config/anon/projects/{P}?format=json`` (its ``fixAnonPath`` maps that
path onto the stored one) with one ResultSet row: ``contents``, ``status`` (``enabled`` or
``disabled``), ``version``, ``user``, ``create_date``, ``reason``; 404 when there is none. XNAT
applies a script only while its status is ``enabled`` (``AnonymizerA``: "Anonymization is not
enabled in the current configuration, nothing to do"), and so does this module's caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

from xnat_flows.client.client import XnatClient
from xnat_flows.client.errors import InputError, NotFoundError

SITE_SCRIPT_PATH = "/data/config/anon/script"
ENABLED = "enabled"


def project_script_path(project: str) -> str:
    """Where XNAT's configuration service keeps ``project``'s anonymization script.

    Args:
        project: The project's ID.

    Returns:
        The REST path (xnat-web ``DicomEdit.buildScriptPath``).
    """
    project = quote(project, safe="")
    return f"/data/projects/{project}/config/anon/projects/{project}"


@dataclass(frozen=True)
class ServerScript:
    """One of XNAT's anonymization scripts as its configuration service holds it."""

    scope: Literal["site", "project"]
    project: str | None
    contents: str
    enabled: bool
    version: str = ""

    @property
    def name(self) -> str:
        """How messages and ``ScriptError`` name it: ``site script v3``, ``project P1 script v2``."""
        where = "site script" if self.scope == "site" else f"project {self.project} script"
        return f"{where} v{self.version}" if self.version else where


def _read(client: XnatClient, path: str, scope: Literal["site", "project"], project: str | None) -> ServerScript | None:
    try:
        rows = client.get_rows(path)
    except NotFoundError:  # no such configuration: XNAT applies nothing
        return None
    if not rows:
        return None
    row = rows[0]
    return ServerScript(
        scope=scope,
        project=project,
        contents=row.get("contents", ""),
        enabled=row.get("status", "").lower() in (ENABLED, "true"),
        version=row.get("version", ""),
    )


def site_script(client: XnatClient) -> ServerScript | None:
    """The site-wide script (enabled or not), or None when the site has none.

    Args:
        client: A client on the server.

    Returns:
        The script, or None.
    """
    return _read(client, SITE_SCRIPT_PATH, "site", None)


def project_script(client: XnatClient, project: str) -> ServerScript | None:
    """``project``'s script (enabled or not), or None when the project has none.

    Args:
        client: A client on the server.
        project: The project's ID.

    Returns:
        The script, or None.
    """
    return _read(client, project_script_path(project), "project", project)


def enabled_scripts(client: XnatClient, project: str | None) -> list[ServerScript]:
    """The scripts XNAT would apply to a file for ``project``, in XNAT's order.

    The site script (on receipt, xnat-web ``GradualDicomImporter``), then the project's (on
    archiving, ``ProjectAnonymizer``). Disabled and empty scripts are left out.

    Args:
        client: A client on the server.
        project: The project's ID, or None for the site script only.

    Returns:
        The enabled scripts, site first.
    """
    found = [site_script(client)] + ([project_script(client, project)] if project else [])
    return [script for script in found if script is not None and script.enabled and script.contents.strip()]


def scripts_to_apply(client: XnatClient, project: str | None) -> list[tuple[str, str]]:
    """(name, text) of the scripts XNAT would apply (``enabled_scripts``).

    None is an error: an upload asked to be de-identified by XNAT's scripts must not go out as it is.

    Args:
        client: A client on the server.
        project: The project's ID, or None for the site script only.

    Returns:
        Each script's name (as messages name it) and text, in XNAT's order.

    Raises:
        InputError: The server has no enabled script for the site or the project.
    """
    found = enabled_scripts(client, project)
    if not found:
        raise InputError(
            f"{client.base_url} has no enabled anonymization script for the site"
            + (f" or project {project}" if project else "")
            + ": nothing to de-identify with, nothing was sent",
            reason="no-anon-script",
        )
    return [(script.name, script.contents) for script in found]
