"""The XNAT_* environment, read by pydantic-settings (from os.environ or a given mapping)."""

from __future__ import annotations

import pytest

from xnat_flows.client.errors import InputError
from xnat_flows.client.settings import EnvSettings


def test_a_given_mapping_is_read_with_aliases_and_empty_values_unset() -> None:
    env = EnvSettings.from_environ(
        {"XNAT_URL": "https://x.example", "XNAT_USERNAME": "me", "XNAT_PASS": "", "XNAT_VERIFY_SSL": "no", "HOME": "/h"}
    )
    assert (env.url, env.username, env.password, env.verify_ssl) == ("https://x.example", "me", None, False)


def test_os_environ_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XNAT_USER", "you")
    monkeypatch.setenv("XNAT_PASSWORD", "s3cret-value")
    env = EnvSettings.from_environ()
    assert env.username == "you" and env.password.get_secret_value() == "s3cret-value"


def test_a_bad_boolean_names_the_variable_not_its_value() -> None:
    with pytest.raises(InputError, match="XNAT_VERIFY_SSL") as info:
        EnvSettings.from_environ({"XNAT_VERIFY_SSL": "perhaps-secret"})
    assert "perhaps-secret" not in str(info.value)
