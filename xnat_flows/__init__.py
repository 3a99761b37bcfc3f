"""xnat_flows: Prefect 3 tasks and flows that move imaging data into XNAT.

Layers (each importable on its own):

* ``xnat_flows.client`` and ``xnat_flows.transfer``: plain, typed Python (httpx, pydicom,
  pynetdicom); no Prefect import.
* ``xnat_flows.tasks``, ``xnat_flows.flows``, ``xnat_flows.blocks``: Prefect tasks, flows and
  Blocks composed from the layer below.
* ``xnat_flows.cli``: the ``xnat-flows`` command line, on top of both.
* ``xnat_flows.testing``: an XNAT emulator (HTTP + DICOM SCP) and synthetic studies; imports
  nothing of the client.
"""

__version__ = "0.1.0"

# The Blocks are reachable from the package itself, so `prefect block register -m xnat_flows`
# works, without importing Prefect for users of the emulator or the plain library (PEP 562).
from xnat_flows._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(
    globals(), {"XnatCredentials": "xnat_flows.blocks", "DicomReceiver": "xnat_flows.blocks"}
)
