"""Fixtures for the resource and manage-layer tests (``scripted_client`` is suite-wide)."""

from __future__ import annotations

from manage_helpers import client, manual_xnat

__all__ = ["client", "manual_xnat"]
