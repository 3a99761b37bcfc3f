"""Our AE-title check keeps pynetdicom's rules without importing pynetdicom (cstore/inputs.py says why)."""

from __future__ import annotations

import pytest
from pynetdicom.utils import set_ae

from xnat_flows.client.errors import InputError
from xnat_flows.transfer.cstore.inputs import validate_ae_title

TITLES = [
    "XNAT",
    " XNAT  ",
    "lower-case_1",
    "A B",
    "!#$%&'()*+,-./:;",
    "~",
    "A" * 16,
    "A" * 17,
    " " + "A" * 15,
    " " + "A" * 16,
    "A" * 15 + " ",
    "A" * 16 + " ",
    "",
    " ",
    " " * 16,
    " " * 17,
    "\t",
    "BAD\\AE",
    "TAB\tAE",
    "NL\n",
    "CR\r",
    "NUL\x00",
    "DEL\x7f",
    "ESC\x1b",
    "caf\u00e9",
    "\u00a0NBSP",
    "ZW\u200bSP",
    "\u00c4E",
] + [chr(code) for code in range(256)]


def pynetdicom_accepts(title: str) -> bool:
    """What pynetdicom does with an association's AE title (``AE.ae_title``, ``associate(ae_title=)``)."""
    try:
        set_ae(title, "ae_title", allow_empty=False, allow_none=False)
    except ValueError:
        return False
    return True


def ours_accepts(title: str) -> bool:
    try:
        validate_ae_title(title, "called")
    except InputError:
        return False
    return True


@pytest.mark.parametrize("title", TITLES, ids=repr)
def test_our_ae_title_rules_are_pynetdicoms(title: str) -> None:
    assert ours_accepts(title) == pynetdicom_accepts(title)


def test_what_we_hand_on_pynetdicom_accepts_too() -> None:
    accepted = [title for title in TITLES if ours_accepts(title)]
    assert accepted and all(pynetdicom_accepts(validate_ae_title(title, "calling")) for title in accepted)
