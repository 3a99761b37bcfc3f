"""Prefect Blocks: XNAT credentials and a DICOM receiver, registered with
``prefect block register -m xnat_flows.blocks``.

``XnatCredentials`` follows Prefect's integration pattern (``prefect.blocks.abstract.CredentialsBlock``
with ``get_client()``, as prefect-aws's ``AwsCredentials``): flows take the Block itself as a
parameter, so the Prefect UI offers a Block picker and the password never enters a run's parameters
(a saved Block travels as ``{"$ref": {"block_document_id": ...}}``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from prefect.blocks.abstract import CredentialsBlock
from prefect.blocks.core import Block
from pydantic import Field, HttpUrl, SecretStr, field_validator

from xnat_flows.client.credentials import Credentials

if TYPE_CHECKING:
    from xnat_flows.client.client import XnatClient


# XNAT's own pages (the repository's docs/deployments.md explains how the flows use the Blocks).
ALIAS_TOKEN_DOCS = (
    "https://wiki.xnat.org/documentation/how-to-use-xnat/generating-an-alias-token-for-scripted-authentication"
)
DICOM_RECEIVER_DOCS = (
    "https://wiki.xnat.org/documentation/xnat-administration/connecting-xnat-to-dicom-scanners-and-pacs/"
    "dicom-scp-receiver-configuration"
)
DICOMEDIT_DOCS = "https://wiki.xnat.org/xnat-tools/dicomedit-6-language-reference"
XNAT_LOGO = "https://github.com/NrgXnat.png"  # XNAT's (the NRG's) organisation picture: square


class XnatCredentials(CredentialsBlock):
    """Where an XNAT server is and how to log in to it. Secrets are stored encrypted by Prefect."""

    _block_type_name = "XNAT Credentials"
    _block_type_slug = "xnat-credentials"
    _logo_url = HttpUrl(XNAT_LOGO)
    _description = (
        "The address of an XNAT server and the account uploads log in with (a user and password, "
        "or an alias token). Name the Block after both, e.g. xnat-example-org-svc-uploader: the "
        "upload forms pick Blocks by name."
    )
    _documentation_url = HttpUrl(ALIAS_TOKEN_DOCS)

    # Every field is a plain text box in the Block form: required fields, or "" for "not given"
    # (an optional field makes Prefect's form ask for a type first, and a password one a visible box).
    url: str = Field(
        title="XNAT URL",
        min_length=1,
        description="The XNAT server's address as opened in a browser (https://xnat.example.org for example).",
    )
    username: str = Field(
        title="User",
        min_length=1,
        description="The XNAT user the uploads run as, or the alias of an alias token.",
    )
    password: SecretStr = Field(
        title="Password",
        description="The user's password, or the secret of an alias token. Stored encrypted, never shown again.",
    )
    verify_tls: bool = Field(
        default=True,
        title="Check the server's certificate",
        description="Turn off only for a test server with a self-signed certificate.",
    )
    ca_bundle: str = Field(
        default="",
        title="Certificate authority file",
        description="Path, on the worker's host, of a PEM file of the authorities that signed the server's "
        "certificate. Empty: the system's.",
    )

    @field_validator("ca_bundle", mode="before")
    @classmethod
    def _none_is_empty(cls, value: object) -> object:
        return "" if value is None else value  # Blocks saved when the field was optional

    @property
    def default_name(self) -> str:
        """A Block name that tells Blocks apart in a picker: server host and user, e.g.
        ``xnat-example-org-svc-uploader`` (Prefect's Block names: lower-case letters, digits, dashes)."""
        host = urlsplit(self.url).hostname or self.url
        port = urlsplit(self.url).port
        raw = f"{host}{f'-{port}' if port else ''}-{self.username}".lower()
        return re.sub(r"[^a-z0-9]+", "-", raw).strip("-")

    def to_credentials(self) -> Credentials:
        verify: bool | str = self.ca_bundle or self.verify_tls
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
    _logo_url = HttpUrl(XNAT_LOGO)
    _documentation_url = HttpUrl(DICOMEDIT_DOCS)

    script: str = Field(
        description="The script text, as XNAT's site or project anonymization script would hold it "
        '(starts with `version "6.x"`; see docs/anonymization.md).'
    )


class DicomReceiver(Block):
    """An XNAT DICOM receiver (C-STORE SCP): host, port and AE titles."""

    _block_type_name = "XNAT DICOM Receiver"
    _block_type_slug = "xnat-dicom-receiver"
    _logo_url = HttpUrl(XNAT_LOGO)
    _description = (
        "Host, port and AE titles of an XNAT DICOM receiver, for C-STORE uploads (send-dicom). "
        "Name the Block after the host and AE title: the forms pick Blocks by name."
    )
    _documentation_url = HttpUrl(DICOM_RECEIVER_DOCS)

    host: str = Field(title="Host", description="The receiver's host name or IP address (no scheme, no port).")
    port: int = Field(
        default=8104, ge=1, le=65535, title="Port", description="The receiver's port (XNAT's default receiver: 8104)."
    )
    called_aet: str = Field(
        default="XNAT", max_length=16, title="Called AE title", description="The receiver's AE title."
    )
    calling_aet: str = Field(
        default="XNATFLOWS", max_length=16, title="Calling AE title", description="The AE title these uploads send as."
    )
