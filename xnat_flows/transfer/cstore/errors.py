"""Errors of the C-STORE path: the DICOM peer could not be used. Each says what to check."""

from __future__ import annotations

from xnat_flows.client.errors import UnreachableError, XnatError


class DicomNetworkError(XnatError):
    """The DICOM peer could not be used; ``hint`` says what to check."""

    default_hint = "Check the receiver's host, port and AE title (XNAT: Administer > Site Administration > DICOM SCP)"


class PeerUnreachableError(DicomNetworkError, UnreachableError):
    """No TCP connection: wrong host or port, receiver down, or a firewall."""

    retryable = True


class AssociationRejectedError(DicomNetworkError):
    """The peer answered A-ASSOCIATE-RJ (or aborted the request)."""


class CalledAETitleRejectedError(AssociationRejectedError):
    """The peer does not answer to the called AE title we used."""


class NoAcceptedContextError(DicomNetworkError):
    """The association was accepted but none of the proposed SOP class/transfer syntax pairs was."""


def heals_with_time(exc: DicomNetworkError) -> bool:
    """Whether an association that could not be opened is worth another try later.

    Args:
        exc: Why it could not be opened.

    Returns:
        False when the receiver refused who we are or what we offer (it will again), else True.
    """
    return not isinstance(exc, (AssociationRejectedError, NoAcceptedContextError))
