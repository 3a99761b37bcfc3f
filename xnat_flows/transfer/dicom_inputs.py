"""What the user gives a C-STORE: AE titles and the routing override, checked before connecting."""

from __future__ import annotations

import re
from dataclasses import dataclass

from xnat_flows.client.errors import InputError

AE_TITLE_MAX_LENGTH = 16
# what XNAT's "Key:value" routing extractor can read (XNAT's DicomObjectIdentifier, docs/cstore.md)
_ROUTING_VALUE = re.compile(r"^[A-Za-z0-9_-]+$")


def validate_ae_title(title: str, role: str) -> str:
    """The AE title without insignificant spaces, or an ``InputError`` naming what is wrong."""
    stripped = title.strip(" ") if isinstance(title, str) else ""
    hint = "AE titles are 1-16 printable ASCII characters without backslashes"
    if not stripped:
        raise InputError(f"The {role} AE title is empty or only spaces", hint=hint)
    if len(stripped) > AE_TITLE_MAX_LENGTH:
        raise InputError(
            f"The {role} AE title {stripped!r} is {len(stripped)} characters long; the maximum is 16", hint=hint
        )
    if any(ch == "\\" or not 32 <= ord(ch) < 127 for ch in stripped):
        raise InputError(
            f"The {role} AE title {stripped!r} contains a backslash or a non-printable character", hint=hint
        )
    return stripped


@dataclass(frozen=True)
class RoutingOverride:
    """Written into PatientComments as ``Project:X Subject:Y Session:Z``: XNAT's default routing
    reads PatientComments first (docs/cstore.md, "Where the data lands"), so it decides where
    the data lands."""

    project: str
    subject: str | None = None
    session: str | None = None

    def __post_init__(self) -> None:
        for key, value in (("project", self.project), ("subject", self.subject), ("session", self.session)):
            if value is not None and not _ROUTING_VALUE.match(value):
                raise InputError(
                    f"Routing {key} {value!r} has characters XNAT's routing cannot read",
                    hint="Use only letters, digits, '_' and '-' (XNAT IDs and labels)",
                )

    def comment(self) -> str:
        parts = [("Project", self.project), ("Subject", self.subject), ("Session", self.session)]
        return " ".join(f"{key}:{value}" for key, value in parts if value)
