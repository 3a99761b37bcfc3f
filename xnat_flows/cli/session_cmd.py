"""``xnat-flows session upload`` (REST Import API) and ``session send-dicom`` (C-STORE; named as the
``send-dicom`` flow; ``upload-dicom``, the spelling of xnatctl's upload guide, stays as a hidden alias)."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from xnat_flows.cli.anon_options import (
    AnonAllowOption,
    AnonAllowUrlOption,
    AnonFromServerOption,
    AnonProfileOption,
    AnonRequireCleanOption,
    AnonScriptOption,
    anonymizer_from_options,
)
from xnat_flows.cli.hints import ARCHIVE_CONFLICT_WITH, CHECK_DELIVERED_WITH, STATUS_SHOWN_BY, cli_hint
from xnat_flows.cli.options import (
    EXIT_CONFLICT,
    EXIT_PARTIAL,
    Connection,
    JsonOption,
    VerifyTimeoutOption,
    command_group,
    counted,
    sends_data,
    warn,
    with_connection,
)

if TYPE_CHECKING:
    from xnat_flows.client.client import XnatClient
    from xnat_flows.client.credentials import Credentials
    from xnat_flows.client.errors import XnatError
    from xnat_flows.models import UploadRequest
    from xnat_flows.transfer.cstore.results import SendResult
    from xnat_flows.transfer.cstore.sequence import DirectSteps
    from xnat_flows.transfer.scan import ScanResult
    from xnat_flows.transfer.upload_result import UploadResult

# Options of both uploads' scan (the same scanner for REST and C-STORE)
DuplicatesOption = Annotated[
    Literal["newest", "oldest", "stop"],
    typer.Option(
        "--duplicates", help="Different files with one SOP Instance UID: send the newest/oldest by mtime, or stop."
    ),
]
SkipTruncatedOption = Annotated[
    bool,
    typer.Option(
        "--skip-truncated",
        help="Send the other files when some are cut short (default: stop, exit 6: an export still being written).",
    ),
]

app = command_group(help="Upload DICOM sessions (REST Import API or DICOM C-STORE).")


@app.command("upload")
@with_connection
def upload(
    source: Annotated[Path, typer.Argument(help="Directory of DICOM files (scanned recursively).")],
    project: Annotated[str, typer.Option("--project", "-P", help="XNAT project ID.")],
    subject: Annotated[str, typer.Option("--subject", "-S", help="Subject label.")],
    session: Annotated[str, typer.Option("--session", "-E", help="Session (experiment) label.")],
    workers: Annotated[
        int, typer.Option("--workers", min=1, max=64, help="Parallel uploads (DICOM-zip: batches).")
    ] = 4,
    archive_format: Annotated[
        Literal["auto", "tar", "tgz", "zip"],
        typer.Option(
            "--archive-format", help="Format of each batch; auto: tgz on a slow link (round trip >= 5 ms), else tar."
        ),
    ] = "auto",
    direct_archive: Annotated[
        bool, typer.Option("--direct-archive/--prearchive", help="Archive directly (XNAT 1.8.3+) or stage.")
    ] = True,
    archive_when_complete: Annotated[
        bool,
        typer.Option(
            "--archive-when-complete/--archive-when-idle",
            help="Direct-Archive: ask XNAT (1.8.4+) to archive the session once every file is in, "
            "or leave it to XNAT's idle interval (5 min by default).",
        ),
    ] = True,
    gradual: Annotated[bool, typer.Option("--gradual", help="gradual-DICOM: one instance per request.")] = False,
    per_study: Annotated[
        bool, typer.Option("--per-study", help="One session per study found (SESSION_ + 8 hex digits of its UID).")
    ] = False,
    into_other_study: Annotated[
        bool, typer.Option("--into-other-study", help="Upload even into a session holding another study.")
    ] = False,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Read the session back and compare.")] = True,
    verify_timeout: VerifyTimeoutOption = 600.0,
    duplicates: DuplicatesOption = "newest",
    skip_truncated: SkipTruncatedOption = False,
    flow: Annotated[bool, typer.Option("--flow", help="Run as the Prefect flow upload-dicom-session.")] = False,
    anon_script: AnonScriptOption = None,
    anon_profile: AnonProfileOption = None,
    anon_from_server: AnonFromServerOption = False,
    anon_allow_url: AnonAllowUrlOption = None,
    anon_require_clean: AnonRequireCleanOption = False,
    anon_allow: AnonAllowOption = None,
    as_json: JsonOption = False,
    *,
    connection: Connection,
) -> None:
    """Upload a directory through the REST Import API.

    DICOM-zip by default (--gradual: gradual-DICOM). Needs no connection options after
    `xnat-flows auth login`. --anon-script/--anon-profile/--anon-from-server de-identify every
    file as it is sent (docs/anonymization.md).
    """
    from xnat_flows.transfer.journal import UploadJournal
    from xnat_flows.transfer.scan import scan_directory
    from xnat_flows.transfer.session import plan_sessions, upload_session
    from xnat_flows.transfer.target import UploadTarget
    from xnat_flows.transfer.upload import choose_archive_format

    sends_data()
    _gate_needs_rules(anon_require_clean, anon_script, anon_profile, anon_from_server)
    # Local input first: a bad label, path or study mix fails before anything is sent.
    target = UploadTarget(
        project=project,
        subject=subject,
        session=session,
        direct_archive=direct_archive,
        archive_when_complete=archive_when_complete,
        prevent_anon=anon_from_server,
    )
    if flow:
        # The flow's own request model (its run form), imported only here: it imports Prefect,
        # which costs an upload without --flow a second of CPU (bench/bench_peers.py). Prefect
        # reads its settings when first imported, so the CLI's settings for it come first.
        from xnat_flows.cli.prefect_server import quiet_prefect_for_cli_runs

        quiet_prefect_for_cli_runs()
        from xnat_flows.models import UploadRequest

        request = UploadRequest(
            source_dir=str(source),
            project=project,
            subject=subject,
            session=session,
            workers=workers,
            archive_format=archive_format,
            direct_archive=direct_archive,
            archive_when_complete=archive_when_complete,
            per_study=per_study,
            verify=verify,
            verify_timeout_seconds=verify_timeout,
            transport="gradual-dicom" if gradual else "dicom-zip",
            allow_other_study=into_other_study,
            duplicates=duplicates,
            skip_truncated=skip_truncated,
            deidentify=_deidentification(
                (anon_script, anon_profile, anon_from_server, anon_allow_url or []),
                require_clean=anon_require_clean,
                allow=anon_allow or [],
            ),
        )
        with connection.client(projects=(project,)) as client:
            credentials = client.credentials
        _print_result(_upload_with_flow(request, credentials, connection.profile), as_json=as_json)
        return
    # Scripts compile before anything is read or sent: an error stops here (exit 2, line:column).
    anonymizer = anonymizer_from_options(
        anon_script,
        anon_profile,
        anon_from_server,
        allowed_urls=anon_allow_url,
        project=project,
        open_client=lambda: connection.client(projects=(project,)),
    )
    scan = scan_directory(source, duplicates=duplicates, skip_truncated=skip_truncated)
    plan_sessions(scan, target, per_study=per_study)
    label = "gradual-DICOM" if gradual else "DICOM-zip"
    with connection.client(projects=(project,)) as client:
        if archive_format == "auto" and not gradual:
            archive_format, why = choose_archive_format(client)
            if not as_json:
                typer.echo(f"archive format: {archive_format} ({why})")
        if anon_require_clean and not as_json:  # ~1 ms a file before the first request: say why it waits
            typer.echo(f"checking the de-identification of {counted(len(scan.files), 'file')} before sending")
        bar = _progress_bar(label, enabled=not as_json, timed=True)
        with bar as progress:
            result = upload_session(
                client,
                scan,
                target,
                workers=workers,
                fmt=archive_format if archive_format != "auto" else "tar",
                gradual=gradual,
                per_study=per_study,
                journal=UploadJournal(),
                progress=progress,
                verify=verify,
                verify_timeout=verify_timeout,
                allow_other_study=into_other_study,
                anonymizer=anonymizer,
                require_clean=anon_require_clean,
                allow=anon_allow or (),
            )
    _print_result(
        result,
        as_json=as_json,
        sending_seconds=bar.sending_seconds,
        before_sending=bar.seconds_before_sending,
        scan=scan,
        duplicates=duplicates,
    )


def _upload_with_flow(request: UploadRequest, credentials: Credentials, profile: str | None) -> UploadResult:
    """``upload --flow``: the same request run as the ``upload-dicom-session`` flow, in this process,
    on Prefect's temporary server; the flow's result is the library's, printed by the same printer."""
    from xnat_flows.cli.prefect_server import ephemeral_server_dies_with_this_process, quiet_prefect_for_cli_runs
    from xnat_flows.client.credentials import keep_password_in_process
    from xnat_flows.client.errors import XnatError

    quiet_prefect_for_cli_runs()
    from xnat_flows.flows.upload import upload_dicom_session
    from xnat_flows.models import XnatConnection

    if credentials.password is not None:
        # The flow runs in this process: it finds the password here (for a re-login when the
        # session expires mid-run). Never the environment, which Prefect's server child inherits.
        keep_password_in_process(credentials.url, credentials.username, credentials.password)
    with ephemeral_server_dies_with_this_process():
        try:
            return upload_dicom_session(
                request, XnatConnection(url=credentials.url, username=credentials.username or "", profile=profile or "")
            )
        except XnatError:
            raise
        except Exception as exc:  # noqa: BLE001 - any flow failure becomes one CLI error
            raise XnatError(f"the flow run failed: {exc}", hint="See the flow run's logs in Prefect") from None


def _print_result(
    result: UploadResult,
    *,
    as_json: bool,
    sending_seconds: float | None = None,
    before_sending: float | None = None,
    scan: ScanResult | None = None,
    duplicates: str = "newest",
) -> None:
    """The one printer of a REST upload's result (run by the library or by the flow): text or --json,
    then the exit code (5: XNAT parked it in CONFLICT; 3: not everything is in XNAT)."""
    if as_json:
        summary = _summary(result, sending_seconds, before_sending)
        if scan is not None:
            summary["conflicts"] = [[v.relpath for v in versions] for versions in scan.conflicts]
        typer.echo(json.dumps(summary, indent=2))
    else:
        _report(result, sending_seconds, before_sending)
        if scan is not None:
            _report_conflicts(scan, duplicates)
    if result.in_conflict:
        raise typer.Exit(EXIT_CONFLICT)  # nothing is lost: it waits in the prearchive for a person
    if not result.ok:
        raise typer.Exit(EXIT_PARTIAL)


def _gate_needs_rules(require_clean: bool, *rules: object) -> None:
    """--anon-require-clean without rules: said in the command line's words before anything else
    (the library and the flow request refuse it too, in theirs)."""
    from xnat_flows.client.errors import InputError

    if require_clean and not any(rules):
        raise InputError(
            "--anon-require-clean checks de-identification rules, and none were given",
            hint="Add --anon-script FILE, --anon-profile basic or --anon-from-server",
        )


def _deidentification(
    anon: tuple[Path | None, str | None, bool, list[str]], *, require_clean: bool, allow: list[str]
) -> Any:
    """The --anon-* options as a flow request's ``deidentify`` (the script's text travels, not its path)."""
    from xnat_flows.client.errors import InputError
    from xnat_flows.models import Deidentification

    script, profile, from_server, allowed_urls = anon
    try:
        text = script.read_text(encoding="utf-8") if script is not None else ""
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"Cannot read the script {script}: {exc}") from None
    return Deidentification(
        script=text,
        profile=profile or "",
        from_server=from_server,
        allowed_urls=allowed_urls,
        require_clean=require_clean,
        allow=allow,
    )


class _progress_bar:
    """A rich progress bar fed by the library's thread-safe progress callback; nothing at all when
    stdout is not a terminal (a pipe or a log gets the per-session lines of the report instead).

    ``timed``: the callback is taken even without a bar, to time the sending (from the first report,
    which the library makes as sending starts, to the last, when XNAT answered the last batch or
    instance): the bar's rate and the summary's are that one measure, bytes / sending seconds, so
    they end equal. What came before the first request (the plan, the de-identification check of
    ``--anon-require-clean``, gradual-DICOM's de-identification, the destination check) is timed
    apart (``seconds_before_sending``), not in the rate."""

    def __init__(self, label: str, *, enabled: bool = True, timed: bool = False) -> None:
        self._progress: Any = None  # a rich Progress when stdout is a terminal
        self._task: Any = None
        self._timed = timed
        self._started = 0.0
        self._first_report_at: float | None = None
        self._last_report_at: float | None = None
        if not (enabled and sys.stdout.isatty()):
            return
        from rich.progress import BarColumn, DownloadColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress  # the bar; our Progress is the snapshot it shows

        self._progress = RichProgress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            TextColumn("{task.fields[files]}"),
            DownloadColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            transient=False,
        )

    @property
    def sending_seconds(self) -> float | None:
        """From the first report (sending starts) to the last; None when nothing was reported."""
        if self._first_report_at is None or self._last_report_at is None:
            return None
        return self._last_report_at - self._first_report_at

    @property
    def seconds_before_sending(self) -> float | None:
        """From the start of the upload to the first report; None when nothing was reported."""
        return None if self._first_report_at is None else self._first_report_at - self._started

    def __enter__(self):
        self._started = time.monotonic()
        if self._progress is None:
            return self._update if self._timed else None
        self._progress.start()
        return self._update

    def __exit__(self, *exc_info: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def _update(self, snapshot) -> None:
        now = self._last_report_at = time.monotonic()
        if self._first_report_at is None:
            self._first_report_at = now
        if self._progress is None:
            return
        if self._task is None:
            self._task = self._progress.add_task("upload", total=snapshot.bytes_total, files="", rate="")
        files = f"{snapshot.done}/{snapshot.total} files" + (f", {snapshot.failed} failed" if snapshot.failed else "")
        sending = now - self._first_report_at
        rate = f"{snapshot.bytes_done / 1e6 / sending:.1f} MB/s" if sending > 0 else ""
        self._progress.update(
            self._task, completed=snapshot.bytes_done, total=snapshot.bytes_total, files=files, rate=rate
        )


def _timing(result: UploadResult, sending_seconds: float | None = None) -> tuple[float, float]:
    """(transfer seconds, verification seconds): throughput is over the transfer only, timed as
    the progress bar times it when it was (``sending_seconds``), else the sessions' own sending
    time (``upload --flow``)."""
    verify_seconds = sum(s.verify.waited_seconds for s in result.sessions if s.verify is not None)
    if sending_seconds:
        return sending_seconds, verify_seconds
    if result.upload_seconds > 0:
        return result.upload_seconds, verify_seconds
    return max(result.seconds - verify_seconds, 0.0), verify_seconds


def _summary(result: UploadResult, sending_seconds: float | None = None, before_sending: float | None = None) -> dict:
    """The --json form of an upload's result (what a script needs to act on it)."""
    transfer_seconds, verify_seconds = _timing(result, sending_seconds)
    return {
        "ok": result.ok,
        "files_sent": result.files_sent,
        "bytes_sent": result.bytes_sent,
        "seconds_before_sending": None if before_sending is None else round(before_sending, 3),
        "transfer_seconds": round(transfer_seconds, 3),
        "verify_seconds": round(verify_seconds, 3),
        "throughput_mb_s": round(result.bytes_sent / 1e6 / transfer_seconds, 3) if transfer_seconds > 0 else 0.0,
        "sessions": [
            {
                "project": study.target.project,
                "subject": study.target.subject,
                "session": study.target.session,
                "study_uid": study.study_uid,
                "files": study.files,
                "files_sent": study.files_sent,
                "uri": study.session_uri,
                "experiment_id": study.experiment_id,
                "verified": study.verified,
                "verify_summary": study.verify.summary(STATUS_SHOWN_BY) if study.verify else None,
                "failed_files": study.failed_files,
                "parked": (study.verify.parked if study.verify else []) + [p.describe() for p in study.parked],
                "next_steps": (study.verify.next_steps if study.verify else [])
                + [p.next_steps() for p in study.parked],
                "in_conflict": study.in_conflict,
                "ok": study.ok,
            }
            for study in result.sessions
        ],
        "skipped": [{"path": str(s.path), "reason": s.reason} for s in result.skipped if not s.unreadable],
        "unreadable": [{"path": str(s.path), "reason": s.reason} for s in result.skipped if s.unreadable],
        "not_deidentified": [{"path": str(s.path), "reason": s.reason} for s in result.not_deidentified],
    }


def _report_skipped(skipped: list) -> None:
    """Junk first, then what could not be read: a failure of the upload, listed apart."""
    for item in skipped:
        if not item.unreadable:
            typer.echo(f"skipped {item.path}: {item.reason}", err=True)
    unreadable = [item for item in skipped if item.unreadable]
    for item in unreadable:
        typer.echo(f"not read, not sent: {item.path}: {item.reason}", err=True)
    if unreadable:
        typer.echo(
            f"{len(unreadable)} files or folders could not be read: make them readable and run the same "
            "command again to send them.",
            err=True,
        )


def _report_conflicts(scan: ScanResult | SendResult, duplicates: str) -> None:
    if scan.conflicts:
        typer.echo(
            f"{len(scan.conflicts)} SOP Instance UIDs are held by different files (listed as conflicting copy): "
            f"sent the {duplicates} of each by modification time; --duplicates newest|oldest|stop to choose.",
            err=True,
        )


def _report_refused(refused: list) -> None:
    """Files the de-identification could not be applied to: listed, never sent (a failure)."""
    for item in refused:
        typer.echo(f"{item.path}: {item.reason}", err=True)
    if refused:
        typer.echo(
            f"{len(refused)} files could not be de-identified and were not sent (nor their originals): "
            "check them with `xnat-flows anon check`.",
            err=True,
        )


def _report(result: UploadResult, sending_seconds: float | None = None, before_sending: float | None = None) -> None:
    _report_skipped(result.skipped)
    _report_refused(result.not_deidentified)
    for study in result.sessions:
        t = study.target
        where = study.session_uri or "?"
        typer.echo(f"{t.project}/{t.subject}/{t.session}: {study.files_sent}/{study.files} files -> {where}")
        if study.gradual is not None and study.gradual.stopped:
            typer.echo(f"  {study.gradual.stopped}", err=True)
        if study.gradual is not None and study.gradual.already_archived:
            typer.echo(
                "  already complete in XNAT's archive: nothing sent (gradual-DICOM cannot replace "
                "archived instances; DICOM-zip, the default transport, can)"
            )
        elif (earlier := study.files_delivered - study.files_sent) > 0:
            typer.echo(f"  {counted(earlier, 'file')} delivered by an earlier run (resume journal): not sent again")
        if study.verify is not None:
            typer.echo(f"  verify: {study.verify.summary(STATUS_SHOWN_BY)}", err=not study.verify.ok)
        for parked in study.parked:
            typer.echo(f"  XNAT did not archive this upload: {parked.describe()}. {parked.next_steps()}", err=True)
        for batch in study.batches:
            if not batch.ok:
                typer.echo(f"  batch {batch.index} ({len(batch.files)} files) failed: {batch.error}", err=True)
        errors = {f.relpath: f.error for f in study.gradual.failures} if study.gradual is not None else {}
        for relpath in study.failed_files[:20]:
            typer.echo(f"  not sent: {relpath}" + (f": {errors[relpath]}" if relpath in errors else ""), err=True)
        if len(study.failed_files) > 20:
            typer.echo(f"  ... and {len(study.failed_files) - 20} more", err=True)
    transfer_seconds, verify_seconds = _timing(result, sending_seconds)
    rate = result.bytes_sent / 1e6 / transfer_seconds if transfer_seconds > 0 else 0.0
    verified = f"; verified in {verify_seconds:.1f} s" if verify_seconds else ""
    nothing_new = result.files_sent == 0 and result.ok and result.files_delivered
    if nothing_new and all(s.verify is not None for s in result.sessions):
        typer.echo(f"nothing new to send: XNAT has all {counted(result.files_delivered, 'file')}" + verified)
    elif nothing_new:
        typer.echo(
            f"nothing new to send: all {counted(result.files_delivered, 'file')} were delivered before (not read back)"
        )
    else:
        # what came before the first request, when it counts (a de-identification check of every file)
        after = f" after {before_sending:.1f} s of planning and checks" if (before_sending or 0) >= 0.5 else ""
        typer.echo(
            f"{counted(result.files_sent, 'file')}, {result.bytes_sent / 1e6:.1f} MB sent in "
            f"{transfer_seconds:.1f} s ({rate:.1f} MB/s)" + after + verified
        )
    if result.in_conflict:
        typer.echo(
            "XNAT parked this upload in CONFLICT (listed above, with what it conflicts with): nothing was merged "
            "on its own; look at both sessions, then run one of the commands above.",
            err=True,
        )
    elif result.still_archiving:
        typer.echo(
            "Not verified yet: XNAT is still archiving what was sent. Run the same command again later to check "
            "(files already delivered are not sent again).",
            err=True,
        )
    elif not result.ok:
        typer.echo("Upload incomplete: run the same command again to send only what did not land.", err=True)


@app.command("send-dicom")
@with_connection
def send_dicom(
    source: Annotated[Path, typer.Argument(help="Directory of DICOM files (scanned recursively).")],
    host: Annotated[str, typer.Option("--host", envvar="XNAT_DICOM_HOST", help="DICOM receiver host.")],
    port: Annotated[
        int,
        typer.Option("--port", envvar="XNAT_DICOM_PORT", min=1, max=65535, help="Receiver port (XNAT: often 8104)."),
    ] = 104,
    called_aet: Annotated[
        str, typer.Option("--called-aet", envvar="XNAT_DICOM_CALLED_AET", help="The receiver's AE title.")
    ] = "XNAT",
    calling_aet: Annotated[
        str, typer.Option("--calling-aet", envvar="XNAT_DICOM_CALLING_AET", help="Our AE title.")
    ] = "XNATFLOWS",
    workers: Annotated[int, typer.Option("--workers", min=1, max=32, help="Parallel associations.")] = 4,
    project: Annotated[
        str | None, typer.Option("--project", "-P", help="Route to this project (PatientComments of the sent copy).")
    ] = None,
    subject: Annotated[
        str | None, typer.Option("--subject", "-S", help="With --project: route to this subject.")
    ] = None,
    session: Annotated[
        str | None, typer.Option("--session", "-E", help="With --project: route to this session label.")
    ] = None,
    duplicates: DuplicatesOption = "newest",
    skip_truncated: SkipTruncatedOption = False,
    no_xnat_check: Annotated[
        bool,
        typer.Option(
            "--no-xnat-check",
            help="Send without a login to XNAT's REST API: --project is not checked, and instances an earlier run "
            "delivered are sent again (reported in doubt).",
        ),
    ] = False,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify/--no-verify",
            help="Wait until XNAT's archive holds every instance sent (needs the login); exit 6 if it does not "
            "within --verify-timeout. Off (the default, as the send-dicom flow): the receiver's answers only.",
        ),
    ] = False,
    verify_timeout: VerifyTimeoutOption = 600.0,
    anon_script: AnonScriptOption = None,
    anon_profile: AnonProfileOption = None,
    anon_from_server: AnonFromServerOption = False,
    anon_allow_url: AnonAllowUrlOption = None,
    anon_require_clean: AnonRequireCleanOption = False,
    anon_allow: AnonAllowOption = None,
    as_json: JsonOption = False,
    *,
    connection: Connection,
) -> None:
    """Send a directory to a DICOM receiver (C-STORE).

    Parallel associations. With a login (`xnat-flows auth login`) XNAT is asked first: --project must
    exist, and a re-run skips what an earlier run delivered only while XNAT still holds that study.
    --project and --verify need the login (--project without it: --no-xnat-check).
    --verify then waits until XNAT has archived every instance sent, found by StudyInstanceUID.
    --anon-script/--anon-profile/--anon-from-server de-identify every file as it is sent; a script's
    project, subject and session variables are --project, --subject and --session.
    """
    from xnat_flows.client.errors import InputError
    from xnat_flows.transfer.cstore.inputs import RoutingOverride
    from xnat_flows.transfer.cstore.resume import in_doubt_warning
    from xnat_flows.transfer.cstore.sequence import DirectSteps

    sends_data()
    _gate_needs_rules(anon_require_clean, anon_script, anon_profile, anon_from_server)
    if (subject or session) and not project:
        raise InputError("--subject and --session route only together with --project")
    if verify and no_xnat_check:
        raise InputError(
            "--verify reads XNAT's archive over its REST API, which --no-xnat-check leaves alone",
            hint="Log in (`xnat-flows auth login`) and drop --no-xnat-check, or send with --no-verify",
        )
    routing = RoutingOverride(project, subject, session) if project else None
    if project is None:
        warn(
            "no --project: XNAT routes by the DICOM headers (e.g. `Project:` in PatientComments); "
            "what it cannot route is filed under Unassigned in the prearchive"
        )
    with contextlib.ExitStack() as stack:
        held, project_check, client = None, None, None
        if no_xnat_check:
            warn(
                "--no-xnat-check: "
                + (f"project {project} is not checked, and " if project else "")
                + "instances an earlier run delivered are sent again (XNAT cannot be asked whether it holds them)"
            )
        else:
            held, project_check, client = _xnat_study_check(connection, project, session, stack, verify=verify)
        # Scripts compile before anything is read or sent: an error stops here (exit 2, line:column).
        anonymizer = anonymizer_from_options(
            anon_script,
            anon_profile,
            anon_from_server,
            allowed_urls=anon_allow_url,
            project=project,
            open_client=lambda: connection.client(projects=(project,)),
        )
        if anon_require_clean and not as_json:  # ~1 ms a file before the first association: say why it waits
            typer.echo("checking the de-identification of every file before sending")
        steps = DirectSteps(
            source,
            host,
            port,
            called_aet,
            calling_aet,
            workers,
            routing,
            duplicates=duplicates,
            skip_truncated=skip_truncated,
            anonymizer=anonymizer,
            require_clean=anon_require_clean,
            allow=anon_allow or (),
            held=held,
            project_check=project_check,
            client=client if verify else None,
            verify_timeout_seconds=verify_timeout,
        )
        result, not_verified = _send_dicom(steps, as_json, verify=verify)
    if as_json:
        typer.echo(json.dumps(_cstore_json(result, not_verified), indent=2))
    else:
        _report_skipped(result.not_sent)
        _report_conflicts(result, duplicates)
        for failed in result.failed + result.skipped:
            typer.echo(f"not stored: {failed.path}: {failed.status_hex} {failed.reason or failed.meaning}", err=True)
        for warned in result.warnings:
            typer.echo(f"stored with a warning: {warned.path}: {warned.status_hex} {warned.meaning}", err=True)
        if result.forgotten:
            typer.echo(
                f"{result.forgotten} instances an earlier run delivered were sent again: XNAT no longer holds their study",
                err=True,
            )
        if result.resumed:
            typer.echo(
                f"{result.resumed} instances were delivered by an earlier run (XNAT still holds their study) "
                "and not sent again"
                + (
                    ""
                    if result.sent or result.failed or result.skipped
                    else f" (nothing left to send; to send them again anyway, delete {result.journal_path})"
                )
            )
        typer.echo(result.summary())
        if result.not_sent:
            typer.echo(f"{len(result.not_sent)} other files under {source} were not sent (listed above)")
        for study in result.archived:
            typer.echo(
                f"verified: study {study.study_uid} archived as {study.project}/{study.subject}/{study.label} "
                f"({study.experiment_id}, {study.files_found} files for {study.instances_sent} instances sent)"
            )
    if not_verified is not None:
        typer.echo(f"not verified: {not_verified.message}. {cli_hint(not_verified)}", err=True)
        typer.echo(
            "The receiver stored what was sent, but XNAT's archive does not hold it all: run the same command "
            "again to look again (what was delivered is not sent twice).",
            err=True,
        )
        raise typer.Exit(EXIT_PARTIAL)
    if result.in_doubt:
        typer.echo(f"warning: {in_doubt_warning(result, ARCHIVE_CONFLICT_WITH, CHECK_DELIVERED_WITH)}", err=True)
    if result.failed or result.skipped or result.unreadable:
        typer.echo("Not everything was stored: run the same command again to send only the rest.", err=True)
    if not result.ok:
        raise typer.Exit(EXIT_PARTIAL)


def _cstore_json(result: SendResult, not_verified: XnatError | None = None) -> dict[str, Any]:
    """``send-dicom --json``: the result's facts under the names scripts read."""
    return {
        "ok": result.ok and not_verified is None,
        "verified": result.verified,
        "not_verified": not_verified.message if not_verified is not None else None,
        "archived": [
            {
                "study_uid": s.study_uid,
                "project": s.project,
                "subject": s.subject,
                "label": s.label,
                "experiment_id": s.experiment_id,
                "uri": s.uri,
                "files": s.files_found,
            }
            for s in result.archived
        ],
        "sent": len(result.sent),
        "failed": len(result.failed),
        "skipped": len(result.skipped),
        "resumed": result.resumed,
        "in_doubt": len(result.in_doubt),
        "resent_unchecked": len(result.unchecked),
        "resent_not_in_xnat": result.forgotten,
        "stored_with_warning": [
            {"path": str(o.path), "status": o.status_hex, "meaning": o.meaning} for o in result.warnings
        ],
        "bytes_sent": result.bytes_sent,
        "seconds": round(result.seconds, 3),
        "instances_per_second": round(result.instances_per_second, 1),
        "not_stored": [
            {"path": str(o.path), "status": o.status_hex, "reason": o.reason or o.meaning}
            for o in result.failed + result.skipped
        ],
        "not_dicom": [{"path": str(s.path), "reason": s.reason} for s in result.not_sent if not s.unreadable],
        "unreadable": [{"path": str(s.path), "reason": s.reason} for s in result.unreadable],
        "conflicts": result.conflicts,
    }


def _send_dicom(steps: DirectSteps, as_json: bool, *, verify: bool) -> tuple[SendResult, XnatError | None]:
    """The C-STORE sequence (``transfer.cstore.sequence``), behind a progress bar on a terminal.

    With ``verify``, a wait for the archive that runs out is returned beside what was sent (the
    report says both; the exit code is then 6), never taken for success.
    """
    from xnat_flows.transfer.cstore.sequence import send_cstore

    archive_wait: tuple[type[XnatError], ...] = ()  # without verify: client.archive would load pydantic for nothing
    if verify:
        from xnat_flows.client.archive import WaitTimeoutError

        archive_wait = (WaitTimeoutError,)
    from xnat_flows.transfer.progress import Progress

    # a progress bar only on a terminal: into a pipe or a log rich draws nothing useful, and its
    # import and refresh thread cost CPU a receiver on the same host would use (docs/cstore.md)
    with _progress_bar("C-STORE", enabled=not as_json) as progress:
        shown_at = [0.0]

        def show(done: int, total: int) -> None:
            # the bar redraws 10 times a second: one update per instance (called with the
            # sender's lock held) would cost more CPU than the instance's C-STORE
            now = time.monotonic()
            if done < total and now - shown_at[0] < 0.1:
                return
            shown_at[0] = now
            total_bytes = steps.scanned_bytes
            progress(Progress(done, total, total_bytes * done // max(total, 1), total_bytes))

        steps.progress = show if progress else None
        try:
            # every instance is journaled as the receiver confirms it: a re-run sends only the rest
            return send_cstore(steps, source=steps.source, verify=verify), None
        except archive_wait as exc:
            if steps.sent is None:
                raise
            return steps.sent, exc
        except KeyboardInterrupt:
            typer.echo(
                "Every instance the receiver confirmed is recorded: run the same command again to send the rest.",
                err=True,
            )
            raise  # the root command prints the interruption line and exits 130


def _xnat_study_check(
    connection: Connection, project: str | None, session: str | None, stack: contextlib.ExitStack, *, verify: bool
) -> tuple[Callable[[str], bool], Callable[[], None], Callable[[], XnatClient]]:
    """Whether XNAT holds a study, for the C-STORE journal (``transfer.session.study_present``),
    over a client ``stack`` keeps open, the destination check the sequence runs first, and that
    client for ``verify``. With --project or --verify the login is required then (XNAT files data
    for an unknown project under Unassigned, so the project is checked first; verifying reads the
    archive), before anything is sent; without, the client is opened only if the journal lists
    deliveries to check, so a plain send needs no login (and loads no HTTP stack)."""
    from xnat_flows.client.errors import AuthenticationError, InputError

    clients: list[XnatClient] = []

    def client() -> XnatClient:
        if not clients:
            clients.append(stack.enter_context(connection.client(projects=(project,))))
        return clients[0]

    def held(study_uid: str) -> bool:
        from xnat_flows.transfer.session import study_present

        return study_present(client(), study_uid, project=project, label=session)

    def check_project() -> None:
        if project is None and not verify:
            return
        try:
            client()
        except (InputError, AuthenticationError) as exc:
            if project is None:
                raise AuthenticationError(
                    f"not logged in to XNAT ({exc.message}): send-dicom --verify reads XNAT's archive over its "
                    "REST API; nothing was sent",
                    hint="Run `xnat-flows auth login` (or give --url/--username with --password-stdin), or send "
                    "with --no-verify",
                ) from None
            raise AuthenticationError(
                f"not logged in to XNAT ({exc.message}): send-dicom --project checks the project, and what "
                "earlier runs delivered, over XNAT's REST API first; nothing was sent",
                hint="Run `xnat-flows auth login` (or give --url/--username with --password-stdin), or pass "
                "--no-xnat-check to send without these checks",
            ) from None

    return held, check_project, client


# xnatctl's spelling (docs: uploading guide): the same command, not listed in --help.
app.command("upload-dicom", hidden=True)(send_dicom)
