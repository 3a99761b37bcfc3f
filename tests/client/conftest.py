"""Fixtures for the client tests: ``manual_xnat`` and ``client`` (an emulator whose sessions stay in the
prearchive, and a client on it), as the manage tests use them."""

from __future__ import annotations

from manage_helpers import client, manual_xnat

__all__ = ["client", "manual_xnat"]
