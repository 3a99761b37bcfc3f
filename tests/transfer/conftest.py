"""Shared fixtures for the transfer tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from transfer_helpers import write_study


@pytest.fixture
def study_dir(tmp_path: Path) -> Path:
    """One study, 2 series x 3 instances, extensionless files in nested folders."""
    root = tmp_path / "export"
    write_study(root, series=2, instances=3)
    return root
