"""DICOM C-STORE to a receiver (XNAT's DICOM SCP, dcmtk's storescp, a PACS).

A module per protocol concept, as pynetdicom has them. No Prefect here.

* ``association`` — the lean upper layer (PS3.8 PDUs, PS3.7 command sets): associate, C-ECHO,
  C-STORE, release, abort.
* ``contexts`` — presentation contexts planned from the files' SOP classes and transfer syntaxes.
* ``connect`` — opening an association to a receiver, the C-ECHO pre-flight, errors that say
  what to fix.
* ``dataset`` — the bytes sent for one file: as encoded on disk, or an in-memory routing or
  de-identified copy.
* ``worker`` — one association's loop over its share of the instances.
* ``send`` — ``store_instances``: the parallel associations, retries, Ctrl-C.
* ``resume`` — the upload journal: a re-run sends only what no earlier run delivered.
* ``inputs``, ``errors``, ``results`` — what the user gives, what fails, what is reported.

The names below load on first use (PEP 562): importing the package costs nothing the send
path does not need (docs/cstore.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xnat_flows._lazy import lazy_exports

if TYPE_CHECKING:
    from xnat_flows.transfer.cstore.connect import EchoResult, echo
    from xnat_flows.transfer.cstore.errors import (
        AssociationRejectedError,
        CalledAETitleRejectedError,
        DicomNetworkError,
        NoAcceptedContextError,
        PeerUnreachableError,
    )
    from xnat_flows.transfer.cstore.inputs import RoutingOverride, validate_ae_title
    from xnat_flows.transfer.cstore.results import InstanceOutcome, SendResult
    from xnat_flows.transfer.cstore.resume import store_instances_resumable
    from xnat_flows.transfer.cstore.send import store_instances

_EXPORTS = {
    "EchoResult": "xnat_flows.transfer.cstore.connect",
    "echo": "xnat_flows.transfer.cstore.connect",
    "AssociationRejectedError": "xnat_flows.transfer.cstore.errors",
    "CalledAETitleRejectedError": "xnat_flows.transfer.cstore.errors",
    "DicomNetworkError": "xnat_flows.transfer.cstore.errors",
    "NoAcceptedContextError": "xnat_flows.transfer.cstore.errors",
    "PeerUnreachableError": "xnat_flows.transfer.cstore.errors",
    "RoutingOverride": "xnat_flows.transfer.cstore.inputs",
    "validate_ae_title": "xnat_flows.transfer.cstore.inputs",
    "InstanceOutcome": "xnat_flows.transfer.cstore.results",
    "SendResult": "xnat_flows.transfer.cstore.results",
    "store_instances_resumable": "xnat_flows.transfer.cstore.resume",
    "store_instances": "xnat_flows.transfer.cstore.send",
}

__all__ = [
    "AssociationRejectedError",
    "CalledAETitleRejectedError",
    "DicomNetworkError",
    "EchoResult",
    "InstanceOutcome",
    "NoAcceptedContextError",
    "PeerUnreachableError",
    "RoutingOverride",
    "SendResult",
    "echo",
    "store_instances",
    "store_instances_resumable",
    "validate_ae_title",
]

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
