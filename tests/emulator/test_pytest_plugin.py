"""The pytest plugin every pytest run loads wherever xnat_flows is installed: cheap until used."""

from __future__ import annotations

import subprocess
import sys


def test_loading_the_plugin_does_not_import_the_emulator():
    probe = (
        "import sys, xnat_flows.testing.pytest_plugin as plugin\n"
        "heavy = sorted(m for m in ('xnat_flows.testing.emulator', 'xnat_flows.testing.server', 'pydicom', 'prefect')"
        " if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == ""


def test_the_package_still_exports_the_emulator():
    from xnat_flows.testing import XnatEmulator
    from xnat_flows.testing.emulator import XnatEmulator as direct

    assert XnatEmulator is direct


def test_the_factory_fixture_starts_an_emulator(xnat_emulator_factory):
    xnat = xnat_emulator_factory(projects=("ONE",))
    assert xnat.url.startswith("http://127.0.0.1:")
    assert xnat.store is not None and xnat.store.project("ONE") is not None
