"""Test ground truth for xnat_flows: an XNAT emulator (HTTP + optional DICOM receiver) and synthetic data."""

from xnat_flows.testing.emulator import XnatEmulator

__all__ = ["XnatEmulator"]
