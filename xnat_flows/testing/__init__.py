"""Test ground truth for xnat_flows: an XNAT emulator (HTTP + optional DICOM receiver) and synthetic data.

``XnatEmulator`` is imported on first use (PEP 562): the pytest plugin, loaded by every pytest run
wherever xnat_flows is installed, imports this package without paying for the emulator.
"""

from typing import TYPE_CHECKING

from xnat_flows._lazy import lazy_exports

if TYPE_CHECKING:
    from xnat_flows.testing.emulator import XnatEmulator

__all__ = ["XnatEmulator"]
__getattr__, __dir__ = lazy_exports(globals(), {"XnatEmulator": "xnat_flows.testing.emulator"})
