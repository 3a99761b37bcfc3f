"""The package's Prefect flows (import from here; each module can also be imported on its own).

Loaded on first use (``xnat_flows._lazy``): the process of a flow run imports its own flow's
module, not every flow's (C-STORE, downloads, processing) — measured ~0.5-1.3 s less a run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xnat_flows._lazy import lazy_exports

if TYPE_CHECKING:
    from xnat_flows.flows.cstore import send_dicom
    from xnat_flows.flows.download import download_xnat_session
    from xnat_flows.flows.inbox import ingest_inbox
    from xnat_flows.flows.prearchive import archive_prearchive_session, delete_prearchive_session
    from xnat_flows.flows.processing import process_xnat_session
    from xnat_flows.flows.resources import attach_resource
    from xnat_flows.flows.upload import upload_dicom_session

_EXPORTS = {
    "archive_prearchive_session": "xnat_flows.flows.prearchive",
    "attach_resource": "xnat_flows.flows.resources",
    "delete_prearchive_session": "xnat_flows.flows.prearchive",
    "download_xnat_session": "xnat_flows.flows.download",
    "ingest_inbox": "xnat_flows.flows.inbox",
    "process_xnat_session": "xnat_flows.flows.processing",
    "send_dicom": "xnat_flows.flows.cstore",
    "upload_dicom_session": "xnat_flows.flows.upload",
}
__all__ = [
    "archive_prearchive_session",
    "attach_resource",
    "delete_prearchive_session",
    "download_xnat_session",
    "ingest_inbox",
    "process_xnat_session",
    "send_dicom",
    "upload_dicom_session",
]

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
