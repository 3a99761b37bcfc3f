"""The emulator's DICOM receiver: a pynetdicom C-STORE SCP that hands each instance to an ingest callback.

Like XNAT's receiver it accepts Verification and the storage SOP classes, rejects an association
whose *called* AE title is not its own, and answers every C-STORE with the outcome of the import.
The received dataset is never decoded: the Part-10 bytes handed to ``ingest`` are the peer's
encoded dataset behind a file meta header, so a test can compare them with what was sent.

``ScpFaults`` reproduces what a sender must survive: an association aborted mid-transfer, a
receiver that stops replying (pynetdicom's own mid-message stall under CPU
contention, docs/cstore.md), and refusal.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.transport import ThreadedAssociationServer

log = logging.getLogger(__name__)

# pynetdicom builds its SOP class names at import time, out of a type checker's sight.
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"  # DICOM PS3.4 A.4

Ingest = Callable[[bytes, str], "str | None"]

STATUS_SUCCESS = 0x0000
STATUS_CANNOT_UNDERSTAND = 0xC000  # ingest refused the object (XNAT: unparsable / not importable)
STATUS_OUT_OF_RESOURCES = 0xA700  # ingest failed with an error on our side
SIEMENS_CSA_NON_IMAGE = "1.3.12.2.1107.5.9.1"  # private class scanners send; XNAT stores it
_NOBODY = "NO-SUCH-CALLER"  # a calling AE title no peer uses: makes pynetdicom reject everybody


@dataclass
class ScpFaults:
    """Fault injection; each store fault fires once and then disarms, so a retry can complete.

    ``abort_after_stores``: the first N C-STOREs (counted over all associations) succeed, the
    next one aborts its association instead of being stored.
    ``stall_after_stores``: likewise, but the next one is never answered (for ``stall_seconds``).
    ``refuse_associations``: reject every association request while set.
    """

    abort_after_stores: int | None = None
    stall_after_stores: int | None = None
    stall_seconds: float = 120.0
    refuse_associations: bool = False


class EmulatorDicomScp:
    """``EmulatorDicomScp(ingest, port=0).start()``; ``.port`` is the bound port; ``.stop()`` ends it."""

    def __init__(
        self,
        ingest: Ingest,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ae_title: str = "XNAT",
        max_pdu: int = 131072,
        faults: ScpFaults | None = None,
    ) -> None:
        self.ingest = ingest
        self.host = host
        self.requested_port = port
        self.ae_title = ae_title
        self.max_pdu = max_pdu
        self.faults = faults or ScpFaults()
        self.stores_seen = 0  # C-STORE requests received (including faulted ones)
        self._lock = threading.Lock()
        self._stop_stalls = threading.Event()
        self._ae: AE | None = None
        self._server: ThreadedAssociationServer | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> EmulatorDicomScp:
        ae = AE(ae_title=self.ae_title)
        ae.maximum_pdu_size = self.max_pdu
        ae.require_called_aet = True  # XNAT rejects an association addressed to another AE title
        ae.maximum_associations = 32
        ae.network_timeout = 60
        ae.dimse_timeout = 60
        ae.add_supported_context(VERIFICATION_SOP_CLASS, ALL_TRANSFER_SYNTAXES)
        storage = [c.abstract_syntax for c in AllStoragePresentationContexts if c.abstract_syntax is not None]
        for sop_class in [*storage, SIEMENS_CSA_NON_IMAGE]:
            ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        self._ae = ae
        self._apply_refusal()
        handlers: list[EventHandlerType] = [
            (evt.EVT_CONN_OPEN, self._on_connection_open),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
        self._stop_stalls.clear()
        self._server = ae.start_server((self.host, self.requested_port), block=False, evt_handlers=handlers)
        return self

    def stop(self) -> None:
        self._stop_stalls.set()  # release handlers stuck in a stall so the server can shut down
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._ae is not None:
            self._ae.shutdown()
            self._ae = None

    def __enter__(self) -> EmulatorDicomScp:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("DICOM receiver is not running")
        return int(self._server.server_address[1])

    def set_faults(self, faults: ScpFaults) -> None:
        """Replace the fault plan while running (refusal takes effect for the next association)."""
        with self._lock:
            self.faults = faults
        self._apply_refusal()

    def _apply_refusal(self) -> None:
        if self._ae is not None:
            # pynetdicom reads this list for every association request
            self._ae.require_calling_aet = [_NOBODY] if self.faults.refuse_associations else []

    # -- event handlers --------------------------------------------------------------------------
    @staticmethod
    def _on_connection_open(event: Event) -> None:
        # Without TCP_NODELAY every response waits ~40 ms for Nagle's algorithm (docs/cstore.md).
        sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @staticmethod
    def _on_echo(event: Event) -> int:
        return STATUS_SUCCESS

    def _on_store(self, event: Event) -> int:
        action = self._store_fault()
        if action == "abort":
            log.info("fault: aborting association from %s", event.assoc.requestor.ae_title)
            event.assoc.abort()
            return STATUS_OUT_OF_RESOURCES  # never sent: the association is gone
        if action == "stall":
            log.info("fault: not answering a C-STORE from %s", event.assoc.requestor.ae_title)
            self._stop_stalls.wait(self.faults.stall_seconds)
            return STATUS_OUT_OF_RESOURCES
        calling_aet = event.assoc.requestor.ae_title.strip()
        sop_instance = event.request.AffectedSOPInstanceUID if isinstance(event.request, C_STORE) else None
        try:
            outcome = self.ingest(event.encoded_dataset(include_meta=True), calling_aet)
        except Exception as exc:  # the receiver must answer every request; the failure goes into the status
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                log.warning("ingest failed for %s: no space left on device", sop_instance)
            else:
                log.exception("ingest failed for %s", sop_instance)
            return STATUS_OUT_OF_RESOURCES
        return STATUS_SUCCESS if outcome is not None else STATUS_CANNOT_UNDERSTAND

    def _store_fault(self) -> str | None:
        """Count this C-STORE and decide whether a one-shot fault fires on it."""
        with self._lock:
            seen = self.stores_seen
            self.stores_seen += 1
            faults = self.faults
            if faults.abort_after_stores is not None and seen >= faults.abort_after_stores:
                faults.abort_after_stores = None
                return "abort"
            if faults.stall_after_stores is not None and seen >= faults.stall_after_stores:
                faults.stall_after_stores = None
                return "stall"
        return None
