"""Prefect's Block standard tests, run over every Block of the package as prefect-aws runs them
(its tests/test_block_standards.py), and the form the UI renders from each Block's schema."""

from __future__ import annotations

import pytest
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from prefect.utilities.dispatch import get_registry_for_type
from prefect.utilities.importtools import to_qualified_name

import xnat_flows.blocks  # noqa: F401 - registers the package's Blocks


def find_module_blocks() -> list[type[Block]]:
    blocks = get_registry_for_type(Block) or {}
    return [block for block in blocks.values() if to_qualified_name(block).startswith("xnat_flows")]


def test_the_package_has_its_three_blocks() -> None:
    assert {block.__name__ for block in find_module_blocks()} == {"XnatCredentials", "DicomReceiver", "DicomEditScript"}


@pytest.mark.parametrize("block", find_module_blocks())
class TestAllBlocksAdhereToStandards(BlockStandardTestSuite):
    @pytest.fixture
    def block(self, block: type[Block]) -> type[Block]:
        return block


@pytest.mark.parametrize("block", find_module_blocks())
def test_the_form_has_no_type_switches(block: type[Block]) -> None:
    """Prefect's form renders an ``anyOf`` (``str | None``) as a type switch ("string | null")
    the operator must pick before typing: no field of ours offers one."""
    for name, prop in block.model_json_schema()["properties"].items():
        assert "anyOf" not in prop and prop.get("type") != "null", (name, prop)
        assert prop.get("title") and prop.get("description"), name


def test_the_password_renders_as_a_required_password_field() -> None:
    from xnat_flows.blocks import XnatCredentials

    schema = XnatCredentials.model_json_schema()
    password = schema["properties"]["password"]
    # format "password": the UI's password input (masked while typing); writeOnly and secret_fields:
    # stored encrypted, shown obfuscated by the API.
    assert password["type"] == "string" and password["format"] == "password" and password["writeOnly"] is True
    assert schema["secret_fields"] == ["password"]
    assert {"url", "username", "password"} <= set(schema["required"])  # no "(Optional)" on them


def test_a_blocks_default_name_tells_server_and_user_apart() -> None:
    from xnat_flows.blocks import XnatCredentials

    block = XnatCredentials(url="https://XNAT.example.org:8443/", username="svc.Uploader", password="p")
    assert block.default_name == "xnat-example-org-8443-svc-uploader"
    assert XnatCredentials(url="https://xnat.example.org", username="me", password="p").default_name == (
        "xnat-example-org-me"
    )
