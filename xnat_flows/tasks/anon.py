"""Prefect task of de-identification: ``anon check`` as a gate before an upload flow.

The task applies the script or profile in memory to the folder (nothing is written or sent),
publishes the report as a markdown artifact and, with ``fail_on_survivors`` (the default), fails
when identifying attributes survive or a file cannot be de-identified, so the upload that would
follow does not run. The artifact and the returned summary carry attribute names and counts,
never the original values (an artifact is stored on the Prefect server).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from xnat_flows.models import Deidentification, XnatConnection
from xnat_flows.tasks.hints import speaks_to_operator
from xnat_flows.transfer.deidentify import IdentifiersSurvive
from xnat_flows.transfer.scan import DicomFile

__all__ = ["AnonCheckSummary", "IdentifiersSurvive", "anon_check", "check_before_sending"]

if TYPE_CHECKING:
    from xnat_flows.anon.check import CheckedRules, CheckReport


class AnonCheckSummary(BaseModel):
    """What ``anon check`` found, as a flow's result: counts and names only, never a value from the files."""

    program: str
    digest: str
    files: int
    ok: bool
    surviving: list[str]
    allowed: list[str]
    burned_in_files: int
    failed_files: int


@task(name="anon-check", cache_policy=NO_CACHE, persist_result=False, retries=0)
@speaks_to_operator
def anon_check(
    folder: str,
    script: str | None = None,
    profile: str | None = None,
    options: list[str] | None = None,
    variables: dict[str, str] | None = None,
    allow: list[str] | None = None,
    fail_on_survivors: bool = True,
    artifact_key: str | None = "anon-check",
    deidentify: Deidentification | None = None,
    connection: XnatConnection | None = None,
    project: str | None = None,
) -> AnonCheckSummary:
    """Check ``script`` (DicomEdit 6 text) or ``profile`` (``basic`` + ``options``) against ``folder``.

    Or, with ``deidentify``, exactly what an upload flow given the same ``deidentify`` applies
    (XNAT's enabled scripts fetched with ``connection`` for ``project``, the script or its Block, the
    profile, in that order).

    A script that cannot run raises ``ScriptError`` (``InputError`` through ``deidentify``; line and
    column) at once.

    Args:
        folder: The folder of DICOM files to try the rules on, on the worker's host.
        script: DicomEdit 6 script text, or None.
        profile: ``basic``, or None.
        options: The Basic Profile's options (e.g. ``retain-uids``).
        variables: The script's variables (project, subject, session).
        allow: Attributes the site keeps on purpose: listed apart, not failures.
        fail_on_survivors: Raise ``IdentifiersSurvive`` when identifiers survive or a file cannot be
            de-identified.
        artifact_key: The markdown artifact's key.
        deidentify: An upload request's de-identification, instead of ``script``/``profile``.
        connection: The XNAT whose scripts ``deidentify.from_server`` fetches.
        project: The project those scripts are for; also the variable ``project`` unless
            ``variables`` gives it.

    Returns:
        The summary; the full report is the markdown artifact (values hidden).
    """
    from xnat_flows.anon import anonymizer_for
    from xnat_flows.anon.check import check_folder
    from xnat_flows.tasks.deidentify import anonymizer_for_request

    anonymizer: CheckedRules | None
    if deidentify is None:
        anonymizer = anonymizer_for(script=script, source="script", profile=profile, options=options or ())
    elif script is not None or profile is not None or options:
        raise ValueError("give deidentify, or script/profile/options, not both")
    else:
        anonymizer = anonymizer_for_request(connection, deidentify, project)
        if anonymizer is None:
            raise ValueError("deidentify asks for nothing: no script, Block, profile or XNAT's own scripts")
    given = ({"project": project} if project else {}) | (variables or {})
    report = check_folder(anonymizer, folder, given, allow=allow or ())
    return _published(report, artifact_key, fail_on_survivors)


@task(name="check-before-sending", cache_policy=NO_CACHE, persist_result=False, retries=0)
@speaks_to_operator
def check_before_sending(
    anonymizer: CheckedRules,
    sessions: list[tuple[dict[str, str], list[DicomFile]]],
    allow: list[str] | None = None,
    artifact_key: str | None = "anon-check",
) -> AnonCheckSummary:
    """An upload's gate (``Deidentification.require_clean``), before anything is sent.

    The rules tried on every planned file, with each session's own XNAT variables.

    Args:
        anonymizer: The compiled rules the upload applies (``prepare-deidentification``).
        sessions: The planned sessions: the variables XNAT passes a script for each
            (``transfer.deidentify.xnat_variables``; a C-STORE's routing), and its files.
        allow: Attributes the site keeps on purpose: listed apart, not a reason to stop.
        artifact_key: The markdown artifact's key.

    Returns:
        The summary, when nothing identifying survives.

    Raises:
        IdentifiersSurvive: Something identifying survives, or a file cannot be de-identified:
            the upload that follows does not run.
    """
    from xnat_flows.anon.check import check_sessions

    report = check_sessions(anonymizer, sessions, allow=allow or ())
    return _published(report, artifact_key, fail_on_survivors=True, stopped=True)


def _published(
    report: CheckReport, artifact_key: str | None, fail_on_survivors: bool, stopped: bool = False
) -> AnonCheckSummary:
    """The report as a markdown artifact (values hidden), and its summary.

    Returns:
        The summary.

    Raises:
        IdentifiersSurvive: The report is not ok and ``fail_on_survivors`` (``stopped``: an upload's gate,
            which sent nothing).
    """
    create_markdown_artifact(
        markdown=report.to_markdown(show_values=False),
        key=artifact_key,
        description=f"anon check of {report.program}",
    )
    summary = AnonCheckSummary(
        program=report.program,
        digest=report.digest,
        files=report.files,
        ok=report.ok,
        surviving=sorted(report.survivors),
        allowed=sorted(report.allowed),
        burned_in_files=len(report.burned_in),
        failed_files=len(report.failures),
    )
    if fail_on_survivors and not report.ok:
        raise IdentifiersSurvive.of(report, nothing_sent=stopped)
    return summary
