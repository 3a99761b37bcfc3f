"""Where settings come from: the environment and the profile file.

The profile directory is ``$XNAT_FLOWS_HOME`` or ``~/.config/xnat-flows/``. It holds
``config.toml`` (named profiles), the JSESSION token cache and the upload journals::

    default_profile = "work"

    [profiles.work]
    url = "https://xnat.example.org"
    username = "alice"
    # password = "..."        # possible, but prefer XNAT_PASS or the prompt
    verify_ssl = true
    ca_bundle = "/etc/ssl/certs/site-ca.pem"

Both sources are read from an explicit mapping (default ``os.environ``) so tests and Prefect
workers can resolve settings without touching the process environment.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, ValidationError

from xnat_flows.client.errors import InputError
from xnat_flows.client.paths import ensure_private_dir as ensure_private_dir  # re-exported (home: client.paths)
from xnat_flows.client.paths import profile_dir as profile_dir

CONFIG_FILE_NAME = "config.toml"


def parse_bool(text: str) -> bool:
    return text.strip().lower() not in ("0", "false", "no", "off", "")


class EnvSettings(BaseModel):
    """The ``XNAT_*`` environment variables (the same names as xnatctl)."""

    model_config = ConfigDict(extra="ignore")

    url: str | None = Field(None, validation_alias="XNAT_URL")
    username: str | None = Field(None, validation_alias=AliasChoices("XNAT_USER", "XNAT_USERNAME"))
    password: SecretStr | None = Field(None, validation_alias=AliasChoices("XNAT_PASS", "XNAT_PASSWORD"))
    token: SecretStr | None = Field(None, validation_alias="XNAT_TOKEN")
    verify_ssl: str | None = Field(None, validation_alias="XNAT_VERIFY_SSL")
    ca_bundle: str | None = Field(None, validation_alias="XNAT_CA_BUNDLE")
    profile: str | None = Field(None, validation_alias="XNAT_PROFILE")

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> EnvSettings:
        environ = os.environ if environ is None else environ
        # Empty variables count as unset (a common CI artefact: XNAT_PASS="").
        return cls.model_validate({k: v for k, v in environ.items() if k.startswith("XNAT_") and v != ""})


class Profile(BaseModel):
    """One ``[profiles.NAME]`` table of ``config.toml``."""

    model_config = ConfigDict(extra="ignore")

    url: str | None = None
    username: str | None = Field(None, validation_alias=AliasChoices("username", "user"))
    password: SecretStr | None = None
    token: SecretStr | None = None
    verify_ssl: bool | None = None
    ca_bundle: str | None = None


class ProfileConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    default_profile: str | None = None
    profiles: dict[str, Profile] = Field(default_factory=dict)

    @classmethod
    def load(cls, directory: Path) -> ProfileConfig:
        path = directory / CONFIG_FILE_NAME
        if not path.is_file():
            return cls()
        try:
            return cls.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
        except (tomllib.TOMLDecodeError, ValidationError, OSError) as exc:
            raise InputError(
                f"Cannot read the profile file {path}: {exc}",
                hint="Fix the TOML syntax, or move the file away to start without profiles",
            ) from None

    def select(self, name: str | None) -> Profile | None:
        """The named profile (an unknown explicit name is an error), else the default one."""
        if name:
            if name not in self.profiles:
                known = ", ".join(sorted(self.profiles)) or "none"
                raise InputError(
                    f"No profile named {name!r} (known: {known})",
                    hint=f"Add a [profiles.{name}] table to {CONFIG_FILE_NAME} in the xnat-flows profile directory",
                )
            return self.profiles[name]
        default = self.default_profile or "default"
        return self.profiles.get(default)
