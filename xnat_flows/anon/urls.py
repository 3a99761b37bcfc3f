"""``getURL``: a script asking a web service for a value while it de-identifies (opt-in).

DicomEdit 6 defines ``getURL[url]`` (dicom-edit6 ``GetURLScriptFunction``): an HTTP GET of the URL,
the answer's lines joined without line breaks as the value; an empty answer, a malformed URL or a
failed connection is an error. Sites use it to look up a study ID for a patient's ID in a service
of their own, e.g. ``(0010,0020) := getURL[format["https://ids.site.local/map?id={0}", (0010,0020)]]``.

Such a request carries whatever its URL holds — often a patient's identifier — so it is refused
unless the user names the URLs a script may reach (:class:`UrlAccess`, CLI ``--anon-allow-url``):
a script from the server, or one copied from elsewhere, then cannot send identifiers to a host
nobody chose. Each request waits at most ``timeout`` seconds, follows no redirect (it could leave
the allowed prefixes), reads at most ``MAX_ANSWER`` bytes, and each distinct URL is asked once per
compiled script (:class:`UrlFetcher`): the dry run, the send and every file of one patient get the
same answer, so a file's bytes are made the same way twice. The engine's determinism then rests on
the service: one that answers a URL differently on another day makes a resumed upload mix values.

Standard library only (``urllib``): the emulator imports this package and must not import httpx.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import IO, NoReturn

from xnat_flows.anon.errors import AnonError

DEFAULT_TIMEOUT = 10.0
MAX_ANSWER = 65536  # bytes of one answer: a value for a DICOM attribute, never a document
_CACHE_LIMIT = 100_000  # distinct URLs remembered per script (one per patient, study...)


@dataclass(frozen=True)
class UrlAccess:
    """The URLs a script's ``getURL`` may fetch (each must start with one of ``prefixes``, e.g.
    ``https://ids.site.local/``) and how long one request may take."""

    prefixes: tuple[str, ...]
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        for prefix in self.prefixes:
            parts = urllib.parse.urlsplit(prefix)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"{prefix!r} is not an http(s) URL prefix (e.g. https://ids.site.local/)")
        if not 0 < self.timeout <= 300:
            raise ValueError(f"getURL timeout must be between 0 and 300 seconds (got {self.timeout})")

    def allows(self, url: str) -> bool:
        return any(url.startswith(prefix) for prefix in self.prefixes)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> NoReturn:
        raise urllib.error.URLError("the service answered with a redirect, which getURL does not follow")


def _where(url: str) -> str:
    """What a message may say of a URL: its scheme and host, never its path or query (an identifier)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}"


class UrlFetcher:
    """``getURL`` for one compiled script: allowed URLs only, each fetched once, bounded waits.
    Thread-safe (one script serves every upload thread)."""

    def __init__(self, access: UrlAccess) -> None:
        self.access = access
        self._answers: dict[str, str] = {}
        self._lock = threading.Lock()
        self._opener = urllib.request.build_opener(_NoRedirect())

    def fetch(self, url: str, line: int) -> str:
        if not self.access.allows(url):
            raise AnonError(
                f"line {line}: getURL: a URL on {_where(url)} is not under the allowed prefixes "
                f"({', '.join(self.access.prefixes)}); nothing was requested"
            )
        with self._lock:
            known = self._answers.get(url)
        if known is not None:
            return known
        answer = self._request(url, line)
        with self._lock:
            if len(self._answers) < _CACHE_LIMIT:
                self._answers.setdefault(url, answer)
            return self._answers.get(url, answer)

    def _request(self, url: str, line: int) -> str:
        try:
            with self._opener.open(url, timeout=self.access.timeout) as response:
                body = _read_bounded(response)
                charset = response.headers.get_content_charset() or "utf-8"
        except urllib.error.HTTPError as exc:
            raise AnonError(f"line {line}: getURL: {_where(url)} answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise AnonError(f"line {line}: getURL: the request to {_where(url)} failed: {reason}") from None
        # Java's BufferedReader lines, joined as DicomEdit joins them: no line breaks kept.
        text = "".join(body.decode(charset, "replace").splitlines())
        if not text:
            raise AnonError(f"line {line}: getURL: empty response from {_where(url)}")
        return text


def _read_bounded(response: IO[bytes]) -> bytes:
    body = response.read(MAX_ANSWER + 1)
    if len(body) > MAX_ANSWER:
        raise ValueError(f"the answer is longer than {MAX_ANSWER} bytes")
    return body
