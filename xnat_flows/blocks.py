"""Prefect Blocks: XNAT credentials and a DICOM receiver, registered with
``prefect block register -m xnat_flows.blocks``.

``XnatCredentials`` follows Prefect's integration pattern (``prefect.blocks.abstract.CredentialsBlock``
with ``get_client()``, as prefect-aws's ``AwsCredentials``): flows take the Block itself as a
parameter, so the Prefect UI offers a Block picker and the password never enters a run's parameters
(a saved Block travels as ``{"$ref": {"block_document_id": ...}}``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect.blocks.abstract import CredentialsBlock
from prefect.blocks.core import Block
from pydantic import Field, HttpUrl, SecretStr

from xnat_flows.client.credentials import Credentials

if TYPE_CHECKING:
    from xnat_flows.client.client import XnatClient


class XnatCredentials(CredentialsBlock):
    """Where an XNAT server is and how to log in to it. Secrets are stored encrypted by Prefect."""

    _block_type_name = "XNAT Credentials"
    _block_type_slug = "xnat-credentials"
    _description = "URL, user and password (or alias token) of an XNAT server."
    _documentation_url = HttpUrl("https://github.com/xnat-flows/xnat-flows/blob/main/docs/deployments.md")

    url: str = Field(title="XNAT URL", description="XNAT base URL, e.g. https://xnat.example.org")
    username: str | None = Field(default=None, title="User", description="User name, or an alias token's alias.")
    password: SecretStr | None = Field(
        default=None, title="Password", description="Password, or an alias token's secret."
    )
    verify_tls: bool = Field(default=True, title="Verify TLS", description="Verify the server's TLS certificate.")
    ca_bundle: str | None = Field(
        default=None, title="CA bundle", description="Path of a PEM CA bundle on the worker host."
    )

    def to_credentials(self) -> Credentials:
        verify: bool | str = self.ca_bundle if self.ca_bundle else self.verify_tls
        return Credentials(url=self.url, username=self.username, password=self.password, verify=verify)

    def get_client(self) -> XnatClient:
        """The process-wide ``XnatClient`` for these credentials (cached: tasks of one run share its
        login and connection pool, and one re-login serves all of them)."""
        from xnat_flows.tasks.connection import cached_client

        return cached_client(self.to_credentials())


class DicomEditScript(Block):
    """A DicomEdit 6 de-identification script, applied to every file as an upload sends it (as
    prefect-aws keeps an S3 bucket's settings in a Block: flows take the Block as a parameter).
    No secret: a script is configuration, readable by whoever runs the flow."""

    _block_type_name = "DicomEdit Script"
    _block_type_slug = "dicomedit-script"
    _description = "A DicomEdit 6 script (XNAT's anonymization language) applied to each file before it is sent."

    script: str = Field(
        description="The script text, as XNAT's site or project anonymization script would hold it "
        '(starts with `version "6.x"`; see docs/anonymization.md).'
    )


class DicomReceiver(Block):
    """An XNAT DICOM receiver (C-STORE SCP): host, port and AE titles."""

    _block_type_name = "XNAT DICOM Receiver"
    _block_type_slug = "xnat-dicom-receiver"
    _description = "Host, port and AE titles of an XNAT DICOM receiver for C-STORE uploads."

    host: str = Field(description="Receiver host name or address.")
    port: int = Field(default=8104, ge=1, le=65535, description="Receiver port (XNAT's default receiver: 8104).")
    called_aet: str = Field(default="XNAT", max_length=16, description="The receiver's AE title.")
    calling_aet: str = Field(default="XNATFLOWS", max_length=16, description="Our AE title.")
