"""``XnatEmulator``: an XNAT 1.8/1.9 look-alike HTTP server (and optional DICOM receiver) for tests."""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from xnat_flows.testing.anon_config import DEFAULT_SITE_SCRIPT, AnonScripts
from xnat_flows.testing.auth import Sessions
from xnat_flows.testing.bandwidth import TokenBucket
from xnat_flows.testing.faults import Faults
from xnat_flows.testing.importer import Importer
from xnat_flows.testing.prearchive import Prearchive, XnatRefusal
from xnat_flows.testing.server import Api, EmulatorHTTPServer, make_server
from xnat_flows.testing.state import Store


class XnatEmulator:
    """Run with ``with XnatEmulator() as xnat: ...`` or ``.start()`` / ``.stop()``.

    State (SQLite + files) lives in ``data_dir``; a temporary one is removed on stop.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        user: str = "admin",
        password: str = "admin",
        projects: tuple[str, ...] | list[str] = ("TEST",),
        scp_port: int | None = None,
        scp_aet: str = "XNAT",
        rebuild_idle_seconds: float = 1.0,
        session_idle_timeout: float = 900.0,
        latency_ms: int = 0,
        bandwidth_mbit: float | None = None,
        version: str = "1.9.2.1",
        site_id: str = "XNAT",
        max_sessions_per_user: int | None = None,
        login_failure_mode: str = "401",
        prearchive_codes: dict[str, int] | None = None,
        anonymize: bool = False,
    ) -> None:
        self._owns_data_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="xnat-emulator-"))
        self.host = host
        self._requested_port = port
        self.user = user
        self.password = password
        self.projects = tuple(projects)
        self._requested_scp_port = scp_port
        self.scp_aet = scp_aet
        self.rebuild_idle_seconds = rebuild_idle_seconds
        self.session_idle_timeout = session_idle_timeout
        self.latency_ms = latency_ms
        self.bandwidth_mbit = bandwidth_mbit
        # One bucket for all connections: request bodies received and responses sent share the cap.
        self.bandwidth = TokenBucket.from_mbit(bandwidth_mbit) if bandwidth_mbit else None
        self.version = version
        self.site_id = site_id
        self.max_sessions_per_user = max_sessions_per_user
        self.login_failure_mode = login_failure_mode  # "401" or "html200" (older/proxied XNATs)
        self.prearchive_codes = dict(prearchive_codes or {})
        self.anonymize = anonymize  # XNAT's default site anonymization script, enabled
        # site and project anonymization scripts, set at XNAT's configuration endpoints or here
        self.anon_scripts = AnonScripts()
        if anonymize:
            self.anon_scripts.set_site_script(DEFAULT_SITE_SCRIPT)
        self.faults = Faults()
        self.store: Store | None = None
        self._server: EmulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._scp: Any = None
        self.api: Api | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> XnatEmulator:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(self.data_dir, self.site_id)
        self.store.check_space = self.faults.check_disk_space
        self.store.ensure_user(self.user, self.password)
        for project in self.projects:
            self.store.ensure_project(project)
        for project, code in self.prearchive_codes.items():
            self.store.ensure_project(project)
            self.store.set_prearchive_code(project, code)
        self.sessions = Sessions(self.store, self.session_idle_timeout, self.max_sessions_per_user)
        self.prearchive = Prearchive(self.store, self.faults, self.rebuild_idle_seconds, self.anon_scripts)
        self.importer = Importer(self.prearchive)
        self.api = Api(self)
        self._server = make_server(self.api, self.host, self._requested_port)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="xnat-emulator-http", daemon=True
        )
        self._thread.start()
        self.prearchive.start()
        if self._requested_scp_port is not None:
            self._start_scp(self._requested_scp_port)
        return self

    def _start_scp(self, port: int) -> None:
        try:
            from xnat_flows.testing.scp import EmulatorDicomScp
        except ImportError as exc:
            self.stop()
            raise RuntimeError(
                f"scp_port was given but xnat_flows.testing.scp (EmulatorDicomScp) is not available: {exc}"
            ) from exc
        self._scp = EmulatorDicomScp(
            ingest=self.import_instance_for_scp, host=self.host, port=port, ae_title=self.scp_aet
        )
        self._scp.start()

    def stop(self) -> None:
        if self._scp is not None:
            self._scp.stop()
            self._scp = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.close_connections()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if getattr(self, "prearchive", None) is not None:
            self.prearchive.stop()
        if self.store is not None:
            self.store.close()
            self.store = None
        if self._owns_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> XnatEmulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- addresses -----------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("emulator is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def scp_port(self) -> int | None:
        return None if self._scp is None else int(self._scp.port)

    @property
    def dicom_receiver(self) -> Any:
        """The running ``xnat_flows.testing.scp.EmulatorDicomScp`` (for its own fault knobs), or None."""
        return self._scp

    # -- ingest from Python / the DICOM receiver ---------------------------------------------------
    def import_instance(
        self,
        part10_bytes: bytes,
        params: dict[str, str] | None = None,
        source: str = "scp",
        direct_archive: bool = False,
    ) -> str | None:
        """Place one instance as gradual-DICOM would (xnat-web `GradualDicomImporter.call`); return its session URI.

        Without PROJECT_ID in ``params`` the project/subject/session come from the DICOM headers
        (xnat-web `XnatDefaultDicomObjectIdentifier`). Raises ``XnatRefusal`` (status 400 + XNAT's message) for unparsable objects.
        """
        merged = dict(params or {})
        merged.setdefault("SOURCE", source if source != "scp" else "")
        if direct_archive:
            merged["Direct-Archive"] = "true"
        row = self.importer.import_one(part10_bytes, merged, "upload.dcm")
        return self.importer.session_uri(row)

    def import_instance_for_scp(self, part10_bytes: bytes, calling_aet: str) -> str | None:
        """What the DICOM receiver calls per C-STORE; None when XNAT would refuse the instance."""
        try:
            return self.import_instance(part10_bytes, {"Sender-AE-Title": calling_aet}, source="scp")
        except XnatRefusal:
            return None

    # -- introspection for tests ---------------------------------------------------------------------
    @property
    def peak_concurrent_uploads(self) -> int:
        """Most import requests (``POST /data/services/import``) ever in progress at once."""
        return self.api.peak_concurrent_uploads if self.api else 0

    def reset_peak_concurrent_uploads(self) -> None:
        if self.api:
            with self.api._counter_lock:
                self.api.peak_concurrent_uploads = self.api.active_imports

    def stats(self) -> dict[str, Any]:
        api = self.api
        return {
            "requests": api.request_count if api else 0,
            "imports": api.import_count if api else 0,
            "active_imports": api.active_imports if api else 0,
            "peak_concurrent_uploads": self.peak_concurrent_uploads,
            "jsessions": self.sessions.count() if self.store else 0,
            "prearchive": len(self.prearchive_sessions()),
            "experiments": len(self.archived_experiments()),
        }

    def _require_store(self) -> Store:
        if self.store is None:
            raise RuntimeError("emulator is not running")
        return self.store

    def prearchive_sessions(self, include_direct_archive: bool = False) -> list[dict[str, Any]]:
        """Prearchive rows (the fields of xnat-web's `DatabaseSession`) plus ``file_count``."""
        store = self._require_store()
        from xnat_flows.testing.readback import prearchive_row

        out = []
        for row in store.prearc_rows(include_direct=include_direct_archive):
            item = prearchive_row(store, row)
            item["file_count"] = len(store.prearc_files(row.id))
            item["direct_archive"] = row.direct_archive
            out.append(item)
        return out

    def archived_experiments(self, project: str | None = None) -> list[dict[str, Any]]:
        """Archived experiments: ID, label, project, subject (label), UID, modality, scans {id: file count}."""
        store = self._require_store()
        # Image sessions only: assessors live in the same table, tied to their session by session_id.
        sql = (
            "SELECT * FROM experiments WHERE session_id = ''" + (" AND project = ?" if project else "") + " ORDER BY id"
        )
        out = []
        for experiment in store.query(sql, (project,) if project else ()):
            subject = store.subject(experiment["subject_id"])
            scans = {}
            for scan in store.query(
                "SELECT scan_id FROM scans WHERE experiment_id = ? ORDER BY rowid", (experiment["id"],)
            ):
                count = store.query_one(
                    "SELECT COUNT(*) AS n FROM files f JOIN resources r ON f.resource_id = r.id "
                    "WHERE r.experiment_id = ? AND r.scan_id = ?",
                    (experiment["id"], scan["scan_id"]),
                )
                scans[scan["scan_id"]] = count["n"] if count else 0
            out.append(
                {
                    "ID": experiment["id"],
                    "label": experiment["label"],
                    "project": experiment["project"],
                    "subject": subject["label"] if subject else "",
                    "UID": experiment["uid"],
                    "modality": experiment["modality"],
                    "xsiType": experiment["xsi_type"],
                    "scans": scans,
                }
            )
        return out

    def archived_files(self, experiment: str) -> dict[str, Path]:
        """Archive files of one experiment (ID or label) as {"scans/1/resources/DICOM/files/x.dcm": path}."""
        store = self._require_store()
        row = store.experiment(experiment) or store.query_one(
            "SELECT * FROM experiments WHERE label = ?", (experiment,)
        )
        if row is None:
            raise KeyError(experiment)
        out = {}
        for resource in store.query("SELECT * FROM resources WHERE experiment_id = ? ORDER BY id", (row["id"],)):
            prefix = f"scans/{resource['scan_id']}/" if resource["scan_id"] else ""
            for f in store.files(resource["id"]):
                out[f"{prefix}resources/{resource['label']}/files/{f['path']}"] = (
                    store.resource_dir(resource["id"]) / f["path"]
                )
        return out

    def set_prearchive_code(self, project: str, code: int) -> None:
        store = self._require_store()
        store.ensure_project(project)
        store.set_prearchive_code(project, code)

    def rebuild_now(self) -> None:
        """Run one pass of the idle rebuilder immediately (it also runs on its own timer)."""
        self.prearchive.tick()


__all__ = ["XnatEmulator"]
