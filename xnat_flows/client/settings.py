"""Where settings come from: the environment and the profile file.

The profile directory is ``$XNAT_FLOWS_HOME`` or ``~/.config/xnat-flows/``. It holds
``config.toml`` (named profiles; ``xnat-flows auth login`` writes the URL and user of the
default profile, or of ``--profile NAME``), the JSESSION token cache and the upload journals::

    default_profile = "work"

    [profiles.work]
    url = "https://xnat.example.org"
    username = "alice"
    # password = "..."        # possible, but prefer `xnat-flows auth login` (caches a token)
    verify_ssl = true
    ca_bundle = "/etc/ssl/certs/site-ca.pem"

Both sources are read from an explicit mapping (default ``os.environ``) so tests and Prefect
workers can resolve settings without touching the process environment.
"""

from __future__ import annotations

import os
import tempfile
import tomllib
from collections.abc import Mapping
from pathlib import Path

import tomli_w
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from xnat_flows.client.errors import InputError
from xnat_flows.client.paths import ensure_private_dir as ensure_private_dir  # re-exported (home: client.paths)
from xnat_flows.client.paths import profile_dir as profile_dir

CONFIG_FILE_NAME = "config.toml"


class EnvSettings(BaseSettings):
    """The ``XNAT_*`` environment variables (the same names as xnatctl), read by pydantic-settings.

    Empty variables count as unset (a common CI artefact: ``XNAT_PASS=""``).
    """

    model_config = SettingsConfigDict(extra="ignore", env_ignore_empty=True, populate_by_name=False)

    url: str | None = Field(None, validation_alias="XNAT_URL")
    username: str | None = Field(None, validation_alias=AliasChoices("XNAT_USER", "XNAT_USERNAME"))
    password: SecretStr | None = Field(None, validation_alias=AliasChoices("XNAT_PASS", "XNAT_PASSWORD"))
    token: SecretStr | None = Field(None, validation_alias="XNAT_TOKEN")
    verify_ssl: bool | None = Field(None, validation_alias="XNAT_VERIFY_SSL")
    ca_bundle: str | None = Field(None, validation_alias="XNAT_CA_BUNDLE")
    profile: str | None = Field(None, validation_alias="XNAT_PROFILE")

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> EnvSettings:
        """Read the ``XNAT_*`` variables of ``environ``.

        Args:
            environ: The environment to read (``os.environ`` when None).

        Returns:
            The settings; unset and empty variables are None.

        Raises:
            InputError: A variable that does not parse, named without its value (it may be a secret).
        """
        try:
            if environ is None or environ is os.environ:
                return cls()  # type: ignore[call-arg]  # every field has a default; mypy sees the aliases
            return cls.model_validate(_MappingEnvSource(cls, environ)())
        except ValidationError as exc:  # names the variable, never echoes its value (it may be a secret)
            problem = exc.errors()[0]
            raise InputError(
                f"Environment variable {'/'.join(map(str, problem['loc']))}: {problem['msg']}",
                hint="XNAT_VERIFY_SSL takes true/false (1/0, yes/no, on/off)",
            ) from None


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


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
    """``config.toml`` of the profile directory: the default profile's name and every profile."""

    model_config = ConfigDict(extra="ignore")

    default_profile: str | None = None
    profiles: dict[str, Profile] = Field(default_factory=dict)

    @classmethod
    def load(cls, directory: Path) -> ProfileConfig:
        """Read ``config.toml`` from ``directory`` (no file: no profiles).

        Args:
            directory: The profile directory.

        Returns:
            The file's profiles.

        Raises:
            InputError: The file cannot be read or is not valid TOML of this shape.
        """
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

    def select(self, name: str | None, *, missing_ok: bool = False) -> Profile | None:
        """The named profile, else the default one.

        Args:
            name: The profile asked for, if any.
            missing_ok: An unknown ``name`` is one a login is about to create, not an error.

        Returns:
            The profile, or None when there is none to use.

        Raises:
            InputError: ``name`` is unknown and ``missing_ok`` is false.
        """
        if name:
            if name not in self.profiles and missing_ok:
                return None
            if name not in self.profiles:
                known = ", ".join(sorted(self.profiles)) or "none"
                raise InputError(
                    f"No profile named {name!r} (known: {known})",
                    hint=f"Add a [profiles.{name}] table to {CONFIG_FILE_NAME} in the xnat-flows profile directory",
                    reason="unknown-profile",
                )
            return self.profiles[name]
        default = self.default_profile or "default"
        return self.profiles.get(default)


def save_profile(directory: Path, name: str, *, url: str, username: str | None) -> Path:
    """Record ``url`` and ``username`` as profile ``name`` in ``config.toml``.

    Other keys and profiles are kept. The file is written atomically, mode 0600; it never holds a
    password unless the user put one there.

    Args:
        directory: The profile directory.
        name: The profile's name.
        url: The server's URL.
        username: The user, if any.

    Returns:
        The path of ``config.toml``.

    Raises:
        InputError: The existing file cannot be read.
    """
    path = directory / CONFIG_FILE_NAME
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (tomllib.TOMLDecodeError, OSError) as exc:
        raise InputError(
            f"Cannot read the profile file {path}: {exc}", hint="Fix the TOML syntax or move the file away"
        ) from None
    profile = data.setdefault("profiles", {}).setdefault(name, {})
    profile["url"] = url
    profile.pop("user", None)
    if username:
        profile["username"] = username
    ensure_private_dir(directory)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".config-", suffix=".tmp")  # created 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            tomli_w.dump(data, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
