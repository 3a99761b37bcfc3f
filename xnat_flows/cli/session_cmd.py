"""``xnat-flows session upload`` (REST Import API) and ``session upload-dicom`` (C-STORE)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from xnat_flows.cli.options import (
    EXIT_FAILURE,
    EXIT_USAGE,
    PasswordOption,
    PasswordStdinOption,
    ProfileOption,
    UrlOption,
    UserOption,
    exit_code_for,
    read_password_stdin,
    warn_password_on_command_line,
    xnat_session,
)

app = typer.Typer(help="Upload DICOM sessions (REST Import API or DICOM C-STORE).", no_args_is_help=True)

EXIT_PARTIAL = 6  # some files did not land; re-running the same command sends only those


@app.command("upload")
def upload(
    source: Annotated[Path, typer.Argument(help="Directory of DICOM files (scanned recursively, extensionless files included).")],
    project: Annotated[str, typer.Option("--project", "-P", help="XNAT project ID.")],
    subject: Annotated[str, typer.Option("--subject", "-S", help="Subject label.")],
    session: Annotated[str, typer.Option("--session", "-E", help="Session (experiment) label.")],
    workers: Annotated[int, typer.Option("--workers", min=1, max=64, help="Parallel uploads (DICOM-zip: number of batches).")] = 4,
    archive_format: Annotated[Literal["auto", "tar", "tgz", "zip"], typer.Option(
        "--archive-format", help="Archive format of each batch. auto: tgz (gzipped tar, XNAT 1.8.3+) when the link is "
        "slow (round trip >= 5 ms), else tar.")] = "auto",
    direct_archive: Annotated[
        bool, typer.Option("--direct-archive/--prearchive", help="Direct-Archive (default, XNAT 1.8.3+) or stage in the prearchive.")
    ] = True,
    gradual: Annotated[bool, typer.Option("--gradual", help="gradual-DICOM: one instance per request.")] = False,
    per_study: Annotated[bool, typer.Option("--per-study", help="Upload each study found as its own session (SESSION_ and 8 hex digits of its StudyInstanceUID).")] = False,
    into_other_study: Annotated[bool, typer.Option("--into-other-study", help="Upload even into an existing session that holds another study (refused otherwise).")] = False,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Read the session back and compare with what was sent.")] = True,
    duplicates: Annotated[Literal["newest", "oldest", "stop"], typer.Option(
        "--duplicates", help="Two different files with one SOP Instance UID: send the newest or oldest by modification time, or stop.")] = "newest",
    flow: Annotated[bool, typer.Option("--flow", help="Run as the Prefect flow `upload-dicom-session` (recorded in Prefect).")] = False,
    url: UrlOption = None,
    username: UserOption = None,
    password: PasswordOption = None,
    password_stdin: PasswordStdinOption = False,
    profile: ProfileOption = None,
) -> None:
    """Upload a directory to XNAT through the REST Import API (DICOM-zip by default)."""
    if flow:
        from xnat_flows.client.errors import XnatError as XnatErrorBase

        if password and password_stdin:
            typer.secho("error: give either --password or --password-stdin, not both", err=True, fg=typer.colors.RED)
            raise typer.Exit(EXIT_USAGE)
        if password:
            warn_password_on_command_line()
        try:
            password = read_password_stdin() if password_stdin else password
        except XnatErrorBase as exc:
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(exit_code_for(exc)) from None
        _upload_with_flow(source, project, subject, session, workers, archive_format, direct_archive, gradual, per_study, verify, url, username, password, profile, duplicates, into_other_study)
        return
    from xnat_flows.client.errors import XnatError
    from xnat_flows.transfer.journal import UploadJournal
    from xnat_flows.transfer.scan import scan_directory
    from xnat_flows.transfer.session import plan_sessions, upload_session
    from xnat_flows.transfer.upload import UploadTarget, choose_archive_format

    try:
        # Local input first: a bad label, path or study mix fails before anything is sent.
        target = UploadTarget(project=project, subject=subject, session=session, direct_archive=direct_archive)
        scan = scan_directory(source, duplicates=duplicates)
        plan_sessions(scan, target, per_study=per_study)
    except XnatError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(exit_code_for(exc)) from None
    with xnat_session(url, username, password, profile, password_stdin=password_stdin) as client:
        preflight(client, project)
        if archive_format == "auto" and not gradual:
            archive_format, why = choose_archive_format(client)
            typer.echo(f"archive format: {archive_format} ({why})")
        # a bar only on a terminal, as for C-STORE: into a pipe or a log it draws nothing useful
        # and its refresh thread costs CPU (docs/performance.md)
        bar = _progress_bar("gradual-DICOM" if gradual else "DICOM-zip") if sys.stdout.isatty() else contextlib.nullcontext()
        with bar as progress:
            result = upload_session(
                client, scan, target, workers=workers, fmt=archive_format, gradual=gradual, per_study=per_study,
                journal=UploadJournal(), progress=progress, verify=verify, allow_other_study=into_other_study,
            )
    _report(result)
    _report_conflicts(scan, duplicates)
    if not result.ok:
        raise typer.Exit(EXIT_PARTIAL)


def preflight(client, project: str) -> None:  # noqa: ANN001
    """Log in and check the project before sending: an unreachable server, refused credentials or an
    unknown project fail here with one message, instead of every batch failing (or, for an unknown
    project, the data silently going to XNAT's Unassigned prearchive)."""
    client.login()
    client.require_project(project)


def _upload_with_flow(source, project, subject, session, workers, archive_format, direct_archive, gradual, per_study, verify, url, username, password, profile, duplicates="newest", into_other_study=False) -> None:  # noqa: ANN001, PLR0913
    import os

    from xnat_flows.client.errors import XnatError
    from xnat_flows.flows.upload import upload_dicom_session
    from xnat_flows.models import UploadRequest, XnatConnection

    if password:
        # The flow reads it from the environment of this process: never a flow-run parameter.
        os.environ["XNAT_PASS"] = password
    request = UploadRequest(
        source_dir=str(source), project=project, subject=subject, session=session, workers=workers,
        archive_format=archive_format, direct_archive=direct_archive, per_study=per_study, verify=verify,
        transport="gradual-dicom" if gradual else "dicom-zip", duplicates=duplicates, allow_other_study=into_other_study,
    )
    try:
        result = upload_dicom_session(request, XnatConnection(url=url, username=username, profile=profile))
    except XnatError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(exit_code_for(exc)) from None
    except Exception as exc:  # noqa: BLE001 - a failed flow run; its message says what failed
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(EXIT_FAILURE) from None
    for s in result.sessions:
        typer.echo(f"{s.project}/{s.subject}/{s.session}: {s.files_sent} files -> {s.session_uri or '?'} (experiment {s.experiment_id or '?'})")
    typer.echo(f"{result.files_sent} files, {result.bytes_sent / 1e6:.1f} MB in {result.upload_seconds:.1f} s ({result.throughput_mb_s:.1f} MB/s)")


class _progress_bar:  # noqa: N801 - used as a context manager like a function
    """A rich progress bar fed by the library's thread-safe progress callback."""

    def __init__(self, label: str) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

        self._progress = Progress(
            TextColumn(f"[bold]{label}"), BarColumn(), TextColumn("{task.fields[files]}"),
            DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(), transient=False,
        )
        self._task = None

    def __enter__(self):  # noqa: ANN204
        self._progress.start()
        return self._update

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def _update(self, snapshot) -> None:  # noqa: ANN001
        if self._task is None:
            self._task = self._progress.add_task("upload", total=snapshot.bytes_total, files="")
        files = f"{snapshot.done}/{snapshot.total} files" + (f", {snapshot.failed} failed" if snapshot.failed else "")
        self._progress.update(self._task, completed=snapshot.bytes_done, total=snapshot.bytes_total, files=files)


def _report_skipped(skipped: list) -> None:
    """Junk first, then what could not be read: a failure of the upload, listed apart."""
    for item in skipped:
        if not item.unreadable:
            typer.echo(f"skipped {item.path}: {item.reason}", err=True)
    unreadable = [item for item in skipped if item.unreadable]
    for item in unreadable:
        typer.echo(f"not read, not sent: {item.path}: {item.reason}", err=True)
    if unreadable:
        typer.echo(f"{len(unreadable)} files or folders could not be read: make them readable and run the same "
                   "command again to send them.", err=True)


def _report_conflicts(scan, duplicates: str) -> None:  # noqa: ANN001
    if scan.conflicts:
        typer.echo(f"{len(scan.conflicts)} SOP Instance UIDs are held by different files (listed as conflicting copy): "
                   f"sent the {duplicates} of each by modification time; --duplicates newest|oldest|stop to choose.", err=True)


def _report(result) -> None:  # noqa: ANN001
    _report_skipped(result.skipped)
    for study in result.sessions:
        t = study.target
        where = study.verify.uri if study.verify and study.verify.uri else (study.uris[0] if study.uris else "?")
        typer.echo(f"{t.project}/{t.subject}/{t.session}: {study.files_sent}/{study.files} files -> {where}")
        if study.gradual is not None and study.gradual.stopped:
            typer.echo(f"  {study.gradual.stopped}", err=True)
        if study.gradual is not None and study.gradual.already_archived:
            typer.echo("  already complete in XNAT's archive: nothing sent (gradual-DICOM cannot replace "
                       "archived instances; DICOM-zip, the default transport, can)")
        if study.verify is not None:
            typer.echo(f"  verify: {study.verify.summary()}")
        for batch in study.batches:
            if not batch.ok:
                typer.echo(f"  batch {batch.index} ({len(batch.files)} files) failed: {batch.error}", err=True)
        errors = {f.relpath: f.error for f in study.gradual.failures} if study.gradual is not None else {}
        for relpath in study.failed_files[:20]:
            typer.echo(f"  not sent: {relpath}" + (f": {errors[relpath]}" if relpath in errors else ""), err=True)
        if len(study.failed_files) > 20:
            typer.echo(f"  ... and {len(study.failed_files) - 20} more", err=True)
    typer.echo(
        f"{result.files_sent} files, {result.bytes_sent / 1e6:.1f} MB in {result.seconds:.1f} s "
        f"({result.throughput_mb_s:.1f} MB/s)"
    )
    if not result.ok:
        typer.echo("Upload incomplete: run the same command again to send only what did not land.", err=True)


@app.command("upload-dicom")
def upload_dicom(
    source: Annotated[Path, typer.Argument(help="Directory of DICOM files (scanned recursively, extensionless files included).")],
    host: Annotated[str, typer.Option("--host", envvar="XNAT_DICOM_HOST", help="DICOM receiver host.")],
    port: Annotated[int, typer.Option("--port", envvar="XNAT_DICOM_PORT", min=1, max=65535, help="Receiver port (XNAT: often 8104).")] = 104,
    called_aet: Annotated[str, typer.Option("--called-aet", envvar="XNAT_DICOM_CALLED_AET", help="The receiver's AE title.")] = "XNAT",
    calling_aet: Annotated[str, typer.Option("--calling-aet", envvar="XNAT_DICOM_CALLING_AET", help="Our AE title.")] = "XNATFLOWS",
    workers: Annotated[int, typer.Option("--workers", min=1, max=32, help="Parallel associations.")] = 4,
    project: Annotated[str | None, typer.Option("--project", "-P", help="Route to this project (sets `Project:` in PatientComments of the sent copy).")] = None,
    subject: Annotated[str | None, typer.Option("--subject", "-S", help="With --project: route to this subject.")] = None,
    session: Annotated[str | None, typer.Option("--session", "-E", help="With --project: route to this session label.")] = None,
    duplicates: Annotated[Literal["newest", "oldest", "stop"], typer.Option(
        "--duplicates", help="Two different files with one SOP Instance UID: send the newest or oldest by modification time, or stop.")] = "newest",
) -> None:
    """Send a directory to an XNAT DICOM receiver by C-STORE over parallel associations."""
    import contextlib
    import sys
    import time

    from xnat_flows.client.errors import InputError, XnatError
    from xnat_flows.transfer.dicom_resume import in_doubt_warning, store_instances_resumable
    from xnat_flows.transfer.dicom_send import RoutingOverride, echo
    from xnat_flows.transfer.journal import UploadJournal
    from xnat_flows.transfer.progress import Progress
    from xnat_flows.transfer.scan import scan_directory

    try:
        if (subject or session) and not project:
            raise InputError("--subject and --session route only together with --project")
        routing = RoutingOverride(project, subject, session) if project else None
        echo(host, port, called_aet, calling_aet)
        scan = scan_directory(source, headers="file-meta", duplicates=duplicates)  # all a C-STORE needs
        if not scan.files:
            raise InputError(f"no DICOM files found under {source} ({len(scan.skipped)} other files skipped)")
        # a progress bar only on a terminal: into a pipe or a log rich draws nothing useful, and its
        # import and refresh thread cost CPU a receiver on the same host would use (docs/cstore.md)
        with _progress_bar("C-STORE") if sys.stdout.isatty() else contextlib.nullcontext(None) as progress:
            total_bytes = scan.total_bytes
            shown_at = [0.0]

            def show(done: int, total: int) -> None:
                # the bar redraws 10 times a second: one update per instance (called with the
                # sender's lock held) would cost more CPU than the instance's C-STORE
                now = time.monotonic()
                if done < total and now - shown_at[0] < 0.1:
                    return
                shown_at[0] = now
                progress(Progress(done, total, total_bytes * done // max(total, 1), total_bytes))

            # every instance is journaled as the receiver confirms it: a re-run sends only the rest
            send = store_instances_resumable(
                scan.files, UploadJournal(), host=host, port=port, called_aet=called_aet, calling_aet=calling_aet,
                workers=workers, routing=routing, preflight=False, progress=show if progress else None,
            )
    except XnatError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(exit_code_for(exc)) from None
    except KeyboardInterrupt:
        typer.echo("Interrupted: every instance the receiver confirmed is recorded; run the same command again "
                   "to send the rest.", err=True)
        raise typer.Exit(130) from None
    result = send.result
    _report_skipped(scan.skipped)
    _report_conflicts(scan, duplicates)
    for failed in result.failed + result.skipped:
        typer.echo(f"not stored: {failed.path}: {failed.status_hex} {failed.reason or failed.meaning}", err=True)
    if send.resumed:
        typer.echo(f"{send.resumed} instances were delivered by an earlier run and not sent again"
                   + ("" if result.sent or result.failed or result.skipped else
                      f" (nothing left to send; to send them again anyway, delete {send.journal_path})"))
    typer.echo(result.summary())
    if send.in_doubt:
        typer.echo(f"warning: {in_doubt_warning(send.in_doubt)}", err=True)
    if not result.ok or scan.unreadable:
        typer.echo("Not everything was stored: run the same command again to send only the rest.", err=True)
        raise typer.Exit(EXIT_PARTIAL)
    if send.in_doubt:
        raise typer.Exit(EXIT_PARTIAL)
