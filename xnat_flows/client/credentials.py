"""Credentials: where they come from, and the on-disk JSESSION cache.

Priority, field by field: arguments > environment > profile file > interactive prompt.
A password taken from a profile is used only with that profile's own URL, so pointing a
command at another server never sends it a password meant for a different one.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError, field_validator

from xnat_flows.client.errors import InputError
from xnat_flows.client.settings import EnvSettings, ProfileConfig, ensure_private_dir, profile_dir


class Credentials(BaseModel):
    """Everything needed to talk to one XNAT. Secrets print as ``'**********'``."""

    model_config = ConfigDict(frozen=True)

    url: str
    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None  # a ready JSESSIONID (XNAT_TOKEN)
    verify: bool | str = True  # False, True, or the path of a CA bundle

    @field_validator("url")
    @classmethod
    def _normalise_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"XNAT URL must start with http:// or https:// (got {value!r})")
        if "@" in value.split("/", 3)[2]:
            # user:password@host would end up in logs and error messages
            raise ValueError("XNAT URL must not contain credentials; give the user and password on their own")
        return value


def _is_interactive() -> bool:
    try:
        return sys.stdin.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


# Passwords handed over inside this process (``keep_password_in_process``): a flow run started
# by the CLI finds them here. The environment would do too, but every child process inherits it.
_process_passwords: dict[str, SecretStr] = {}
_process_passwords_lock = threading.Lock()


def keep_password_in_process(url: str, username: str | None, password: SecretStr) -> None:
    """Offer ``password`` to later resolutions for this URL and user in this process only.

    Args:
        url: The server's URL.
        username: The user the password belongs to.
        password: The password, kept in this process's memory (never the environment).
    """
    with _process_passwords_lock:
        _process_passwords[TokenCache._key(url, username)] = password


def _process_password(url: str, username: str | None) -> SecretStr | None:
    with _process_passwords_lock:
        return _process_passwords.get(TokenCache._key(url, username))


def chosen_profile_name(profile: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The profile a command uses.

    ``--profile``, else ``$XNAT_PROFILE``, else the file's ``default_profile``, else ``default``
    (the one ``xnat-flows auth login`` writes).

    Args:
        profile: The name given on the command line, if any.
        environ: The environment to read (``os.environ`` when None).

    Returns:
        The profile's name.
    """
    environ = os.environ if environ is None else environ
    if profile:
        return profile
    env = EnvSettings.from_environ(environ)
    return env.profile or ProfileConfig.load(profile_dir(environ)).default_profile or "default"


def resolve_credentials(
    url: str | None = None,
    username: str | None = None,
    password: str | None = None,
    *,
    profile: str | None = None,
    prompt: bool = True,
    environ: Mapping[str, str] | None = None,
    new_profile: bool = False,
) -> Credentials:
    """Merge arguments, ``XNAT_*`` variables, the profile file and (if allowed) a prompt.

    A missing password is not an error here: the client may still hold a cached session
    token for this URL and user, and reports a clear ``AuthenticationError`` otherwise.

    Args:
        url: The server's URL (wins over the environment and the profile).
        username: The user (likewise).
        password: The password (likewise).
        profile: The profile to read (else ``$XNAT_PROFILE`` or the default one).
        prompt: Ask on a terminal for what is still missing.
        environ: The environment to read (``os.environ`` when None).
        new_profile: An unknown ``profile`` is one about to be written (``auth login``), not an error.

    Returns:
        The credentials (the password may be None).

    Raises:
        InputError: No URL, a CA bundle that does not exist, or a URL that is not one.
    """
    environ = os.environ if environ is None else environ
    env = EnvSettings.from_environ(environ)
    chosen = ProfileConfig.load(profile_dir(environ)).select(profile or env.profile, missing_ok=new_profile)

    resolved_url = url or env.url or (chosen.url if chosen else None)
    if not resolved_url and prompt and _is_interactive():
        resolved_url = input("XNAT URL: ").strip()
    if not resolved_url:
        raise InputError(
            "No XNAT URL given",
            hint=f"Give the server's URL, or add a profile with a url to config.toml in {profile_dir(environ)}",
            reason="no-url",
        )
    same_server = chosen is not None and chosen.url is not None and chosen.url.rstrip("/") == resolved_url.rstrip("/")
    from_profile = chosen if (chosen is not None and (same_server or chosen.url is None)) else None

    resolved_user = username or env.username or (from_profile.username if from_profile else None)
    secret = (
        SecretStr(password)
        if password
        else env.password
        or (_process_password(resolved_url, resolved_user) if resolved_user else None)
        or (from_profile.password if from_profile else None)
    )
    token = env.token or (from_profile.token if from_profile else None)
    if not resolved_user and not token and prompt and _is_interactive():
        resolved_user = input(f"XNAT user for {resolved_url}: ").strip() or None
    if (
        resolved_user
        and secret is None
        and token is None
        and prompt
        and _is_interactive()
        and not TokenCache(profile_dir(environ)).get(resolved_url, resolved_user)
    ):
        secret = SecretStr(getpass.getpass(f"Password for {resolved_user}@{resolved_url}: "))

    verify: bool | str = True
    if env.ca_bundle:
        verify = env.ca_bundle
    elif env.verify_ssl is not None:
        verify = env.verify_ssl
    elif from_profile and from_profile.ca_bundle:
        verify = from_profile.ca_bundle
    elif from_profile and from_profile.verify_ssl is not None:
        verify = from_profile.verify_ssl
    if isinstance(verify, str) and not Path(verify).expanduser().is_file():
        raise InputError(
            f"CA bundle {verify} does not exist",
            hint="Point the CA bundle setting at a PEM file",
            reason="ca-bundle",
        )

    try:
        return Credentials(url=resolved_url, username=resolved_user, password=secret, token=token, verify=verify)
    except ValidationError as exc:  # only the message: the input itself may hold a password
        message = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise InputError(message, hint="Use the full URL, e.g. https://xnat.example.org") from None


def _password_check(token: str, password: str) -> str:
    """Ties a cached session to the password it was opened with, without storing the password.

    Returns:
        A slow salted hash (PBKDF2, ~40 ms) of the password, salted with the session id itself.
    """
    return hashlib.pbkdf2_hmac("sha256", password.encode(), token.encode(), 100_000).hex()


class TokenCache:
    """JSESSIONIDs per (URL, user) in ``tokens.json`` of the profile directory.

    The file is mode 0600 in a 0700 directory and replaced atomically (temp file + rename),
    so a crash or a concurrent writer never leaves half a file. XNAT expires sessions after
    15 idle minutes by default; older entries are not offered (they would cost a 401).
    A session opened with a password is offered again only to a caller with the same password
    (or none): a wrong password must fail as a wrong password, not ride on an old session.
    """

    FILE_NAME = "tokens.json"

    def __init__(self, directory: Path | None = None, *, max_idle_seconds: float = 15 * 60) -> None:
        self.directory = Path(directory) if directory is not None else profile_dir()
        self.path = self.directory / self.FILE_NAME
        self.max_idle_seconds = max_idle_seconds
        self._lock = threading.Lock()

    @staticmethod
    def _key(url: str, username: str | None) -> str:
        return f"{username or ''}@{url.rstrip('/')}"

    def _read(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, data: dict[str, dict]) -> None:
        ensure_private_dir(self.directory)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tokens-", suffix=".tmp")  # created 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, url: str, username: str | None, password: str | None = None, *, any_age: bool = False) -> str | None:
        """The cached session, if fresh (or ``any_age``) and, when ``password`` is given, opened with it.

        Args:
            url: The server's URL.
            username: The user.
            password: The password of this command; a session opened with another one is not offered.
            any_age: Offer the session however long it was idle.

        Returns:
            The JSESSIONID, or None.
        """
        entry = self._read().get(self._key(url, username))
        if not isinstance(entry, dict) or not entry.get("token"):
            return None
        if not any_age and time.time() - float(entry.get("last_used", 0)) > self.max_idle_seconds:
            return None
        token = str(entry["token"])
        if password is not None and not hmac.compare_digest(
            str(entry.get("password_check", "")), _password_check(token, password)
        ):
            return None
        return token

    def put(self, url: str, username: str | None, token: str, password: str | None = None) -> None:
        """Keep ``token`` for this URL and user, with a check of the password it was opened with.

        Args:
            url: The server's URL.
            username: The user.
            token: The JSESSIONID.
            password: The password the session was opened with (a salted hash of it is kept, never it).
        """
        entry: dict[str, object] = {"token": token, "last_used": time.time()}
        if password is not None:
            entry["password_check"] = _password_check(token, password)
        with self._lock:
            data = self._read()
            data[self._key(url, username)] = entry
            self._write(data)

    def touch(self, url: str, username: str | None) -> None:
        """Record that the token was just used (XNAT's expiry is idle-based).

        Args:
            url: The server's URL.
            username: The user.
        """
        with self._lock:
            data = self._read()
            entry = data.get(self._key(url, username))
            if isinstance(entry, dict):
                entry["last_used"] = time.time()
                self._write(data)

    def delete(self, url: str, username: str | None) -> None:
        """Forget the session of this URL and user.

        Args:
            url: The server's URL.
            username: The user.
        """
        with self._lock:
            data = self._read()
            if data.pop(self._key(url, username), None) is not None:
                self._write(data)
