"""What to do, in the command line's terms: flags, commands, environment variables.

The library's errors carry facts (``XnatError.reason``, status, URL, the server's message) and a
hint any reader understands; ``for_cli`` replaces the hint where the command line has a more
direct answer (the flag to pass, the command to run). The Prefect layer has its own table
(``tasks.hints``).
"""

from __future__ import annotations

from xnat_flows.client.errors import AuthenticationError, UnsupportedServerError, XnatError, reworded
from xnat_flows.transfer.scan import IncompleteExportError

# Where a prearchive session's status is seen, and how a CONFLICT entry is archived, from here.
STATUS_SHOWN_BY = "xnat-flows prearchive list"
ARCHIVE_CONFLICT_WITH = (
    "find it with `xnat-flows prearchive list -P PROJECT` and archive it with "
    "`xnat-flows prearchive archive PROJECT TIMESTAMP NAME --overwrite delete`"
)

CHECK_DELIVERED_WITH = "`xnat-flows auth login` lets a re-run check them"

BY_REASON: dict[str, str] = {
    "no-password": "Set XNAT_USER and XNAT_PASS, pass --username/--password, or run `xnat-flows auth login`",
    "session-ended": "Run `xnat-flows auth login` (in a script: `... | xnat-flows auth login --password-stdin`)",
    "no-url": "Pass --url, set XNAT_URL, or add a profile with a url to config.toml in the xnat-flows profile "
    "directory",
    "ca-bundle": "Point XNAT_CA_BUNDLE/ca_bundle at a PEM file",
    "archive-wait-timeout": "Check the prearchive (xnat-flows prearchive list) for a session stuck in RECEIVING, "
    "CONFLICT or ERROR.",
    "prearchive-still-building": "XNAT builds a session once no file has arrived for a while; wait longer "
    "(--wait-seconds) or check the upload.",
    "prearchive-conflict": "Choose how to merge it: overwrite 'append' adds scans and files, 'delete' also replaces "
    "overlapping files (CLI: --overwrite append|delete)",
    "prearchive-session-missing": "List the prearchive (xnat-flows prearchive list --project P) for the right "
    "timestamp and name.",
    "import-redirected": "An authentication or proxy problem (a login page or single sign-on in front of XNAT): "
    "check the URL is XNAT's base URL and log in again (xnat-flows auth login)",
    "several-studies": "Upload each study as its own session with --per-study (labels get the session label, _ "
    "and 8 hex digits of the study's UID), or point at one study's directory",
    "other-subject": "Check the subject: to add to that session, give its subject (-S); to keep this upload apart, "
    "give it a label of its own (-E). `xnat-flows prearchive list -P PROJECT` and XNAT's session page show which "
    "subject holds the session",
    "other-subject-receiving": "Check the subject (-S), or give this upload a label of its own (-E)",
    "other-study": "Choose a session label of its own (-E/--session, or --per-study), or, if the two studies must "
    "share one session, ask for it explicitly (allow_other_study=True; CLI --into-other-study)",
    "no-dicom-files": "Give the folder that holds the DICOM export",
    "per-study-other-label": "Upload again with -E {label} --per-study to complete that session",
    "no-anon-script": "Drop --anon-from-server to send as XNAT would receive it, or name a script (--anon-script) "
    "or the Basic Profile (--anon-profile basic)",
    "identifiers-survive": "`xnat-flows anon check` with the same options shows each one with an example; change "
    "the rules, or name what the site keeps on purpose with --anon-allow NAME",
}

BY_CLASS: dict[type[XnatError], str] = {
    AuthenticationError: "Check the user name and password (XNAT_USER/XNAT_PASS or your profile); if the account "
    "has too many open sessions, ask an admin to end them",
    UnsupportedServerError: "Upgrade XNAT, or upload through the prearchive instead (--prearchive)",
    IncompleteExportError: "Wait until the export has finished writing and run the same command again; to send the "
    "other files without the cut ones, pass --skip-truncated",
}


def cli_hint(exc: XnatError) -> str:
    """The hint for a person at the command line: by the error's reason, else by its class when the
    hint is the class's own, else the hint the error carries."""
    return reworded(exc, BY_REASON, BY_CLASS)


def for_cli(exc: XnatError) -> XnatError:
    """``exc`` with its hint in the command line's terms (the same error, for raising on)."""
    exc.hint = cli_hint(exc)
    return exc
