"""Where an upload goes.

``UploadTarget`` (project, subject, session, Direct-Archive or the prearchive, and the import
service's overwrite mode), with the import-service parameters of both REST handlers and the key
the resume journal files its records under.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

from xnat_flows.client.archive import is_valid_label
from xnat_flows.client.errors import InputError

# ``overwrite`` of the import service (POST /data/services/import): how an upload meets a session
# already there. Archiving from the prearchive has its own, ``client.prearchive.ArchiveOverwrite``.
ImportOverwrite = Literal["none", "append", "delete"]


@dataclass(frozen=True)
class UploadTarget:
    """Where a session goes. XNAT labels allow only letters, digits, ``_`` and ``-``."""

    project: str
    subject: str
    session: str
    direct_archive: bool = True  # False: stage in the prearchive (dest=/prearchive/projects/P)
    # "append": XNAT merges into an existing session of the same study and refuses another study's
    # ("invalid modification of session UID"); "delete" skips that check, so it is never the default.
    overwrite: ImportOverwrite = "append"
    # Direct-Archive: once every file is in, ask XNAT (1.8.4+) to archive the session at once
    # rather than after its idle interval (5 minutes by default); False leaves it to the timer.
    archive_when_complete: bool = True
    # The files were de-identified with XNAT's own site and project scripts before sending: XNAT
    # applies neither again (its ``prevent_anon``, as the Upload Assistant sends; xnat-web
    # GradualDicomImporter for the site script, DirectArchiveSessionServiceImpl for the project's).
    prevent_anon: bool = False

    def __post_init__(self) -> None:
        for name in ("project", "subject", "session"):
            value = getattr(self, name)
            if not is_valid_label(value):
                raise InputError(
                    f"Invalid XNAT {name} label {value!r}",
                    hint="Use only letters, digits, '_' and '-' (XNAT would silently rewrite anything else)",
                )
        if self.overwrite not in ("none", "append", "delete"):
            raise InputError(f"Invalid overwrite mode {self.overwrite!r}", hint="Use none, append or delete")

    def with_session(self, session: str) -> UploadTarget:
        """The same destination under another session label.

        Args:
            session: The label.

        Returns:
            A copy with that label.
        """
        return dataclasses.replace(self, session=session)

    @property
    def key(self) -> str:
        """A stable name for the destination (used by the resume journal)."""
        mode = "archive" if self.direct_archive else "prearchive"
        return f"{self.project}/{self.subject}/{self.session}/{mode}"

    def direct_archive_uri(self, study_uid: str) -> str:
        """The Direct-Archive session XNAT files this study under while receiving it.

        The URI its import service answers with:
        ``/xapi/direct-archive/{project}/{StudyInstanceUID}/{label}``.

        Args:
            study_uid: The study's StudyInstanceUID.

        Returns:
            The URI.
        """
        return f"/xapi/direct-archive/{self.project}/{quote(study_uid, safe='')}/{self.session}"

    def _destination(self) -> dict[str, str]:
        anon = {"prevent_anon": "true"} if self.prevent_anon else {}
        if self.direct_archive:
            return {"Direct-Archive": "true", **anon}
        return {"dest": f"/prearchive/projects/{self.project}", **anon}

    def dicom_zip_params(self) -> dict[str, str]:
        """The import service's query parameters for a DICOM-zip upload to this destination.

        Returns:
            The parameters (Direct-Archive or prearchive, overwrite mode, labels).
        """
        return {
            "import-handler": "DICOM-zip",
            "inbody": "true",
            "project": self.project,
            "subject": self.subject,
            "session": self.session,
            "overwrite": self.overwrite,
            "overwrite_files": "true",
            "Ignore-Unparsable": "true",
            "quarantine": "false",
            "triggerPipelines": "true",
            "rename": "false",
            **self._destination(),
        }

    def gradual_params(self) -> dict[str, str]:
        """The import service's query parameters for a gradual-DICOM upload to this destination.

        gradual-DICOM reads only the upper-case keys; lower-case project/subject/session would be
        ignored and the data routed from the DICOM headers instead.

        Returns:
            The parameters.
        """
        return {
            "import-handler": "gradual-DICOM",
            "inbody": "true",
            "PROJECT_ID": self.project,
            "SUBJECT_ID": self.subject,
            "EXPT_LABEL": self.session,
            **self._destination(),
        }
