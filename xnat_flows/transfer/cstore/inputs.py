"""What the user gives a C-STORE: AE titles and the routing override, checked before connecting."""

from __future__ import annotations

import re
from dataclasses import dataclass

from xnat_flows.client.errors import InputError

AE_TITLE_MAX_LENGTH = 16
# what XNAT's "Key:value" routing extractor can read (XNAT's DicomObjectIdentifier, docs/cstore.md)
_ROUTING_VALUE = re.compile(r"^[A-Za-z0-9_-]+$")


def validate_ae_title(title: str, role: str) -> str:
    """The AE title without its insignificant leading and trailing spaces, or an ``InputError`` naming what is wrong.

    The rules are pynetdicom's (``pynetdicom._validators.validate_ae`` as applied by
    ``utils.set_ae`` to an association's AE titles; ``tests/transfer/cstore/test_inputs.py``
    checks both agree on a table of titles): not empty or only spaces, at most 16 characters as
    given, ASCII without control characters or backslashes. They are repeated here rather than
    called because importing pynetdicom (and the pydicom under it) costs ~0.25 s, and the
    ``session send-dicom`` path imports neither: its start-up is part of its throughput
    (docs/performance.md, docs/cstore.md).

    Args:
        title: The AE title as given.
        role: Whose it is, for the message ("called", "calling").

    Returns:
        The title without its leading and trailing spaces.

    Raises:
        InputError: The title breaks a rule; the message says which.
    """
    hint = "AE titles are 1-16 printable ASCII characters without backslashes"
    if not isinstance(title, str) or not title.strip():
        raise InputError(f"The {role} AE title is empty or only spaces", hint=hint)
    if len(title) > AE_TITLE_MAX_LENGTH:
        raise InputError(f"The {role} AE title {title!r} is {len(title)} characters long; the maximum is 16", hint=hint)
    # ASCII's control characters are 0-31 and 127 (pynetdicom refuses Unicode category C)
    if any(ch == "\\" or not 32 <= ord(ch) < 127 for ch in title):
        raise InputError(f"The {role} AE title {title!r} contains a backslash or a non-printable character", hint=hint)
    return title.strip(" ")


@dataclass(frozen=True)
class RoutingOverride:
    """Written into PatientComments as ``Project:X Subject:Y Session:Z``.

    XNAT's default routing reads PatientComments first (docs/cstore.md, "Where the data lands"), so
    it decides where the data lands.
    """

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
        """The PatientComments value, e.g. ``Project:P Subject:S Session:E`` (fields left out when not given)."""
        parts = [("Project", self.project), ("Subject", self.subject), ("Session", self.session)]
        return " ".join(f"{key}:{value}" for key, value in parts if value)
