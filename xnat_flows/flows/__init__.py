"""The package's Prefect flows (import from here; each module can also be imported on its own)."""

from xnat_flows.flows.cstore import send_dicom
from xnat_flows.flows.download import download_xnat_session
from xnat_flows.flows.inbox import ingest_inbox
from xnat_flows.flows.prearchive import archive_prearchive_session, delete_prearchive_session
from xnat_flows.flows.processing import process_xnat_session
from xnat_flows.flows.resources import attach_resource
from xnat_flows.flows.upload import upload_dicom_session

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
