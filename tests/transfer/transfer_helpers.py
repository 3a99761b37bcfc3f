"""Synthetic DICOM for the transfer tests, written by ``xnat_flows.testing.synth``."""

from __future__ import annotations

import itertools
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pydicom
from pydantic import SecretStr

from xnat_flows.client.client import XnatClient
from xnat_flows.client.credentials import Credentials, TokenCache
from xnat_flows.client.retry import RetryPolicy
from xnat_flows.testing import XnatEmulator
from xnat_flows.testing.synth import write_studies as synth_write_studies

# synth writes the same bytes for the same seed: a fresh seed per call gives fresh UIDs, as a new
# export from a scanner would have (pytest-xdist workers are separate processes, hence the pid).
_seeds = itertools.count(os.getpid() * 1000)


def write_study(out_dir: Path, *, series: int = 2, instances: int = 3, study_uid: str | None = None) -> list[Path]:
    """Write one CT study (``series`` x ``instances`` files) under ``out_dir``; return the paths.

    ``study_uid`` re-stamps the StudyInstanceUID, to split one study over several folders.
    """
    staging = Path(out_dir) / ".synth"
    manifest = synth_write_studies(
        staging, series=series, instances=series * instances, instance_kb=4, modality="CT", seed=next(_seeds)
    )
    # The tests name files as a scanner export might: series<n>/IM<nnnn>, no extension.
    paths = []
    for f in manifest.files:
        number = sum(1 for p in paths if p.parent.name == f"series{f.series_number}") + 1
        path = Path(out_dir) / f"series{f.series_number}" / f"IM{number:04d}"
        path.parent.mkdir(parents=True, exist_ok=True)
        f.path.rename(path)
        paths.append(path)
    shutil.rmtree(staging)
    if study_uid:
        for path in paths:
            ds = pydicom.dcmread(path)
            ds.StudyInstanceUID = study_uid
            ds.save_as(path, enforce_file_format=True)
    return paths


def write_studies(out_dir: Path, *, studies: int = 1, series: int = 2, instances: int = 3) -> list[str]:
    """Several studies; returns their StudyInstanceUIDs."""
    manifest = synth_write_studies(
        out_dir, studies=studies, series=series, instances=series * instances, instance_kb=16, seed=next(_seeds)
    )
    return list(manifest.study_uids)


def connect(emulator: XnatEmulator, tmp_path: Path, *, password: str = "admin", **timeouts: Any) -> XnatClient:
    """A client of ``emulator`` with its own token cache under ``tmp_path``; ``timeouts``: the client's
    ``timeout``, ``stall`` and ``answer``."""
    creds = Credentials(url=emulator.url, username=emulator.user, password=SecretStr(password))
    # Real backoff, shortened: tests stay fast but retries still go through the policy.
    policy = RetryPolicy(sleep=lambda seconds: time.sleep(min(seconds, 0.05)))
    return XnatClient(creds, token_cache=TokenCache(tmp_path / "profile"), retry=policy, **timeouts)
