"""Prefect tasks composed from the library layer (``xnat_flows.client``, ``transfer``, ``manage``)."""
