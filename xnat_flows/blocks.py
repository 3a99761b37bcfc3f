"""Prefect Blocks: XNAT credentials and a DICOM receiver, registered with
``prefect block register -m xnat_flows.blocks``."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from xnat_flows.client.credentials import Credentials


class XnatCredentials(Block):
    """Where an XNAT server is and how to log in to it. Secrets are stored encrypted by Prefect."""

    _block_type_name = "XNAT Credentials"
    _block_type_slug = "xnat-credentials"
    _description = "URL, user and password (or alias token) of an XNAT server."
    _documentation_url = "https://github.com/xnat-flows/xnat-flows/blob/main/docs/deployments.md"

    url: str = Field(description="XNAT base URL, e.g. https://xnat.example.org")
    username: str | None = Field(default=None, description="User name, or an alias token's alias.")
    password: SecretStr | None = Field(default=None, description="Password, or an alias token's secret.")
    verify_tls: bool = Field(default=True, description="Verify the server's TLS certificate.")
    ca_bundle: str | None = Field(default=None, description="Path of a PEM CA bundle on the worker host.")

    def to_credentials(self) -> Credentials:
        verify: bool | str = self.ca_bundle if self.ca_bundle else self.verify_tls
        return Credentials(url=self.url, username=self.username, password=self.password, verify=verify)


class DicomReceiver(Block):
    """An XNAT DICOM receiver (C-STORE SCP): host, port and AE titles."""

    _block_type_name = "XNAT DICOM Receiver"
    _block_type_slug = "xnat-dicom-receiver"
    _description = "Host, port and AE titles of an XNAT DICOM receiver for C-STORE uploads."

    host: str = Field(description="Receiver host name or address.")
    port: int = Field(default=8104, ge=1, le=65535, description="Receiver port (XNAT's default receiver: 8104).")
    called_aet: str = Field(default="XNAT", max_length=16, description="The receiver's AE title.")
    calling_aet: str = Field(default="XNATFLOWS", max_length=16, description="Our AE title.")
