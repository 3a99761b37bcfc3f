"""What a C-STORE reports (``cstore.results``): status meanings."""

from __future__ import annotations

from xnat_flows.transfer.cstore.results import status_meaning


def test_status_meanings_name_the_category_and_the_text() -> None:
    assert status_meaning(0x0000) == "Success"
    assert status_meaning(0xB000) == "Warning: Coercion of Data Elements"
    assert status_meaning(0xA700) == "Failure: Refused: Out of Resources"
    assert status_meaning(0xC000) == "Failure: Cannot Understand"
    assert status_meaning(None).startswith("no response")
