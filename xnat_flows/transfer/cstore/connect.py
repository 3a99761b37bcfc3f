"""Opening a storage association to a receiver, and the C-ECHO pre-flight.

Their errors say what to fix (wrong port, AE title, a firewall, an HTTP port).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

from xnat_flows.transfer.cstore.association import (
    VERIFICATION_SOP_CLASS,
    AssociationRejected,
    StorageAssociation,
    UpperLayerError,
)
from xnat_flows.transfer.cstore.contexts import SyntaxPair
from xnat_flows.transfer.cstore.errors import (
    AssociationRejectedError,
    CalledAETitleRejectedError,
    DicomNetworkError,
    NoAcceptedContextError,
    PeerUnreachableError,
)
from xnat_flows.transfer.cstore.inputs import validate_ae_title

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
_REJECT_REASON_CALLED_AET = 7  # A-ASSOCIATE-RJ from the service user: called AE title not recognised
_REJECT_REASON_CALLING_AET = 3


@dataclass(frozen=True)
class ReceiverLink:
    """Where and how to associate: the receiver's address, both AE titles and the timeouts."""

    host: str
    port: int
    called_aet: str
    calling_aet: str
    acse_timeout: float
    dimse_timeout: float  # also bounds a send the peer stops reading
    max_pdu: int

    def __post_init__(self) -> None:
        """Every link checks its AE titles and keeps them without insignificant spaces.

        An ``InputError`` says what is wrong; the port is an int whatever the caller passed.
        """
        object.__setattr__(self, "port", int(self.port))
        object.__setattr__(self, "called_aet", validate_ae_title(self.called_aet, "called"))
        object.__setattr__(self, "calling_aet", validate_ae_title(self.calling_aet, "calling"))


def _explain_connect_failure(link: ReceiverLink, exc: OSError) -> PeerUnreachableError:
    where = f"{link.host}:{link.port}"
    if isinstance(exc, ConnectionRefusedError):
        return PeerUnreachableError(
            f"Connection refused at {where}: nothing is listening on that port",
            hint="Check the port (XNAT's receiver is usually 8104, the DICOM standard port is 104) "
            "and that the receiver is running",
            reason="receiver-port",
        )
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return PeerUnreachableError(
            f"Timed out connecting to {where}",
            hint="Check the host name and port, and that no firewall drops DICOM traffic",
        )
    if isinstance(exc, socket.gaierror):
        return PeerUnreachableError(f"Cannot resolve host {link.host!r}: {exc.strerror}", hint="Check the host name")
    return PeerUnreachableError(
        f"Cannot connect to {where}: {exc.strerror or exc}", hint="Check the host, the port and the network"
    )


def open_association(link: ReceiverLink, pairs: Sequence[SyntaxPair]) -> StorageAssociation:
    """An established association (TCP_NODELAY set) that accepted at least one pair.

    Args:
        link: The receiver: address, AE titles, timeouts and PDU size.
        pairs: The (SOP class, transfer syntax) pairs to propose, one presentation context each.

    Returns:
        The open association.

    Raises:
        DicomNetworkError: A subclass saying what to fix: unreachable, rejected (which AE title),
            not speaking DICOM, or no pair accepted.
    """
    where = f"{link.host}:{link.port}"
    try:
        assoc = StorageAssociation.open(
            link.host,
            link.port,
            called_aet=link.called_aet,
            calling_aet=link.calling_aet,
            pairs=list(pairs),
            max_pdu=link.max_pdu,
            connect_timeout=link.acse_timeout,
            acse_timeout=link.acse_timeout,
            dimse_timeout=link.dimse_timeout,
        )
    except AssociationRejected as exc:
        rejection = exc.rejection
        if rejection.source == 1 and rejection.reason == _REJECT_REASON_CALLED_AET:
            raise CalledAETitleRejectedError(
                f"{where} rejected the association: it does not answer to the called AE title {link.called_aet!r}",
                hint="Use the receiver's own AE title (XNAT lists its receivers at /xapi/dicomscp; the default is XNAT)",
                reason="called-aet",
            ) from None
        if rejection.source == 1 and rejection.reason == _REJECT_REASON_CALLING_AET:
            raise AssociationRejectedError(
                f"{where} rejected the association: our calling AE title {link.calling_aet!r} is not allowed",
                hint="Ask the receiver's administrator to allow this AE title, or use an allowed one",
            ) from None
        raise AssociationRejectedError(f"{where} rejected the association ({rejection.describe()})") from None
    except TimeoutError:
        raise DicomNetworkError(
            f"{where} did not answer the association request within {link.acse_timeout:g} s",
            hint="Is this the receiver's DICOM port? XNAT's is often 8104; a web port such as 8080 does not speak "
            "DICOM (XNAT: Administer > Site Administration > DICOM SCP lists its receivers)",
        ) from None
    except OSError as exc:
        raise _explain_connect_failure(link, exc) from None
    except UpperLayerError as exc:
        raise AssociationRejectedError(
            f"{where}: {exc}", hint="The receiver may be refusing connections or overloaded; check its log"
        ) from None
    if not assoc.accepted:
        assoc.release()
        offered = ", ".join(f"{uid_name(s)} in {uid_name(t)}" for s, t in pairs)
        raise NoAcceptedContextError(
            f"{where} accepted the association but none of the presentation contexts: {offered}",
            hint="The receiver does not store these SOP classes or transfer syntaxes; check its configuration",
        )
    return assoc


def uid_name(uid: str) -> str:
    """A UID's registered name, for messages.

    Args:
        uid: A SOP class or transfer syntax UID.

    Returns:
        Its name in the DICOM registry (``MR Image Storage``), or the UID itself when it has none.
    """
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name != uid else uid


@dataclass(frozen=True)
class EchoResult:
    """A C-ECHO answered: which receiver, and how long the round trip took."""

    host: str
    port: int
    called_aet: str
    seconds: float


def echo(
    host: str, port: int, called_aet: str = "XNAT", calling_aet: str = "XNATFLOWS", timeout: float = 10.0
) -> EchoResult:
    """Pre-flight C-ECHO: the receiver answers, to these AE titles, before anything is sent.

    Args:
        host: The receiver's host.
        port: The receiver's port (XNAT's receiver is usually 8104).
        called_aet: The receiver's AE title.
        calling_aet: Ours.
        timeout: Seconds for the association and the echo's answer each.

    Returns:
        Where it answered, and how long the echo took.

    Raises:
        DicomNetworkError: A subclass that says what to fix (port, AE title, a firewall, no C-ECHO).
    """
    link = ReceiverLink(
        host,
        port,
        called_aet,
        calling_aet,
        acse_timeout=timeout,
        dimse_timeout=timeout,
        max_pdu=16384,
    )
    started = time.perf_counter()
    try:
        assoc = open_association(link, [(VERIFICATION_SOP_CLASS, IMPLICIT_VR_LITTLE_ENDIAN)])
    except NoAcceptedContextError:
        raise NoAcceptedContextError(
            f"{host}:{port} does not support C-ECHO (Verification SOP class)",
            hint="Skip the pre-flight check for this receiver",
            reason="no-echo",
        ) from None
    try:
        status = assoc.echo()
    except UpperLayerError as exc:
        raise DicomNetworkError(f"{host}:{port} did not answer the C-ECHO: {exc}") from None
    finally:
        assoc.release()
    if status != 0x0000:
        raise DicomNetworkError(f"{host}:{port} answered the C-ECHO with status 0x{status:04X}")
    return EchoResult(host, int(port), link.called_aet, time.perf_counter() - started)
