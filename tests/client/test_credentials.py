"""resolve_credentials: arguments > environment > profile > prompt."""

from __future__ import annotations

from pathlib import Path

import pytest

from xnat_flows.cli.hints import cli_hint
from xnat_flows.client.credentials import Credentials, resolve_credentials
from xnat_flows.client.errors import InputError

CONFIG = """
default_profile = "work"

[profiles.work]
url = "https://work.example.org/"
username = "wuser"
password = "wpass"
verify_ssl = false

[profiles.lab]
url = "https://lab.example.org"
user = "luser"
"""


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "config.toml").write_text(CONFIG)
    return {"XNAT_FLOWS_HOME": str(tmp_path)}


def test_profile_is_used_when_nothing_else_is_given(home) -> None:
    creds = resolve_credentials(environ=home, prompt=False)
    assert creds.url == "https://work.example.org"
    assert creds.username == "wuser"
    assert creds.password.get_secret_value() == "wpass"
    assert creds.verify is False


def test_environment_beats_profile_and_arguments_beat_environment(home) -> None:
    env = home | {"XNAT_USER": "euser", "XNAT_PASS": "epass", "XNAT_URL": "https://work.example.org"}
    creds = resolve_credentials(environ=env, prompt=False)
    assert (creds.username, creds.password.get_secret_value()) == ("euser", "epass")
    creds = resolve_credentials(username="auser", password="apass", environ=env, prompt=False)
    assert (creds.username, creds.password.get_secret_value()) == ("auser", "apass")


def test_named_profile_and_unknown_profile(home) -> None:
    assert resolve_credentials(profile="lab", environ=home, prompt=False).username == "luser"
    assert resolve_credentials(environ=home | {"XNAT_PROFILE": "lab"}, prompt=False).username == "luser"
    with pytest.raises(InputError, match="No profile named 'nope'") as info:
        resolve_credentials(profile="nope", environ=home, prompt=False)
    assert "profiles.nope" in info.value.hint


def test_a_profile_password_is_never_sent_to_another_server(home) -> None:
    creds = resolve_credentials(url="https://elsewhere.example.org", environ=home, prompt=False)
    assert creds.password is None and creds.username is None


def test_tls_settings_from_environment(home, tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    assert resolve_credentials(environ=home | {"XNAT_VERIFY_SSL": "true"}, prompt=False).verify is True
    assert resolve_credentials(environ=home | {"XNAT_CA_BUNDLE": str(bundle)}, prompt=False).verify == str(bundle)
    with pytest.raises(InputError, match="does not exist"):
        resolve_credentials(environ=home | {"XNAT_CA_BUNDLE": str(tmp_path / "missing.pem")}, prompt=False)


def test_missing_url_says_where_to_put_one(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="No XNAT URL") as info:
        resolve_credentials(environ={"XNAT_FLOWS_HOME": str(tmp_path)}, prompt=False)
    assert info.value.reason == "no-url" and "XNAT_URL" in cli_hint(info.value)


def test_token_from_environment_and_secrets_never_printed(tmp_path: Path) -> None:
    env = {
        "XNAT_FLOWS_HOME": str(tmp_path),
        "XNAT_URL": "https://x.org",
        "XNAT_TOKEN": "ABCDEF123456",
        "XNAT_PASS": "pw",
    }
    creds = resolve_credentials(environ=env, prompt=False)
    assert creds.token.get_secret_value() == "ABCDEF123456"
    assert "ABCDEF123456" not in repr(creds) and "pw'" not in repr(creds)


def test_prompts_only_when_interactive(tmp_path: Path, monkeypatch) -> None:
    import xnat_flows.client.credentials as module

    env = {"XNAT_FLOWS_HOME": str(tmp_path), "XNAT_URL": "https://x.org", "XNAT_USER": "bob"}
    monkeypatch.setattr(module, "_is_interactive", lambda: True)
    monkeypatch.setattr(module.getpass, "getpass", lambda prompt: "typed")
    assert resolve_credentials(environ=env).password.get_secret_value() == "typed"
    assert resolve_credentials(environ=env, prompt=False).password is None


def test_bad_urls_are_input_errors(tmp_path: Path) -> None:
    env = {"XNAT_FLOWS_HOME": str(tmp_path)}
    with pytest.raises(InputError, match="http"):
        resolve_credentials(url="xnat.example.org", environ=env, prompt=False)
    with pytest.raises(InputError, match="must not contain credentials"):
        resolve_credentials(url="https://u:p@xnat.example.org", environ=env, prompt=False)


def test_broken_profile_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("this is = = not toml")
    with pytest.raises(InputError, match="Cannot read the profile file"):
        resolve_credentials(url="https://x.org", environ={"XNAT_FLOWS_HOME": str(tmp_path)}, prompt=False)


def test_credentials_are_a_frozen_model() -> None:
    creds = Credentials(url="https://x.org/", username="u")
    assert creds.url == "https://x.org"
    assert creds.model_copy(update={"username": "v"}).username == "v"
