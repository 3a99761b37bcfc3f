"""Flow ``ingest-inbox``: upload every completed session folder dropped into an inbox directory.

Meant for a scheduled deployment (see prefect.yaml). Each run:

1. takes back folders that a crashed run left in ``processing/`` (nothing is lost by a crash);
2. claims each dropped folder that has been quiet for ``quiet_seconds`` (an atomic lock + rename,
   so two runs never take the same folder);
3. routes it to project/subject/session (sidecar JSON, else templates over the DICOM header);
4. uploads it with the ``upload-dicom-session`` flow as a subflow (which verifies and emits the
   ``xnat.session.*`` events);
5. moves it to ``done/`` or ``failed/`` with a report JSON beside it. A connection failure leaves
   the folder in ``processing/`` so the next run tries again.

Re-running is safe: finished folders have left the inbox, and a re-sent upload replaces itself on
the server (XNAT names files from their UIDs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from pydantic import BaseModel, Field

from xnat_flows.client.errors import (
    AuthenticationError,
    InputError,
    NotFoundError,
    PermissionDeniedError,
    StorageFullError,
    TransientError,
    UnreachableError,
    XnatError,
)
from xnat_flows.events import emit_upload_failed, public_base_url, redact
from xnat_flows.flows.failures import failed_run
from xnat_flows.flows.upload import NotDeidentifiedError, UploadIncompleteError, upload_dicom_session
from xnat_flows.inbox import (
    FolderClaim,
    InboxLayout,
    candidate_folders,
    changes,
    claim_new,
    claim_orphan,
    folder_state,
    is_quiet,
    orphaned_folders,
    utc_now,
    write_json_atomic,
)
from xnat_flows.models import PROJECT_ID_PATTERN, Deidentification, UploadRequest, XnatConnection, ui_title
from xnat_flows.routing import Route, RoutingError, route_folder
from xnat_flows.tasks.connection import credentials_for, open_client, server_url_for_report
from xnat_flows.tasks.hints import speaks_to_operator
from xnat_flows.tasks.policies import retry_unless_permanent

Status = Literal["done", "failed", "retry"]


class InboxItem(BaseModel):
    """What happened to one session folder."""

    folder: str = Field(description="Folder name as dropped in the inbox.")
    status: Status
    location: str = Field(description="Where the folder is now (done/, failed/ or still processing/).")
    report: str | None = None
    project: str | None = None
    subject: str | None = None
    session: str | None = None
    experiment_id: str | None = None
    files_delivered: int = 0
    files_sent: int = 0
    recovered: bool = Field(default=False, description="Taken over from a run that stopped in the middle.")
    error: str | None = None


class InboxRunResult(BaseModel):
    """One inbox run: what became of each folder taken, and the folders left for another run."""

    items: list[InboxItem] = Field(default_factory=list)
    waiting: list[str] = Field(default_factory=list, description="Folders still changing (inside the quiet period).")
    busy: list[str] = Field(default_factory=list, description="Folders held by another live run.")
    untried: list[str] = Field(
        default_factory=list,
        description="Folders left where they were because the server refused the credentials earlier in the run.",
    )

    @property
    def failed(self) -> list[InboxItem]:
        """Folders moved to failed/."""
        return [item for item in self.items if item.status == "failed"]

    @property
    def retrying(self) -> list[InboxItem]:
        """Folders kept in processing/ for the next run."""
        return [item for item in self.items if item.status == "retry"]


class InboxFolderFailed(XnatError):
    """The end of a run in which folders went to failed/ or could not be uploaded (kept for the next run).

    The run shows as Failed, so alerting on failed runs fires. The message lists each folder's fate
    and cause.
    """

    default_hint = ""


@task(
    name="check-project",
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=retry_unless_permanent,
)
@speaks_to_operator
def check_project(connection: XnatConnection, project: str) -> str | None:
    """None when the project exists and is readable; else why not.

    Checked before uploading because XNAT files a session for an unknown project under
    "Unassigned" in the prearchive instead of refusing it.

    Args:
        connection: The XNAT and its credentials.
        project: The project ID.

    Returns:
        None, or the reason in words.
    """
    with open_client(connection) as client:
        try:
            client.require_project(project)
        except NotFoundError:
            return f"project {project!r} does not exist on the server (XNAT would file the session under Unassigned)"
        except PermissionDeniedError:
            return f"the account may not read project {project!r}"
    return None


@dataclass(frozen=True)
class _InboxRun:
    """What every folder of one run shares: the parameters, the server, the project check."""

    layout: InboxLayout
    project: str
    subject_template: str
    session_template: str
    sidecar_name: str
    transport: Literal["dicom-zip", "gradual-dicom"]
    workers: int
    direct_archive: bool
    per_study: bool
    connection: XnatConnection
    server_url: str
    deidentify: Deidentification = field(default_factory=Deidentification)
    project_problems: dict[str, str | None] = field(default_factory=dict)  # one look-up per project and run
    # Set when the server refused the Block's credentials: every further folder would be refused
    # alike, and each refused login counts towards XNAT locking the account.
    credentials_refused: list[str] = field(default_factory=list)

    def project_problem(self, project: str) -> str | None:
        if project not in self.project_problems:
            self.project_problems[project] = check_project(self.connection, project)
        return self.project_problems[project]


@flow(name="ingest-inbox", validate_parameters=True, flow_run_name="inbox {inbox_dir} -> {project}")
def ingest_inbox(
    inbox_dir: Annotated[str, ui_title("Inbox folder (on the worker's host)")],
    project: Annotated[str, ui_title("Project ID", pattern=PROJECT_ID_PATTERN)],
    subject_template: Annotated[str, ui_title("Subject label template")] = "{PatientID}",
    session_template: Annotated[str, ui_title("Session label template")] = "{PatientID}_{StudyDate}",
    quiet_seconds: Annotated[float, ui_title("Quiet period (s)", ge=0, le=86400)] = 60.0,
    transport: Annotated[Literal["dicom-zip", "gradual-dicom"], ui_title("Transport")] = "dicom-zip",
    workers: Annotated[int, ui_title("Parallel uploads", ge=1, le=64)] = 4,
    connection: Annotated[XnatConnection, ui_title("XNAT connection")] = XnatConnection(),
    sidecar_name: Annotated[str, ui_title("Sidecar file name")] = "xnat.json",
    direct_archive: Annotated[bool, ui_title("Direct-Archive")] = True,
    per_study: Annotated[bool, ui_title("One session per study")] = False,
    deidentify: Annotated[Deidentification, ui_title("De-identification")] = Deidentification(),
) -> InboxRunResult:
    """Upload each completed session folder of ``inbox_dir`` and file it under done/ or failed/.

    A folder the server could not take (unreachable, refused, incomplete upload) stays in
    processing/ for the next run, and the run ends Failed so that alerting on failed runs fires.

    Args:
        inbox_dir: Folder where session folders are dropped, on the host where the flow runs (the worker's), not
            the computer of this browser; done/, failed/ and processing/ are made inside. Set at deploy time from
            XNAT_INBOX_DIR.
        project: XNAT project ID for folders whose sidecar names none. Set at deploy time from XNAT_INBOX_PROJECT.
        subject_template: Subject label: a Python format string over DICOM keywords of the folder's first
            DICOM file, plus {folder}, e.g. {PatientID}.
        session_template: Session label, same form, e.g. {PatientID}_{StudyDate}.
        quiet_seconds: A folder is complete once nothing in it changed for this many seconds.
        transport: dicom-zip (one archive per batch) or gradual-dicom (one instance per request).
        workers: Parallel uploads per folder (batches, or connections for gradual-dicom).
        connection: The xnat-credentials Block to use (set at deploy time from XNAT_CREDENTIALS_BLOCK).
        sidecar_name: Name of a JSON file in a folder ({"project", "subject", "session"}) whose keys win over the templates.
        direct_archive: Straight into the archive (XNAT 1.8.3+); off: into the prearchive.
        per_study: A folder holding several studies becomes one session per study (label + 8 hex digits of its StudyInstanceUID).
        deidentify: De-identify each file as it is sent (a dicomedit-script Block or script text, the Basic
            Profile, XNAT's own scripts); a folder with files the script cannot take goes to failed/.

    Returns:
        Each folder taken and its fate (done, failed, retry), and the folders not taken; the run
        ends Failed when any folder was not uploaded.
    """
    logger = get_run_logger()
    if not inbox_dir.strip() or not project.strip():
        return failed_run(
            InputError(
                "the inbox deployment has no inbox directory or project",
                hint="Redeploy with XNAT_INBOX_DIR and XNAT_INBOX_PROJECT set (docs/deployments.md), or give "
                "inbox_dir and project in this run's parameters",
            )
        )
    try:
        server_url = credentials_for(connection).url
    except Exception as exc:
        # No Block, unknown Block, no credentials on the worker: nothing can be uploaded; say so as an upload failure.
        emit_upload_failed(server_url_for_report(connection), project, None, None, exc, source=inbox_dir)
        if isinstance(exc, XnatError):
            return failed_run(exc)
        raise
    layout = InboxLayout(Path(inbox_dir).expanduser().resolve())
    if not layout.root.is_dir():
        # A deployment's folder gone (unmounted, renamed) or a run started with a typo: one line, no traceback.
        return failed_run(
            InputError(
                f"the inbox folder {layout.root} does not exist on this worker's host (or is not a folder)",
                hint="Create it, or mount it where the worker runs, or start the run with the inbox_dir of an "
                "existing folder; to change the deployment's folder, redeploy with XNAT_INBOX_DIR",
            )
        )
    layout.ensure()
    run = _InboxRun(
        layout=layout,
        project=project,
        subject_template=subject_template,
        session_template=session_template,
        sidecar_name=sidecar_name,
        transport=transport,
        workers=workers,
        direct_archive=direct_archive,
        per_study=per_study,
        connection=connection,
        server_url=server_url,
        deidentify=deidentify,
    )
    result = InboxRunResult()

    for folder in orphaned_folders(layout):
        if run.credentials_refused:
            result.untried.append(folder.name)
            continue
        if not is_quiet(folder, quiet_seconds):  # still being written to (e.g. files arrived during its upload)
            result.waiting.append(folder.name)
            continue
        claim = claim_orphan(folder)
        if claim is None:
            result.busy.append(folder.name)
            continue
        if _last_attempt(claim.path).is_file():
            claim.recovered = False  # released by a run that could not reach XNAT, not left by a crash
            logger.info("%s waited in processing/ for XNAT; uploading it again", folder.name)
        else:
            logger.warning("%s was left in processing/ by a run that stopped; uploading it again", folder.name)
        result.items.append(_ingest(run, claim))

    for folder in candidate_folders(layout):
        if not is_quiet(folder, quiet_seconds):
            result.waiting.append(folder.name)
            continue
        if run.credentials_refused:
            result.untried.append(folder.name)
            continue
        claim = claim_new(layout, folder)
        if claim is None:
            result.busy.append(folder.name)
            continue
        result.items.append(_ingest(run, claim))

    _publish_summary(result)
    if result.waiting:
        logger.info("still within the %.0f s quiet period: %s", quiet_seconds, ", ".join(result.waiting))
    if result.failed or result.retrying or result.untried:
        return failed_run(InboxFolderFailed(_not_uploaded(result, layout)))
    return result


def _not_uploaded(result: InboxRunResult, layout: InboxLayout) -> str:
    """Each folder's fate with its cause.

    Folders that failed alike share one mention of the cause (an outage keeps every folder of the
    run for the same reason).

    Returns:
        One line naming every folder not uploaded, with its fate and cause.
    """
    fates: dict[tuple[str, str], list[str]] = {}
    for item in result.failed:
        fates.setdefault((f"moved to {layout.failed}", item.error or ""), []).append(item.folder)
    for item in result.retrying:
        fates.setdefault((f"kept in {layout.processing} for the next run", item.error or ""), []).append(item.folder)
    if result.untried:
        fates[("not tried (left where they are)", "the server refused the credentials")] = result.untried
    count = len(result.failed) + len(result.retrying) + len(result.untried)
    return f"{count} folder(s) not uploaded: " + "; ".join(
        f"{', '.join(folders)} {fate}: {error}" for (fate, error), folders in fates.items()
    )


def _last_attempt(path: Path) -> Path:
    return path.with_name(path.name + ".last-attempt.json")


def _announce_failure(run: _InboxRun, route: Route | None, error: str, source: Path) -> None:
    """``xnat.upload.failed`` for a folder whose upload flow never ran (so nobody else reports it).

    Routing, project check or the server before the first byte.
    """
    emit_upload_failed(
        run.server_url,
        route.project if route else run.project,
        route.subject if route else None,
        route.session if route else None,
        error,
        source=str(source),
    )


class FolderChangedError(XnatError):
    """Files of the folder were added, changed or removed while it was uploaded.

    Filing it as done would leave what arrived late unsent. It is kept for the next run, which sends
    it again.
    """


# Failures of the server or of the run's credentials, not of a folder: the folder is kept.
_NOT_THIS_FOLDERS_FAULT = (TransientError, AuthenticationError, UnreachableError, StorageFullError)


def _ingest(run: _InboxRun, claim: FolderClaim) -> InboxItem:
    """Route, upload and file one claimed folder; never raises for a problem of this folder alone."""
    logger = get_run_logger()
    report: dict[str, Any] = {
        "folder": claim.original_name,
        "claimed_at": utc_now(),
        "recovered_after_crash": claim.recovered,
        "flow_run_id": _flow_run_id(),
        "xnat_server": public_base_url(run.server_url),
        "transport": run.transport,
    }
    item = InboxItem(folder=claim.original_name, status="failed", location=str(claim.path), recovered=claim.recovered)
    route: Route | None = None
    last_attempt = _last_attempt(claim.path)  # survives a retry, read by people (and tells a release from a crash)
    uploading = False
    try:
        route = route_folder(claim.path, run.project, run.subject_template, run.session_template, run.sidecar_name)
        report["route"] = {
            "project": route.project,
            "subject": route.subject,
            "session": route.session,
            "sources": route.sources,
            "dicom_file": route.dicom_file,
        }
        item.project, item.subject, item.session = route.project, route.subject, route.session
        if problem := run.project_problem(route.project):
            raise RoutingError(
                f"{claim.original_name}: {problem}",
                hint="Fix the project in the sidecar or the deployment's parameters",
            )
        request = UploadRequest(
            source_dir=str(claim.path),
            project=route.project,
            subject=route.subject,
            session=route.session,
            transport=run.transport,
            workers=run.workers,
            direct_archive=run.direct_archive,
            per_study=run.per_study,
            verify=True,
            deidentify=run.deidentify,
        )
        uploading = True  # from here on the upload flow announces its own failures
        before = folder_state(claim.path)
        uploaded = upload_dicom_session(request=request, connection=run.connection)  # a failed run raises here
        if changed := changes(before, folder_state(claim.path)):
            raise FolderChangedError(
                f"{claim.original_name} changed while it was uploaded ({changed}): what was sent is in XNAT, "
                "the folder stays in processing/ and is sent again once it has been quiet"
            )
    except NotDeidentifiedError as exc:  # the same files fail the same way next run: the folder is filed
        return _file_failed(run, claim, item, report, route, uploading, exc)
    except (*_NOT_THIS_FOLDERS_FAULT, UploadIncompleteError, FolderChangedError) as exc:
        # The server is away, full, refused the credentials or part of the upload (connection refused,
        # 5xx after retries, batches that did not land): keep the folder for the next run, which
        # sends only what is missing. Nothing about the folder itself was wrong.
        item.status, item.error = "retry", redact(f"{type(exc).__name__}: {exc}")
        if isinstance(exc, AuthenticationError):
            run.credentials_refused.append(item.error)
        if not uploading:
            _announce_failure(run, route, item.error, claim.path)
        report.update(status="retry", error=item.error, finished_at=utc_now())
        write_json_atomic(last_attempt, report)
        claim.release()
        # The cause is in the run's final state (and, from a task or the upload run, in their logs): said once.
        logger.warning("%s stays in processing/ for the next run (%s)", claim.original_name, type(exc).__name__)
        return item
    except Exception as exc:  # noqa: BLE001 - any other failure is this folder's, reported and filed
        return _file_failed(run, claim, item, report, route, uploading, exc)

    sessions = [s.model_dump(mode="json") for s in uploaded.sessions]
    report.update(
        status="done",
        finished_at=utc_now(),
        sessions=sessions,
        files_delivered=uploaded.files_delivered,
        files_sent=uploaded.files_sent,
        bytes_sent=uploaded.bytes_sent,
        seconds=uploaded.seconds,
        skipped=uploaded.model_dump(mode="json", include={"skipped"})["skipped"],
    )
    moved, report_path = claim.finish(run.layout.done, report)
    last_attempt.unlink(missing_ok=True)
    item.status, item.location, item.report = "done", str(moved), str(report_path)
    item.files_delivered, item.files_sent = uploaded.files_delivered, uploaded.files_sent
    item.experiment_id = next((s.experiment_id for s in uploaded.sessions if s.experiment_id), None)
    logger.info(
        "%s -> %s/%s/%s (%s), moved to done/",
        claim.original_name,
        item.project,
        item.subject,
        item.session,
        item.experiment_id or "not verified",
    )
    return item


def _file_failed(
    run: _InboxRun,
    claim: FolderClaim,
    item: InboxItem,
    report: dict[str, Any],
    route: Route | None,
    uploading: bool,
    exc: Exception,
) -> InboxItem:
    """File a folder whose failure is its own under failed/, with its report."""
    item.error = redact(f"{type(exc).__name__}: {exc}")
    report.update(status="failed", error=item.error, hint=getattr(exc, "hint", None) or None, finished_at=utc_now())
    last_attempt = _last_attempt(claim.path)
    moved, report_path = claim.finish(run.layout.failed, report)
    last_attempt.unlink(missing_ok=True)
    item.location, item.report = str(moved), str(report_path)
    if not uploading:
        _announce_failure(run, route, item.error, moved)
    get_run_logger().error("%s moved to failed/ (%s; report %s)", claim.original_name, type(exc).__name__, report_path)
    return item


def _flow_run_id() -> str | None:
    context = FlowRunContext.get()
    return str(context.flow_run.id) if context and context.flow_run else None


def _publish_summary(result: InboxRunResult) -> None:
    if FlowRunContext.get() is None or not (result.items or result.waiting):
        return
    from prefect.artifacts import create_table_artifact

    rows = [
        {
            "folder": i.folder,
            "status": i.status,
            "session": f"{i.project}/{i.subject}/{i.session}",
            "experiment": i.experiment_id,
            "files": i.files_sent,
            "error": i.error,
        }
        for i in result.items
    ] + [{"folder": name, "status": "waiting (quiet period)"} for name in result.waiting]
    create_table_artifact(table=rows, key="ingest-inbox", description="Inbox folders handled by this run")
