"""The package's Prefect flows (import from here; each module can also be imported on its own)."""

from xnat_flows.flows.upload import upload_dicom_session

__all__ = ["upload_dicom_session"]
